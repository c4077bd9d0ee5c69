"""Calling CDS services as an EHR does: discover, fill the prefetch from the FHIR server, POST.

The prefetch is filled with the same :class:`~service.fhir.FhirClient` the service uses for its
fallback. Failed prefetch keys are omitted, as the spec requires of a client, so ``--prefetch``
also exercises the service's own fallback. Errors name the URL and status in one line.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from service.cdshooks.models import is_fhir_id
from service.cli.errors import CliError
from service.cli.request import (
    DEFAULT_USER,
    build_context,
    build_request,
    prefetch_value,
    render_template,
)
from service.config import get_settings
from service.fhir import FhirClient, make_http_client


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
        chosen = await _discover(client, service, hook, service_ids)
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


async def _discover(
    client: httpx.AsyncClient, service: str, hook: str, service_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """The service definitions registered for ``hook`` (only ``service_ids`` when given)."""
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
    return chosen


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
    outcome = HookOutcome(service_id=service_id, status=0, elapsed_ms=0.0, response=None)
    templates = definition.get("prefetch") or {}
    if prefetch and isinstance(templates, dict) and templates:
        body["prefetch"] = await _fill_prefetch(fhir, body, templates, outcome, fhir_deadline_s)
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


async def _fill_prefetch(
    fhir: FhirClient,
    body: dict[str, Any],
    templates: dict[str, Any],
    outcome: HookOutcome,
    fhir_deadline_s: float,
) -> dict[str, Any]:
    """The prefetch an EHR would send; records in ``outcome`` which keys were filled or omitted
    (a token it cannot fill, or a failed FHIR query)."""
    auth = body.get("fhirAuthorization") or {}
    token = auth.get("access_token")
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
    prefetch_data: dict[str, Any] = {}
    for key, result in results.items():
        if result.ok:
            prefetch_data[key] = prefetch_value(queries[key], result)
            outcome.prefetch_filled.append(key)
        else:
            outcome.prefetch_omitted[key] = result.reason or "failed"
    return prefetch_data


def _describe(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return exc.__class__.__name__


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
