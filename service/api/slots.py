"""Evaluation slots: how many hook calls a worker parses and evaluates at once.

A semaphore that also counts who holds and who waits, so ``/readyz`` can say when the worker
cannot take another hook call without queueing it.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class HookSlots:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self.waiting = 0
        self._semaphore = asyncio.Semaphore(limit)

    async def __aenter__(self) -> None:
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.busy += 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.busy -= 1
        self._semaphore.release()

    @property
    def saturated(self) -> bool:
        """Every slot is taken and calls are queued: a new call would wait too."""
        return self.busy >= self.limit and self.waiting > 0

    def state(self) -> dict[str, int]:
        return {"limit": self.limit, "busy": self.busy, "waiting": self.waiting}
