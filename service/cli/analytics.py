"""``sleep-cds analytics``: the card analytics report straight from the database, no server needed.

Reads ``CDS_DATABASE_URL`` (the service's own database), prints the report as JSON (the same as
``GET /analytics/cards``) or CSV on stdout, and with ``--chart FILE`` draws the acceptance rate per
rule per week as PNG or a self-contained HTML page (needs the ``report`` extra: matplotlib).
Errors are one line on stderr, exit code 1; the database URL is never printed (it may hold a
password).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from service import analytics
from service.config import Settings
from service.db.database import Database


async def _load(url: str, start: date, end: date) -> analytics.CardAnalytics:
    db = Database(url)
    try:
        return await analytics.card_analytics(db, start, end)
    finally:
        await db.dispose()


def _missing_sqlite_file(url: str) -> bool:
    """True for an SQLite URL whose file is absent (connecting would create an empty one)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return False
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return False
    return not Path(parsed.database).is_file()


def cmd_analytics(args: argparse.Namespace) -> int:
    def fail(message: str) -> int:
        print(f"sleep-cds: {message}", file=sys.stderr)
        return 1

    chart = Path(args.chart) if args.chart else None
    if chart is not None:
        if chart.suffix.lower() not in (".png", ".html", ".htm"):
            return fail("--chart: the file must end in .png or .html")
        try:
            analytics.require_matplotlib()
        except analytics.ChartUnavailable as exc:
            return fail(str(exc))
    try:
        start, end = analytics.parse_period(args.start, args.end, datetime.now(UTC).date())
    except ValueError as exc:
        return fail(f"--from/--to: {exc}")
    try:
        url = Settings().database_url
    except ValueError as exc:  # pydantic's ValidationError; its text may quote the environment
        return fail(f"the CDS_ settings are invalid ({type(exc).__name__})")
    if _missing_sqlite_file(url):
        return fail("CDS_DATABASE_URL names an SQLite file that does not exist (sleep-cds migrate)")
    try:
        report = asyncio.run(_load(url, start, end))
    except Exception as exc:
        return fail(
            f"cannot read the database in CDS_DATABASE_URL ({type(exc).__name__}); "
            "is it reachable and migrated (sleep-cds migrate)?"
        )
    if args.format == "csv":
        sys.stdout.write(analytics.render_csv(report))
    else:
        sys.stdout.write(analytics.render_json(report, indent=True).decode() + "\n")
    sys.stdout.flush()
    if chart is not None:
        try:
            analytics.render_chart(report, chart)
        except OSError as exc:
            return fail(f"--chart {chart}: cannot write ({type(exc).__name__})")
        print(f"chart written to {chart}", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``analytics`` to the ``sleep-cds`` parser."""
    parser = subparsers.add_parser(
        "analytics",
        help="card analytics (shown/accepted/overridden per rule) from CDS_DATABASE_URL",
        description="Card analytics for the period [--from, --to) read from the database in "
        "CDS_DATABASE_URL: per topic and rule, cards shown, accepted, overridden, acceptance "
        "rate, top override reasons, median time to decision and a weekly series. "
        "Default period: the twelve weeks up to and including today (UTC).",
    )
    parser.add_argument("--from", dest="start", metavar="YYYY-MM-DD", help="first day")
    parser.add_argument(
        "--to", dest="end", metavar="YYYY-MM-DD", help="day after the last (exclusive)"
    )
    parser.add_argument("--format", choices=("json", "csv"), default="json")
    parser.add_argument(
        "--chart",
        metavar="FILE",
        help="also draw acceptance per rule per week to FILE (.png or .html; needs matplotlib)",
    )
    parser.set_defaults(func=cmd_analytics)
