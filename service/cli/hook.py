"""``sleep-cds hook``: play the EHR against a CDS service and a FHIR server, print the cards.

``hook`` builds the request an EHR would send (``service.cli.request``), optionally fills the
service's prefetch templates from the FHIR server and calls every service registered for the hook
(``service.cli.call``), and prints the cards (``service.cli.cards``).

Errors are one line on stderr naming the URL and status, with exit code 1 (2 for usage errors).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from service.cli.call import HookOutcome, run_hook
from service.cli.cards import print_outcomes
from service.cli.errors import CliError
from service.cli.request import DEFAULT_USER, read_drafts, token_from_env
from service.knowledge.schema import HOOKS

DEFAULT_SERVICE = "http://127.0.0.1:8080"

Runner = Callable[..., Coroutine[Any, Any, list[HookOutcome]]]


def run_from_args(
    args: argparse.Namespace, runner: Runner, show: Callable[[list[HookOutcome]], None]
) -> int:
    """The shared body of ``hook`` and ``explain``: build the request from the arguments, run
    it, show the outcomes, and print each error as one line (exit 1 if any)."""
    try:
        token = token_from_env(args.token_env)
        drafts = read_drafts([Path(p) for p in args.draft or []], args.patient)
        outcomes = asyncio.run(
            runner(
                hook=args.hook,
                patient_id=args.patient,
                fhir_server=args.fhir_server,
                service=args.service,
                prefetch=args.prefetch,
                drafts=drafts,
                selections=args.select or [],
                service_ids=args.service_id or [],
                user_id=args.user,
                token=token,
                fhir_deadline_s=args.fhir_deadline,
                timeout_s=args.timeout,
            )
        )
    except CliError as exc:
        print(f"sleep-cds: {exc}", file=sys.stderr)
        return 1
    show(outcomes)
    errors = [o.error for o in outcomes if o.error]
    for error in errors:
        print(f"sleep-cds: {error}", file=sys.stderr)
    return 1 if errors else 0


def cmd_hook(args: argparse.Namespace) -> int:
    return run_from_args(
        args, run_hook, lambda outcomes: print_outcomes(outcomes, args.hook, args.json, sys.stdout)
    )


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments that describe the EHR's request (shared by ``hook`` and ``explain``)."""
    parser.add_argument("hook", choices=HOOKS)
    parser.add_argument("--patient", required=True, help="FHIR Patient id")
    parser.add_argument("--fhir-server", required=True, help="FHIR base URL sent as fhirServer")
    parser.add_argument("--service", default=DEFAULT_SERVICE, help="CDS service base URL")
    parser.add_argument(
        "--prefetch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fill the service's prefetch templates from the FHIR server (default: yes)",
    )
    parser.add_argument("--draft", action="append", metavar="FILE", help="draft order JSON")
    parser.add_argument("--select", action="append", metavar="ID", help="order-select selection")
    parser.add_argument("--service-id", action="append", metavar="ID", help="only this service")
    parser.add_argument("--user", default=DEFAULT_USER, help="context.userId")
    parser.add_argument("--token-env", metavar="VAR", help="env var holding a FHIR bearer token")
    parser.add_argument("--fhir-deadline", type=float, default=5.0, help="prefetch deadline (s)")
    parser.add_argument("--timeout", type=float, default=30.0, help="service call timeout (s)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hook`` to the ``sleep-cds`` parser."""
    hook = subparsers.add_parser(
        "hook",
        help="call the CDS service as an EHR would and print the cards",
        description="Build a CDS Hooks request (optionally prefetching from the FHIR server), "
        "call every service registered for the hook, print the cards.",
    )
    add_request_arguments(hook)
    hook.add_argument("--json", action="store_true", help="print raw responses as JSON")
    hook.set_defaults(func=cmd_hook)
