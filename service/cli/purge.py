"""``sleep-cds purge``: keep the database bounded (``CDS_RETENTION_DAYS``).

Deletes audit rows, cards shown and their feedback older than the retention period, holds whose
window has ended, and expired JWT ids. Holds still in force are kept whatever their age: they are
all suppression reads, so a purge never shows a card earlier or later than the feedback said.
Deletes run in small transactions (``--chunk`` rows each), so it is safe to run while the service
is serving (e.g. nightly from cron or a Kubernetes CronJob). The database URL is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta

from service.config import Settings
from service.db import repository
from service.db.database import Database


async def _purge(url: str, days: int, chunk: int) -> repository.PurgeCounts:
    now = datetime.now(UTC)
    db = Database(url)
    try:
        return await repository.purge(db, now - timedelta(days=days), now, chunk)
    finally:
        await db.dispose()


def cmd_purge(args: argparse.Namespace) -> int:
    settings = Settings()
    days = args.days if args.days is not None else settings.retention_days
    if days < 1:
        print("sleep-cds: --days must be at least 1", file=sys.stderr)
        return 1
    try:
        counts = asyncio.run(_purge(settings.database_url, days, args.chunk))
    except Exception as exc:
        print(
            f"sleep-cds: purge failed ({type(exc).__name__}); is the database migrated?",
            file=sys.stderr,
        )
        return 1
    print(
        f"purged (older than {days} days): {counts.hook_calls} hook calls, {counts.cards} cards "
        f"shown, {counts.feedback} feedback items; {counts.holds} ended holds, "
        f"{counts.jtis} expired JWT ids"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    purge = sub.add_parser(
        "purge",
        help="delete audit rows and cards older than CDS_RETENTION_DAYS (safe while serving)",
    )
    purge.add_argument("--days", type=int, default=None, help="override CDS_RETENTION_DAYS")
    purge.add_argument("--chunk", type=int, default=2000, help="rows per transaction")
    purge.set_defaults(func=cmd_purge)
