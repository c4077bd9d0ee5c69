"""``sleep-cds migrate``: apply the database migrations (``service.db.migrate``)."""

from __future__ import annotations

import argparse

from service.config import get_settings


def cmd_migrate(args: argparse.Namespace) -> int:
    from service.db.migrate import upgrade_database

    upgrade_database(get_settings(), args.revision)
    print("database at", args.revision)
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``migrate`` to the ``sleep-cds`` parser."""
    migrate = subparsers.add_parser("migrate", help="apply database migrations (CDS_DATABASE_URL)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=cmd_migrate)
