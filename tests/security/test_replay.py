"""Replay stores: first use wins, exactly once, on SQLite and (when available) PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from service.db.database import Database
from service.db.models import Base, SeenJti
from service.security import DegradableReplayStore, MemoryReplayStore, SqlReplayStore

POSTGRES_URL = os.environ.get("CDS_TEST_POSTGRES_URL")


def soon(seconds: int = 300) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


@asynccontextmanager
async def sqlite_database(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}")
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield database
    finally:
        await database.dispose()


@asynccontextmanager
async def postgres_database(url: str) -> AsyncIterator[Database]:
    """A throw-away schema, so parallel runs and other test suites never see these rows."""
    schema = f"replay_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(url)
    try:
        async with admin.begin() as connection:
            await connection.execute(text(f'CREATE SCHEMA "{schema}"'))
        separator = "&" if "?" in url else "?"
        database = Database(f"{url}{separator}options={quote(f'-csearch_path={schema}')}")
        try:
            async with database.engine.begin() as connection:
                await connection.run_sync(
                    Base.metadata.create_all, tables=[Base.metadata.tables["seen_jti"]]
                )
                current = (await connection.execute(text("SELECT current_schema()"))).scalar()
                assert current == schema
            yield database
        finally:
            await database.dispose()
    finally:
        async with admin.begin() as connection:
            await connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        await admin.dispose()


@pytest.fixture
async def sqlite_db(tmp_path: Path) -> AsyncIterator[Database]:
    async with sqlite_database(tmp_path) as database:
        yield database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        async with sqlite_database(tmp_path) as db:
            yield db
        return
    if not POSTGRES_URL:
        pytest.skip("CDS_TEST_POSTGRES_URL is not set")
    async with postgres_database(POSTGRES_URL) as db:
        yield db


async def count_rows(database: Database) -> int:
    async with database.engine.connect() as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(SeenJti))).scalar_one()
        )


async def test_memory_store_first_use_wins() -> None:
    store = MemoryReplayStore()
    assert await store.remember("iss", "a", soon())
    assert not await store.remember("iss", "a", soon())
    assert await store.remember("other-iss", "a", soon())
    assert await store.remember("iss", "expired", soon(-10))
    assert await store.remember("iss", "expired", soon())  # expired entries do not block


async def test_sql_store_first_use_wins(database: Database) -> None:
    store = SqlReplayStore(database)
    assert await store.remember("https://ehr.example", "jti-1", soon())
    assert not await store.remember("https://ehr.example", "jti-1", soon())
    assert await store.remember("https://other.example", "jti-1", soon())
    assert await count_rows(database) == 2


async def test_two_stores_share_the_database(database: Database) -> None:
    first, second = SqlReplayStore(database), SqlReplayStore(database)
    assert await first.remember("iss", "shared", soon())
    assert not await second.remember("iss", "shared", soon())


async def test_concurrent_first_use_is_accepted_exactly_once(database: Database) -> None:
    stores = [SqlReplayStore(database) for _ in range(4)]
    results = await asyncio.gather(
        *(stores[i % 4].remember("iss", "race", soon()) for i in range(20))
    )
    assert results.count(True) == 1


async def test_expired_row_does_not_block_and_is_purged(database: Database) -> None:
    store = SqlReplayStore(database)
    assert await store.remember("iss", "old", soon(-10))
    assert await store.remember("iss", "stale", soon(-10))
    assert await store.remember("iss", "old", soon())  # the expired row is overwritten
    assert not await store.remember("iss", "old", soon())
    assert await store.purge() == 1  # only "stale" had expired
    assert await count_rows(database) == 1


async def test_purge_runs_occasionally_on_its_own(sqlite_db: Database) -> None:
    now = [0.0]
    store = SqlReplayStore(sqlite_db, purge_every_s=60, clock=lambda: now[0])
    await store.remember("iss", "expired", soon(-10))
    await store.remember("iss", "live", soon())
    assert await count_rows(sqlite_db) == 2
    now[0] = 61
    await store.remember("iss", "another", soon())
    assert await count_rows(sqlite_db) == 2  # "expired" went


async def test_unsupported_dialect_is_refused(tmp_path: Path) -> None:
    class FakeDialect:
        name = "mysql"

    class FakeEngine:
        dialect = FakeDialect()

    class FakeDatabase:
        engine = FakeEngine()

    with pytest.raises(ValueError, match="mysql"):
        SqlReplayStore(FakeDatabase())  # type: ignore[arg-type]


async def test_degradable_store_uses_memory_while_the_database_is_down() -> None:

    class Down:
        async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
            raise ConnectionError("database down")

    class Slow:
        async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
            await asyncio.sleep(5)
            return True

    later = datetime.now(UTC) + timedelta(minutes=5)
    store = DegradableReplayStore(Down())
    assert await store.remember("iss", "a", later) is True
    assert await store.remember("iss", "a", later) is False  # replay to this replica refused
    assert store.degraded_checks == 2
    slow = DegradableReplayStore(Slow(), timeout_s=0.05)
    started = time.monotonic()
    assert await slow.remember("iss", "b", later) is True
    assert time.monotonic() - started < 1.0


async def test_degradable_store_trusts_the_database_when_it_answers() -> None:

    shared = MemoryReplayStore()
    first, second = DegradableReplayStore(shared), DegradableReplayStore(shared)
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert await first.remember("iss", "c", later) is True
    assert await second.remember("iss", "c", later) is False  # another replica saw it
    assert first.degraded_checks == second.degraded_checks == 0


async def test_degradable_store_memory_is_bounded() -> None:

    class Down:
        async def remember(self, iss: str, jti: str, expires_at: datetime) -> bool:
            raise ConnectionError("down")

    store = DegradableReplayStore(Down(), max_entries=10)
    later = datetime.now(UTC) + timedelta(minutes=5)
    for i in range(50):
        assert await store.remember("iss", f"j{i}", later) is True
    assert len(store._memory) <= 10
