"""The bytes of request bodies a worker holds at once.

Each request reserves its declared ``Content-Length`` (``max_body_bytes`` when it streams a body
of unknown length) before the first byte of its body is read, and gives it back when its answer
is sent. A request whose reservation does not fit waits, first come first served, so 64 large
prefetches arriving together are read a few at a time instead of all at once (each 2.7 MB body
also becomes about 7 MB of parsed record: docs/performance.md). Waiting bodies stay in the
kernel's socket buffers, not in the worker.
"""

from __future__ import annotations

import asyncio
from collections import deque


class BodyBudget:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self.in_use = 0
        self.peak = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def reservation(self, declared: int) -> int:
        """What a body of ``declared`` bytes reserves: never more than the whole budget, so one
        body as large as the budget still runs, alone."""
        return max(0, min(declared, self.capacity))

    async def acquire(self, amount: int) -> None:
        """Wait until ``amount`` bytes fit; a cancelled wait (a deadline) reserves nothing. A
        request without a body (0 bytes) holds nothing, so it never queues behind large ones."""
        if amount <= 0:
            return
        if not self._waiters and self.in_use + amount <= self.capacity:
            self._take(amount)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release(amount)  # granted just as the wait was cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()  # the head may have been waiting behind this one
            raise

    def release(self, amount: int) -> None:
        self.in_use -= amount
        self._wake()

    def _take(self, amount: int) -> None:
        self.in_use += amount
        self.peak = max(self.peak, self.in_use)

    def _wake(self) -> None:
        """Grant waiters in arrival order while the one at the head fits."""
        while self._waiters:
            amount, future = self._waiters[0]
            if self.in_use + amount > self.capacity:
                return
            self._waiters.popleft()
            self._take(amount)
            future.set_result(None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)
