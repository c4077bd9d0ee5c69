"""The async engine and its sessions; one per process, built in the app lifespan."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from service.clock import Clock, utc_now
from service.config import async_database_url
from service.db.batch import GroupCommit


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # WAL lets readers and the single writer proceed together; busy_timeout waits out a writer.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_file_engine(url: str) -> Engine | None:
    """For a SQLite file: a plain ``sqlite3`` engine for the group-commit writer's thread (no
    pool: its one connection is opened, used and closed in that thread only)."""
    prefix = "sqlite+aiosqlite:///"
    path = url[len(prefix) :] if url.startswith(prefix) else ""
    if not path or path.startswith(":memory:") or "mode=memory" in path:
        return None
    engine = create_engine(f"sqlite+pysqlite:///{path}", poolclass=NullPool)
    event.listen(engine, "connect", _sqlite_pragmas)
    return engine


class Database:
    """Owns the engine. Every operation may raise: callers decide whether to fail open."""

    def __init__(self, url: str, *, connect_timeout_s: float = 2.0, clock: Clock = utc_now) -> None:
        url = async_database_url(url)  # plain sqlite:// and postgresql:// get their async driver
        self.clock = clock
        """The app's clock: what "now" is for expiries and stored times."""
        self.url = url
        kwargs: dict[str, object] = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            kwargs["connect_args"] = {"connect_timeout": max(1, int(connect_timeout_s))}
            kwargs["pool_timeout"] = connect_timeout_s
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )
        # The process's one writer for the hook path's small statements (service/db/batch.py).
        self.thread_engine = _sqlite_file_engine(url)
        self.group_commit = GroupCommit(self.engine, thread_engine=self.thread_engine, clock=clock)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True

    async def dispose(self) -> None:
        await self.group_commit.close()
        await self.engine.dispose()
