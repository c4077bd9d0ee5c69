"""``sleep-cds explain``: why each rule fired or not, for a request built like ``sleep-cds hook``.

Same arguments and request as ``sleep-cds hook`` (the request building, prefetch filling and
errors are ``service.cli.hook``'s), but the request goes to ``{service}/cds-services/{id}/explain``,
the integrators' endpoint (on in local mode, else ``CDS_EXPLAIN_ENABLED=true``). It prints each
rule's outcome - fired, not-fired, not-evaluable or not-applicable - with the reason, the evidence
and the condition trace, plus which FHIR queries the service ran itself; ``--json`` prints the raw
answers keyed by service id.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

import httpx

from service.cli.call import HookOutcome, run_hook
from service.cli.cards import write_responses_json
from service.cli.hook import add_request_arguments, run_from_args
from service.cli.request import DEFAULT_USER

STATUSES = ("fired", "not-evaluable", "not-fired", "not-applicable")
_MARKDOWN_ESCAPE = re.compile(r"\\([\\`*_\[\]<>|])")
DISABLED_HINT = (
    " (the explain endpoint is on in local mode; elsewhere set CDS_EXPLAIN_ENABLED=true)"
)


async def run_explain(
    *,
    hook: str,
    patient_id: str,
    fhir_server: str,
    service: str,
    prefetch: bool,
    drafts: Sequence[dict[str, Any]] = (),
    selections: Sequence[str] = (),
    service_ids: Sequence[str] = (),
    user_id: str = DEFAULT_USER,
    token: str | None = None,
    fhir_deadline_s: float = 5.0,
    timeout_s: float = 30.0,
    http: httpx.AsyncClient | None = None,
) -> list[HookOutcome]:
    """The request ``sleep-cds hook`` would send, to each service's ``/explain``."""
    outcomes = await run_hook(
        hook=hook,
        patient_id=patient_id,
        fhir_server=fhir_server,
        service=service,
        prefetch=prefetch,
        drafts=drafts,
        selections=selections,
        service_ids=service_ids,
        user_id=user_id,
        token=token,
        fhir_deadline_s=fhir_deadline_s,
        timeout_s=timeout_s,
        http=http,
        endpoint="/explain",
    )
    for outcome in outcomes:
        if outcome.status == 404 and outcome.error and "not enabled" in outcome.error:
            outcome.error += DISABLED_HINT
    return outcomes


# --- output ------------------------------------------------------------------------------------


def _plain(text: object) -> str:
    """Evidence is Markdown-escaped for card details; a terminal wants ``>=``, not ``\\>=``."""
    return _MARKDOWN_ESCAPE.sub(r"\1", str(text))


def _counts(rules: list[dict[str, Any]]) -> str:
    parts = []
    for status in STATUSES:
        count = sum(1 for r in rules if r.get("status") == status)
        parts.append(f"{count} {status}")
    return ", ".join(parts)


def format_explain(
    response: dict[str, Any], statuses: Sequence[str] = STATUSES, trace: bool = True
) -> str:
    """Cards in one line each, then every rule grouped by outcome (fired first)."""
    out: list[str] = []
    fetches = response.get("fetches") or {}
    if fetches:
        listed = ", ".join(f"{key} ({status})" for key, status in fetches.items())
        out.append(f"   fetched by the service from the FHIR server: {listed}")
    unavailable = response.get("unavailable") or []
    if unavailable:
        out.append(f"   data that could not be read: {', '.join(unavailable)}")
    skipped = response.get("skippedResources") or 0
    unusable = response.get("unusableLabResults") or 0
    if skipped or unusable:
        out.append(f"   resources skipped: {skipped}; lab results not usable: {unusable}")
    cards = response.get("cards") or []
    out.append(f"   cards ({len(cards)}):" if cards else "   cards: none")
    for card in cards:
        topic = ((card.get("source") or {}).get("topic") or {}).get("code", "?")
        indicator = str(card.get("indicator", "?")).upper()
        out.append(f"     [{indicator}] {topic}: {_plain(card.get('summary', ''))}")
    rules = [r for r in response.get("rules") or [] if isinstance(r, dict)]
    out.append(f"   rules: {_counts(rules)}")
    for status in STATUSES:
        if status not in statuses:
            continue
        for rule in (r for r in rules if r.get("status") == status):
            out.append("")
            head = f"   {status.upper():<15} {rule.get('rule', '?')}"
            tags = [str(rule.get("topic", "?"))]
            if rule.get("indicator"):
                tags.append(str(rule["indicator"]))
            out.append(f"{head}  ({', '.join(tags)})  {rule.get('title', '')}")
            if rule.get("reason"):
                out.append(f"       reason: {rule['reason']}")
            for line in rule.get("evidence") or []:
                out.append(f"       evidence: {_plain(line)}")
            if trace:
                for line in rule.get("trace") or []:
                    out.append(f"       trace: {line}")
    return "\n".join(out)


def print_explained(
    outcomes: Sequence[HookOutcome],
    hook: str,
    as_json: bool,
    out: TextIO,
    statuses: Sequence[str] = STATUSES,
    trace: bool = True,
) -> None:
    if as_json:
        write_responses_json(outcomes, out)
        return
    for o in outcomes:
        if o.error:
            continue
        timing = f"HTTP {o.status} in {o.elapsed_ms:.0f} ms"
        out.write(f"== {o.service_id} ({hook}, explain): {timing}\n")
        if o.prefetch_filled or o.prefetch_omitted:
            omitted = ", ".join(f"{k} ({v})" for k, v in o.prefetch_omitted.items())
            out.write(
                f"   prefetch sent: {', '.join(o.prefetch_filled) or '-'}"
                + (f"; omitted: {omitted}" if omitted else "")
                + "\n"
            )
        out.write(format_explain(o.response or {}, statuses, trace) + "\n")


# --- argparse wiring ---------------------------------------------------------------------------


def cmd_explain(args: argparse.Namespace) -> int:
    return run_from_args(
        args,
        run_explain,
        lambda outcomes: print_explained(
            outcomes, args.hook, args.json, sys.stdout, args.status or STATUSES, not args.no_trace
        ),
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``explain`` to the ``sleep-cds`` parser (sets ``func``)."""
    explain = subparsers.add_parser(
        "explain",
        help="show each rule's outcome (fired / not-fired / not-evaluable / not-applicable)",
        description="Build the same request as `sleep-cds hook`, send it to the service's "
        "/explain endpoint, and print every rule's outcome with its reason, evidence and trace.",
    )
    add_request_arguments(explain)
    explain.add_argument(
        "--status",
        action="append",
        choices=STATUSES,
        help="only rules with this outcome (repeatable; default: all)",
    )
    explain.add_argument("--no-trace", action="store_true", help="omit the condition traces")
    explain.add_argument("--json", action="store_true", help="print raw responses as JSON")
    explain.set_defaults(func=cmd_explain)
