"""``sleep-cds``: run the service, migrate its database, and drive it like an EHR would."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.cli import analytics, explain, hook, load, migrate, purge, rules_doc, serve

# The order of ``sleep-cds --help``.
COMMANDS = (serve, migrate, rules_doc, hook, load, explain, analytics, purge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sleep-cds", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
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
