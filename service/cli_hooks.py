"""``sleep-cds hook`` and ``sleep-cds load``: play the EHR against a CDS service and a FHIR server.

``hook`` builds the request an EHR would send (fresh hookInstance, ``Practitioner/example`` as the
user, the hook's context), optionally fills the service's prefetch templates from the FHIR server
with the same :class:`~service.fhir.FhirClient` the service uses for its fallback, calls every
service registered for the hook, and prints the cards. Failed prefetch keys are omitted, as the
spec requires of a client, so ``--prefetch`` also exercises the service's own fallback.
``load`` puts FHIR files (transaction Bundles or resources) into any FHIR server.

Errors are one line on stderr naming the URL and status, with exit code 1 (2 for usage errors).
The bearer token for the FHIR server is read from an environment variable (``--token-env``), never
from the command line, and is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import orjson

from service.cdshooks.models import is_fhir_id
from service.config import get_settings
from service.fhir import FetchResult, FhirClient, make_http_client
from service.fhir.client import is_read_query
from service.knowledge.schema import HOOKS
from service.sandbox import SandboxError, load_bundles

DEFAULT_SERVICE = "http://127.0.0.1:8080"
DEFAULT_USER = "Practitioner/example"
_TOKEN = re.compile(r"\{\{\s*([A-Za-z0-9_.]+)\s*\}\}")
_ORDER_TYPES = frozenset(
    {
        "MedicationRequest",
        "ServiceRequest",
        "NutritionOrder",
        "VisionPrescription",
        "DeviceRequest",
        "CommunicationRequest",
        "Appointment",
        "ImmunizationRecommendation",
    }
)


class CliError(Exception):
    """One line for stderr; ends the command with exit code 1."""


# --- request building (pure) -------------------------------------------------------------------


def read_drafts(paths: Sequence[Path], patient_id: str) -> list[dict[str, Any]]:
    """Draft orders from files (a resource, or a Bundle whose entries are taken).

    Like an EHR's order entry, a draft without ``id`` gets one and a draft without ``subject``
    gets the patient; nothing else is changed.
    """
    drafts: list[dict[str, Any]] = []
    for path in paths:
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise CliError(f"{path}: cannot read JSON ({exc.__class__.__name__})") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
            raise CliError(f"{path}: not a FHIR resource (no resourceType)")
        if doc["resourceType"] == "Bundle":
            found = [e.get("resource") for e in doc.get("entry", []) if isinstance(e, dict)]
        else:
            found = [doc]
        for resource in found:
            if not isinstance(resource, dict) or resource.get("resourceType") not in _ORDER_TYPES:
                kind = resource.get("resourceType") if isinstance(resource, dict) else "?"
                raise CliError(f"{path}: {kind} is not an order resource")
            resource.setdefault("id", f"draft-{uuid.uuid4().hex[:12]}")
            if "subject" not in resource and "patient" not in resource:
                resource["subject"] = {"reference": f"Patient/{patient_id}"}
            drafts.append(resource)
    return drafts


def build_context(
    hook: str,
    patient_id: str,
    user_id: str,
    drafts: Sequence[dict[str, Any]] = (),
    selections: Sequence[str] = (),
    encounter_id: str | None = None,
) -> dict[str, Any]:
    """The hook's context as CDS Hooks 2.0 defines it (patient-view, order-select, order-sign)."""
    if hook not in HOOKS:
        raise CliError(f"unknown hook {hook!r} (expected one of {', '.join(HOOKS)})")
    context: dict[str, Any] = {"userId": user_id, "patientId": patient_id}
    if encounter_id:
        context["encounterId"] = encounter_id
    if hook == "patient-view":
        return context
    if not drafts:
        raise CliError(f"{hook} needs at least one --draft FILE")
    entries = [{"resource": draft} for draft in drafts]
    context["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    if hook == "order-select":
        ids = {f"{d['resourceType']}/{d['id']}" for d in drafts}
        chosen = list(selections) or sorted(ids)
        unknown = [s for s in chosen if s not in ids]
        if unknown:
            raise CliError(f"--select {unknown[0]} is not one of the draft orders")
        context["selections"] = chosen
    return context


def render_template(template: str, context: dict[str, Any]) -> str | None:
    """Fill prefetch tokens; ``None`` if a token cannot be filled (the key is then omitted)."""
    user = str(context.get("userId", ""))
    user_type, _, user_ref_id = user.partition("/")
    values: dict[str, str] = {
        f"context.{k}": v for k, v in context.items() if isinstance(v, str) and v
    }
    role_tokens = {
        "Practitioner": "userPractitionerId",
        "PractitionerRole": "userPractitionerRoleId",
        "Patient": "userPatientId",
        "RelatedPerson": "userRelatedPersonId",
    }
    if user_type in role_tokens and user_ref_id:
        values[role_tokens[user_type]] = user_ref_id
    missing = False

    def fill(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None:
            missing = True
            return ""
        return value

    rendered = _TOKEN.sub(fill, template)
    return None if missing else rendered


def prefetch_value(query: str, result: FetchResult) -> dict[str, Any] | None:
    """What an EHR would put in ``prefetch[key]``: the resource, ``None``, or a full searchset."""
    if is_read_query(query):
        return result.resources[0] if result.resources else None
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(result.resources),
        "entry": [{"resource": r} for r in result.resources],
    }


def build_request(
    hook: str,
    fhir_server: str,
    context: dict[str, Any],
    prefetch: dict[str, Any] | None,
    token: str | None,
    patient_id: str,
) -> dict[str, Any]:
    request: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": fhir_server.rstrip("/"),
        "context": context,
    }
    if token:
        request["fhirAuthorization"] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/*.read",
            "subject": "sleep-cds-cli",
            "patient": patient_id,
        }
    if prefetch is not None:
        request["prefetch"] = prefetch
    return request


# --- output ------------------------------------------------------------------------------------


_BLOCK_LINE = re.compile(r"^\s*([-*+] |\d+[.)] |#|\||>|---)")


def _wrap(text: str, indent: str) -> str:
    """Re-flow Markdown prose paragraphs to the terminal; list, heading and table lines stay."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if any(_BLOCK_LINE.match(line) for line in lines):
            parts = lines
        else:
            parts = [" ".join(line.strip() for line in lines)]
        for part in parts:
            sub = indent + "  " if _BLOCK_LINE.match(part) else indent
            out.append(
                textwrap.fill(part.strip(), width=100, initial_indent=indent, subsequent_indent=sub)
            )
        out.append("")
    return "\n".join(out).rstrip()


def format_cards(response: dict[str, Any]) -> str:
    """Cards as a clinician would skim them: indicator, summary, detail, suggestions, links."""
    cards = response.get("cards") or []
    if not cards:
        return "  (no cards)"
    out: list[str] = []
    for card in cards:
        out.append(f"  [{str(card.get('indicator', '?')).upper()}] {card.get('summary', '')}")
        if card.get("detail"):
            out.append(_wrap(str(card["detail"]), "      "))
        source = card.get("source") or {}
        if source.get("label"):
            url = f" <{source['url']}>" if source.get("url") else ""
            out.append(f"      source: {source['label']}{url}")
        suggestions = card.get("suggestions") or []
        if suggestions:
            out.append(f"      suggestions ({card.get('selectionBehavior', '?')}):")
            for suggestion in suggestions:
                mark = "  [recommended]" if suggestion.get("isRecommended") else ""
                out.append(f"        * {suggestion.get('label', '')}{mark}")
                for action in suggestion.get("actions") or []:
                    target = action.get("resourceId") or (action.get("resource") or {}).get(
                        "resourceType", ""
                    )
                    desc = action.get("description", "")
                    out.append(f"            - {action.get('type')} {target}: {desc}")
        for link in card.get("links") or []:
            out.append(f"      link: {link.get('label')} -> {link.get('url')} ({link.get('type')})")
        for reason in card.get("overrideReasons") or []:
            out.append(f"      override reason: {reason.get('display') or reason.get('code')}")
        out.append("")
    for action in response.get("systemActions") or []:
        out.append(f"  system action: {action.get('type')} {action.get('description', '')}")
    return "\n".join(out).rstrip()


def _one_line_error(method: str, url: str, response: httpx.Response) -> str:
    detail = ""
    try:
        body = orjson.loads(response.content)
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            issues = body.get("issue") or [{}]
            detail = str(issues[0].get("diagnostics") or issues[0].get("code") or "")
    except orjson.JSONDecodeError:
        pass
    suffix = f": {' '.join(detail.split())[:200]}" if detail else ""
    return f"{method} {url} -> HTTP {response.status_code}{suffix}"


# --- the hook command --------------------------------------------------------------------------


@dataclass
class HookOutcome:
    service_id: str
    status: int
    elapsed_ms: float
    response: dict[str, Any] | None
    prefetch_filled: list[str] = field(default_factory=list)
    prefetch_omitted: dict[str, str] = field(default_factory=dict)
    error: str | None = None


async def run_hook(
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
    endpoint: str = "",
) -> list[HookOutcome]:
    """Discover, prefetch, call; one :class:`HookOutcome` per service registered for ``hook``.

    ``endpoint`` is appended to each service URL: ``"/explain"`` sends the same request to the
    integrators' explain endpoint.
    """
    if not is_fhir_id(patient_id):
        raise CliError(f"--patient {patient_id!r} is not a FHIR id")
    context = build_context(hook, patient_id, user_id, drafts, selections)
    service = service.rstrip("/")
    own_http = http is None
    client = http or make_http_client(read_s=timeout_s)
    try:
        discovery_url = f"{service}/cds-services"
        try:
            resp = await client.get(discovery_url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise CliError(f"GET {discovery_url} failed: {_describe(exc)}") from exc
        if resp.status_code != 200:
            raise CliError(_one_line_error("GET", discovery_url, resp))
        try:
            services = orjson.loads(resp.content)["services"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise CliError(f"GET {discovery_url}: not a CDS Hooks discovery document") from exc
        chosen = [
            s
            for s in services
            if isinstance(s, dict)
            and s.get("hook") == hook
            and (not service_ids or s.get("id") in service_ids)
        ]
        if not chosen:
            raise CliError(f"{discovery_url} has no service for hook {hook}")
        settings = get_settings()
        fhir = FhirClient(
            client,
            page_cap=settings.fhir_page_cap,
            max_response_bytes=settings.fhir_max_response_bytes,
        )
        # One hook invocation: every service gets the same hookInstance, as from an EHR.
        request = build_request(hook, fhir_server, context, None, token, patient_id)
        outcomes = []
        for definition in chosen:
            outcomes.append(
                await _call_service(
                    client,
                    fhir,
                    f"{service}/cds-services/{definition.get('id')}{endpoint}",
                    definition,
                    dict(request),
                    prefetch,
                    fhir_deadline_s,
                )
            )
        return outcomes
    finally:
        if own_http:
            await client.aclose()


async def _call_service(
    client: httpx.AsyncClient,
    fhir: FhirClient,
    url: str,
    definition: dict[str, Any],
    body: dict[str, Any],
    prefetch: bool,
    fhir_deadline_s: float,
) -> HookOutcome:
    service_id = str(definition.get("id"))
    auth = body.get("fhirAuthorization") or {}
    token = auth.get("access_token")
    outcome = HookOutcome(service_id=service_id, status=0, elapsed_ms=0.0, response=None)
    prefetch_data: dict[str, Any] | None = None
    templates = definition.get("prefetch") or {}
    if prefetch and isinstance(templates, dict) and templates:
        queries: dict[str, str] = {}
        for key, template in templates.items():
            rendered = render_template(str(template), body["context"])
            if rendered is None:
                outcome.prefetch_omitted[key] = "unfillable-token"
            else:
                queries[key] = rendered
        try:
            results = await fhir.search_many(body["fhirServer"], queries, token, fhir_deadline_s)
        except ValueError as exc:
            raise CliError(f"--fhir-server {body['fhirServer']}: {exc}") from exc
        prefetch_data = {}
        for key, result in results.items():
            if result.ok:
                prefetch_data[key] = prefetch_value(queries[key], result)
                outcome.prefetch_filled.append(key)
            else:
                outcome.prefetch_omitted[key] = result.reason or "failed"
    if prefetch_data is not None:
        body["prefetch"] = prefetch_data
    started = time.perf_counter()
    try:
        resp = await client.post(
            url,
            content=orjson.dumps(body),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
    except httpx.HTTPError as exc:
        outcome.error = f"POST {url} failed: {_describe(exc)}"
        return outcome
    outcome.elapsed_ms = (time.perf_counter() - started) * 1000
    outcome.status = resp.status_code
    if resp.status_code != 200:
        outcome.error = _one_line_error("POST", url, resp)
        return outcome
    try:
        outcome.response = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        outcome.error = f"POST {url} -> HTTP 200 but the body is not JSON"
    return outcome


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return exc.__class__.__name__


def print_outcomes(outcomes: Sequence[HookOutcome], hook: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        data = {o.service_id: o.response for o in outcomes if o.response is not None}
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    for o in outcomes:
        if o.error:
            continue
        cards = (o.response or {}).get("cards") or []
        out.write(
            f"== {o.service_id} ({hook}): HTTP {o.status} in {o.elapsed_ms:.0f} ms, "
            f"{len(cards)} card(s)\n"
        )
        if o.prefetch_filled or o.prefetch_omitted:
            omitted = ", ".join(f"{k} ({v})" for k, v in o.prefetch_omitted.items())
            out.write(
                f"   prefetch sent: {', '.join(o.prefetch_filled) or '-'}"
                + (f"; omitted: {omitted}" if omitted else "")
                + "\n"
            )
        out.write(format_cards(o.response or {}) + "\n")


# --- argparse wiring ---------------------------------------------------------------------------


def _token_from_env(name: str | None) -> str | None:
    if not name:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise CliError(f"--token-env {name}: the environment variable is empty or unset")
    return token


Runner = Callable[..., Coroutine[Any, Any, list[HookOutcome]]]


def run_from_args(
    args: argparse.Namespace, runner: Runner, show: Callable[[list[HookOutcome]], None]
) -> int:
    """The shared body of ``hook`` and ``explain``: build the request from the arguments, run
    it, show the outcomes, and print each error as one line (exit 1 if any)."""
    try:
        token = _token_from_env(args.token_env)
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


def cmd_load(args: argparse.Namespace) -> int:
    try:
        token = _token_from_env(args.token_env)
        loaded = load_bundles(args.url, [Path(p) for p in args.files], token=token)
    except (CliError, SandboxError) as exc:
        print(f"sleep-cds: {exc}", file=sys.stderr)
        return 1
    for item in loaded:
        print(f"loaded {item.path}: {item.method} -> HTTP {item.status} ({item.entries} entries)")
    return 0


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
    """Add ``hook`` and ``load`` to the ``sleep-cds`` parser (each sets ``func``)."""
    hook = subparsers.add_parser(
        "hook",
        help="call the CDS service as an EHR would and print the cards",
        description="Build a CDS Hooks request (optionally prefetching from the FHIR server), "
        "call every service registered for the hook, print the cards.",
    )
    add_request_arguments(hook)
    hook.add_argument("--json", action="store_true", help="print raw responses as JSON")
    hook.set_defaults(func=cmd_hook)

    load = subparsers.add_parser(
        "load",
        help="load FHIR Bundles/resources into a FHIR server",
        description="POST transaction/batch Bundles to the base URL; PUT other resources by id.",
    )
    load.add_argument("url", help="FHIR base URL")
    load.add_argument("files", nargs="+", metavar="FILE")
    load.add_argument("--token-env", metavar="VAR", help="env var holding a FHIR bearer token")
    load.set_defaults(func=cmd_load)
