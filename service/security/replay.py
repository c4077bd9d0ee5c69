"""Replay protection: remember each accepted ``(iss, jti)`` until its token has expired.

The check must be one atomic statement in the shared database, not a read-then-write, so that
two replicas receiving the same token at the same instant cannot both accept it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from sqlalchemy import delete

from service.clock import Clock, utc_now
from service.db.database import Database
from service.db.models import SeenJti

logger = logging.getLogger(__name__)


class ReplayStore(Protocol):
    """Short-term memory of token ids already accepted."""

    async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """Record ``(iss, jti)``; True if it was not already remembered (first use)."""
        ...


class SqlReplayStore:
    """``seen_jti`` rows on SQLite or PostgreSQL, shared by every replica using the database.

    One ``INSERT ... ON CONFLICT ... RETURNING`` decides first use: a row comes back only if
    this statement inserted it (rowcount is unreliable for upserts across drivers). A row whose
    token has already expired is overwritten rather than treated as a replay, so correctness does
    not depend on the purge having run; the purge only keeps the table small. Concurrent claims
    share that statement through the process's group commit (``service/db/batch.py``).
    """

    def __init__(
        self,
        database: Database,
        *,
        purge_every_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``clock`` paces the purge; what has expired is decided on the database's clock."""
        dialect = database.engine.dialect.name
        if dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"replay store supports SQLite and PostgreSQL, not {dialect!r}")
        self._database = database
        self._writer = database.group_commit
        self._purge_every_s = purge_every_s
        self._clock = clock
        self._next_purge = clock() + purge_every_s
        self._purging = False

    async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
        first_use = await self._writer.claim_jti(iss, jti, expires_at)
        if self._clock() >= self._next_purge and not self._purging:
            await self._purge(self._database.clock())
        return first_use

    async def purge(self) -> int:
        """Delete rows whose tokens have expired; returns how many."""
        return await self._purge(self._database.clock())

    async def _purge(self, now: datetime) -> int:
        self._purging = True
        self._next_purge = self._clock() + self._purge_every_s
        try:
            async with self._database.engine.begin() as connection:
                result = await connection.execute(delete(SeenJti).where(SeenJti.expires_at < now))
            return int(result.rowcount or 0)
        except Exception:  # a failed purge must not fail the request that triggered it
            logger.warning("purging expired seen_jti rows failed", exc_info=True)
            return 0
        finally:
            self._purging = False


class MemoryReplayStore:
    """One process's memory of accepted tokens, bounded. Not shared between replicas: on its own
    only for tests; serving uses it as the database's stand-in (``DegradableReplayStore``)."""

    def __init__(self, *, max_entries: int = 100_000, clock: Clock = utc_now) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[tuple[str, str], datetime] = {}

    def __len__(self) -> int:
        return len(self._seen)

    async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
        return self.claim(iss, jti, expires_at)

    def claim(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """``remember`` without an await: nothing else runs between the check and the write."""
        now = self._clock()
        previous = self._seen.get((iss, jti))
        if previous is not None and previous >= now:
            return False
        if len(self._seen) >= self.max_entries:
            self._seen = {k: v for k, v in self._seen.items() if v >= now}
            while len(self._seen) >= self.max_entries:  # still full: forget the oldest
                self._seen.pop(next(iter(self._seen)))
        self._seen[(iss, jti)] = expires_at
        return True


class DegradableReplayStore:
    """The shared database store, with this replica's memory standing in while the database is
    down or slow.

    An EHR's chart must not block on our database: hook calls keep answering during an outage,
    and a token replayed to the same replica is still refused. The residual risk, accepted and
    logged: a token replayed to a *different* replica during the outage. Every degraded check
    logs a warning, so operators see the window (docs/operations.md).
    """

    def __init__(
        self,
        primary: ReplayStore,
        *,
        timeout_s: float = 0.5,
        max_entries: int = 100_000,
        clock: Clock = utc_now,
    ) -> None:
        self.primary = primary
        self.timeout_s = timeout_s
        self._memory = MemoryReplayStore(max_entries=max_entries, clock=clock)
        self.degraded_checks = 0

    async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self.primary.remember(iss, jti, expires_at)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.degraded_checks += 1
            logger.warning("replay store degraded to this replica's memory: %s", type(exc).__name__)
            return self._memory.claim(iss, jti, expires_at)
