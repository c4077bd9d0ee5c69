"""``sleep-cds``: run the service, migrate its database, and drive it like an EHR would."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli_analytics import register as register_analytics
from service.cli_explain import register as register_explain
from service.cli_hooks import register as register_hooks
from service.cli_purge import register as register_purge
from service.config import Settings, get_settings


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply Alembic migrations to ``CDS_DATABASE_URL`` (SQLite's folder is created)."""
    from alembic import command
    from alembic.config import Config

    from service.config import REPO_ROOT

    config = Config(toml_file=str(REPO_ROOT / "pyproject.toml"))
    config.attributes["database_url"] = settings.sync_database_url()
    command.upgrade(config, revision)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service import logging as service_logging
    from service.http_protocol import HeaderDeadlineProtocol
    from service.security import assert_safe_startup

    settings = get_settings()
    service_logging.configure(settings.log_level)
    assert_safe_startup(settings)
    print(f"Discovery: http://{settings.host}:{settings.port}/cds-services", flush=True)
    uvicorn.run(
        "service.main:app",
        host=settings.host,
        port=settings.port,
        workers=args.workers,
        loop="uvloop",
        http=HeaderDeadlineProtocol,  # httptools with a header deadline (slowloris)
        access_log=False,
        server_header=False,
        log_config=None,
        timeout_graceful_shutdown=8,
    )
    return 0


def _migrate(args: argparse.Namespace) -> int:
    upgrade_database(get_settings(), args.revision)
    print("database at", args.revision)
    return 0


def _rules_doc(args: argparse.Namespace) -> int:
    from service.knowledge.base import load_knowledge
    from service.knowledge.summary import rules_markdown

    settings = get_settings()
    kb = load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir)
    sys.stdout.write(rules_markdown(kb))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleep-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the CDS service (CDS_HOST, CDS_PORT)")
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=_serve)
    migrate = sub.add_parser("migrate", help="apply database migrations (CDS_DATABASE_URL)")
    migrate.add_argument("revision", nargs="?", default="head")
    migrate.set_defaults(func=_migrate)
    rules_doc = sub.add_parser("rules-doc", help="print the clinician summary of the rules")
    rules_doc.set_defaults(func=_rules_doc)
    register_hooks(sub)
    register_explain(sub)
    register_analytics(sub)
    register_purge(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except ValidationError as exc:
        # One line per invalid setting, never the value (a URL or token may be a secret).
        for error in exc.errors(include_input=False, include_url=False):
            name = "CDS_" + "_".join(str(part) for part in error["loc"]).upper()
            message = str(error["msg"]).removeprefix("Value error, ")
            if not message.startswith(name):
                message = f"{name}: {message}"
            print(f"sleep-cds: {message}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
