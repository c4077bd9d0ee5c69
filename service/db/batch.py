"""Group commit: the small statements of many concurrent hook calls share one transaction.

Why: each hook call needs a jti claim (replay protection), a feedback lookup (suppression) and an
audit row. As three transactions per call they cost more CPU than the rules themselves, and on
SQLite concurrent writers in one process queued on each other's write lock for up to a second.
Here one task per process and event loop takes everything callers queued since its last round
and runs it as one read-write transaction (claims and lookups) and one write transaction (audit
rows): at concurrency N the database cost per call falls by about N, and a process never holds
more than one write transaction at a time.

Callers keep their guarantees: a claim or lookup answers only after its transaction committed,
and an audit caller learns whether its row was written. A statement error caused by one call's
data (a too-long value, a constraint) is retried call by call so it costs only that call; a
connection-level error fails the whole round, and callers degrade as they would have alone.

On SQLite a round runs in one hop to the writer's own thread, on a plain ``sqlite3`` connection:
through aiosqlite every statement, fetch, cursor and commit is a hop to its thread and back (about
18 per call at concurrency 1), which cost about three times the statements themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import InterfaceError, OperationalError, StatementError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service import metrics
from service.clock import Clock, utc_now
from service.db import repository
from service.db.repository import AuditRecord, HoldRows

T = TypeVar("T")
_Answers = list[tuple["asyncio.Future[Any]", Any]]  # each caller's answer, given after commit
_Step = Callable[..., _Answers]  # one round's statements on a sync connection


@dataclass(eq=False)
class _Claim:
    iss: str
    jti: str
    expires_at: datetime
    done: asyncio.Future[bool]


@dataclass(eq=False)
class _Lookup:
    scope: tuple[str, str, str]  # (issuer, tenant, patient)
    keys: tuple[str, ...]
    done: asyncio.Future[dict[str, dict[str, Any]]]


@dataclass(eq=False)
class _Audit:
    record: AuditRecord
    done: asyncio.Future[None]


@dataclass
class _Queues:
    loop: asyncio.AbstractEventLoop
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    claims: list[_Claim] = field(default_factory=list)
    lookups: list[_Lookup] = field(default_factory=list)
    audits: list[_Audit] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    connection: AsyncConnection | None = None  # the writer's own, kept between rounds

    def pending(self) -> bool:
        return bool(self.claims or self.lookups or self.audits)


def _settle(future: asyncio.Future[T], value: T) -> None:
    if not future.done():  # the caller may have given up (its deadline passed)
        future.set_result(value)


def _fail(futures: Sequence[asyncio.Future[Any]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
            future.exception()  # marks it retrieved: a caller that gave up must not log it


def _one_call_at_fault(exc: BaseException) -> bool:
    """A statement error that one call's data can cause; a connection error fails every call."""
    return isinstance(exc, StatementError) and not isinstance(
        exc, OperationalError | InterfaceError
    )


class GroupCommit:
    """One writer per process: queue a claim, a lookup or an audit row and await its commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        thread_engine: Engine | None = None,
        max_batch: int = 256,
        round_deadline_s: float = 5.0,
        clock: Clock = utc_now,
    ) -> None:
        """``thread_engine`` (SQLite): rounds run on its connection in the writer's own thread."""
        self._engine = engine
        self._clock = clock
        self._thread_engine = thread_engine
        self._thread = ThreadPoolExecutor(1, "group-commit") if thread_engine else None
        self._thread_connection: Connection | None = None  # used in that thread only
        self._max_batch = max_batch
        self._round_deadline_s = round_deadline_s
        self._queues: _Queues | None = None
        self.rounds = 0  # committed transactions (calls per round: cds_db_group_commit_calls)

    async def claim_jti(self, iss: str, jti: str, expires_at: datetime) -> bool:
        """True if this ``(iss, jti)`` was not remembered (or its token had expired)."""
        queues = self._ready()
        claim = _Claim(iss, jti, expires_at, queues.loop.create_future())
        queues.claims.append(claim)
        queues.wake.set()
        return await claim.done

    async def holds(
        self, scope: tuple[str, str, str], keys: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The latest feedback on these rule keys in this (issuer, tenant, patient) scope:
        rule key → its ``suppression`` row."""
        if not keys:
            return {}
        queues = self._ready()
        lookup = _Lookup(scope, tuple(keys), queues.loop.create_future())
        queues.lookups.append(lookup)
        queues.wake.set()
        return await lookup.done

    async def audit(self, record: AuditRecord) -> None:
        """Write one call's audit row; returns once committed, raises if it was not."""
        queues = self._ready()
        audit = _Audit(record, queues.loop.create_future())
        queues.audits.append(audit)
        queues.wake.set()
        await audit.done

    async def close(self) -> None:
        """Finish what is queued, then stop the writer."""
        queues, self._queues = self._queues, None
        if queues is None or queues.task is None:
            return
        try:
            if queues.loop is asyncio.get_running_loop():
                while queues.pending():
                    await self._round(queues)
                if queues.connection is not None:
                    await queues.connection.close()
                if self._thread is not None:
                    await queues.loop.run_in_executor(self._thread, self._close_in_thread)
        finally:
            with contextlib.suppress(RuntimeError):  # its loop may be closed already
                queues.task.cancel()

    def _ready(self) -> _Queues:
        """This loop's queues, with the writer running (tests run several loops in turn)."""
        loop = asyncio.get_running_loop()
        queues = self._queues
        if queues is None or queues.loop is not loop or queues.task is None or queues.task.done():
            queues = _Queues(loop)
            queues.task = loop.create_task(self._run(queues), name="group-commit")
            self._queues = queues
        return queues

    async def _run(self, queues: _Queues) -> None:
        while True:
            await queues.wake.wait()
            queues.wake.clear()
            while queues.pending():
                await self._round(queues)

    async def _round(self, queues: _Queues) -> None:
        n = self._max_batch
        claims, queues.claims = queues.claims[:n], queues.claims[n:]
        lookups, queues.lookups = queues.lookups[:n], queues.lookups[n:]
        audits, queues.audits = queues.audits[:n], queues.audits[n:]
        if claims or lookups:
            await self._guarded(queues, "claims-lookups", self._read_write, claims, lookups)
        if audits:
            await self._guarded(queues, "audits", self._write_audits, audits)

    async def _guarded(self, queues: _Queues, kind: str, step: Any, *batches: list[Any]) -> None:
        futures = [item.done for batch in batches for item in batch]
        try:
            async with asyncio.timeout(self._round_deadline_s):
                answers = await self._transaction(queues, step, batches)
        except asyncio.CancelledError:
            await self._drop_connection(queues)
            _fail(futures, ConnectionError("group commit stopped"))
            raise
        except Exception as exc:
            if not _one_call_at_fault(exc):
                await self._drop_connection(queues)  # the next round reconnects
                _fail(futures, exc)
            elif len(futures) > 1:
                for one in self._singles(batches):  # isolate the call whose data failed
                    await self._guarded(queues, kind, step, *one)
            else:
                _fail(futures, exc)
        else:
            self.rounds += 1
            metrics.GROUP_COMMIT_CALLS.labels(kind=kind).observe(len(futures))
            for future, value in answers:  # only now: the transaction has committed
                _settle(future, value)
        # No caller may wait forever, whatever a step forgot to settle.
        _fail(futures, RuntimeError("group commit round ended without an answer"))

    async def _transaction(
        self, queues: _Queues, step: _Step, batches: tuple[list[Any], ...]
    ) -> _Answers:
        if self._thread is not None:
            return await queues.loop.run_in_executor(
                self._thread, self._transaction_in_thread, step, batches
            )
        if queues.connection is None:
            # Held between rounds: no pool checkout and no pre-ping per transaction.
            queues.connection = await self._engine.connect()
        async with queues.connection.begin():
            return await queues.connection.run_sync(step, *batches)

    def _transaction_in_thread(self, step: _Step, batches: tuple[list[Any], ...]) -> _Answers:
        assert self._thread_engine is not None
        if self._thread_connection is None:
            self._thread_connection = self._thread_engine.connect()
        try:
            with self._thread_connection.begin():
                return step(self._thread_connection, *batches)
        except Exception as exc:
            if not _one_call_at_fault(exc):
                self._close_in_thread()  # the next round reconnects
            raise

    def _close_in_thread(self) -> None:
        connection, self._thread_connection = self._thread_connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.invalidate()

    @staticmethod
    def _singles(batches: tuple[list[Any], ...]) -> list[tuple[list[Any], ...]]:
        singles = []
        for i, batch in enumerate(batches):
            for item in batch:
                one: list[list[Any]] = [[] for _ in batches]
                one[i] = [item]
                singles.append(tuple(one))
        return singles

    async def _drop_connection(self, queues: _Queues) -> None:
        if self._thread is not None:  # after the round in flight there, if any
            with contextlib.suppress(RuntimeError):  # the executor may be shut down
                self._thread.submit(self._close_in_thread)
        connection, queues.connection = queues.connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.invalidate()

    def _read_write(
        self, connection: Connection, claims: list[_Claim], lookups: list[_Lookup]
    ) -> _Answers:
        now = self._clock()
        first: dict[tuple[str, str], _Claim] = {}
        repeats: list[_Claim] = []  # the same token twice in one round: only one can be first
        for claim in claims:
            pair = (claim.iss, claim.jti)
            if pair in first:
                repeats.append(claim)
            else:
                first[pair] = claim
        claimed = repository.claim_jtis(
            connection, [(c.iss, c.jti, c.expires_at) for c in first.values()], now
        )
        history = self._lookup(connection, lookups)
        answers: _Answers = []
        answers += [(claim.done, pair in claimed) for pair, claim in first.items()]
        answers += [(claim.done, False) for claim in repeats]
        for lookup in lookups:
            mine = history.get(lookup.scope, {})
            answers.append((lookup.done, {k: mine[k] for k in lookup.keys if k in mine}))
        return answers

    @staticmethod
    def _lookup(connection: Connection, lookups: list[_Lookup]) -> HoldRows:
        if not lookups:
            return {}
        patients = sorted({lookup.scope[2] for lookup in lookups})
        keys = sorted({key for lookup in lookups for key in lookup.keys})
        return repository.holds_for_patients(connection, patients, keys)

    def _write_audits(self, connection: Connection, audits: list[_Audit]) -> _Answers:
        repository.insert_audits(connection, [a.record for a in audits])
        return [(audit.done, None) for audit in audits]
