"""The in-chart preview console: a page that plays the EHR, served by the service itself.

``GET /console`` serves plain HTML/CSS/JS from ``service/console/`` (no build step, no CDN). The
page calls the service's own CDS Hooks endpoints from the browser, exactly as an EHR would
(discovery, hook calls with ``fhirServer`` and no prefetch, feedback, explain), and reads the
patient list and a chart summary through two small read-only endpoints here, so the browser never
talks to the FHIR server itself (no CORS set-up needed on a real EHR sandbox).

Every route answers 404 (an OperationOutcome) unless ``Settings.console_on``: on by default in
local mode, off elsewhere unless ``CDS_CONSOLE_ENABLED=true``. The FHIR base is
``CDS_CONSOLE_FHIR_SERVER`` when set (the page cannot change it); otherwise, in local mode only, the
user types it, and it passes the same check as a hook call's ``fhirServer`` (https, or http to a
loopback host, no credentials). No token is ever sent to the FHIR server from here.
"""

from __future__ import annotations

import hmac
from datetime import date
from functools import lru_cache
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.api.context import AppContext
from service.api.deps import ContextDep
from service.api.problems import operation_outcome
from service.api.responses import json_response
from service.cdshooks.models import is_fhir_id
from service.config import Settings
from service.engine.fhir_json import Resource, resource_of
from service.engine.fhir_values import concept_of, parse_date
from service.engine.pipeline import HookCall, render_query, unresolved_medication_refs
from service.engine.reader import medication_concept
from service.engine.record import age_on
from service.errors import AuthenticationFailed, InvalidRequest, UnknownService
from service.knowledge.base import KnowledgeBase
from service.security import check_fhir_server

router = APIRouter(prefix="/console", include_in_schema=False)

# Same-origin only: the page calls this service and nothing else; no inline script or style, so a
# card that smuggled markup past the renderer still could not run or restyle anything.
CONSOLE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}
_PATIENT_LIMIT = 200
_HOOK = "patient-view"
"""The chart reads what this hook's rules read, with the queries the service itself sends."""
_CHART_KEYS = (
    "patient",
    "conditions",
    "observations",
    "symptoms",
    "medicationRequests",
    "medicationStatements",
)


async def console_on(context: ContextDep) -> AppContext:
    """404 unless the console is on (its static files hold no patient data)."""
    if not context.settings.console_on:
        raise UnknownService("The preview console is not enabled (CDS_CONSOLE_ENABLED)")
    return context


async def console_data(
    request: Request, context: Annotated[AppContext, Depends(console_on)]
) -> AppContext:
    """The app's context, once the caller may see patient data. Outside local mode the data
    routes (patient lists and charts) require ``CDS_ADMIN_TOKEN`` as a bearer token; start-up
    refuses ``CDS_CONSOLE_ENABLED=true`` there without one (``security.startup``)."""
    settings = context.settings
    if not settings.local_mode:
        scheme, _, presented = (request.headers.get("authorization") or "").partition(" ")
        expected = settings.admin_token or ""
        if not (
            expected
            and scheme.lower() == "bearer"
            and hmac.compare_digest(presented.strip().encode(), expected.encode())
        ):
            raise AuthenticationFailed("console: admin token required")
    return context


ConsolePage = Annotated[AppContext, Depends(console_on)]
ConsoleData = Annotated[AppContext, Depends(console_data)]


@lru_cache(maxsize=len(_STATIC))
def _asset(name: str) -> bytes:
    return (resources.files("service.console") / name).read_bytes()


def _asset_response(name: str) -> Response:
    return Response(
        _asset(name),
        media_type=_STATIC[name],
        headers={"Content-Security-Policy": CONSOLE_CSP},
    )


def _json(data: Any, status: int = 200) -> Response:
    """JSON with the console's Content-Security-Policy."""
    return json_response(data, status, {"Content-Security-Policy": CONSOLE_CSP})


@router.get("")
@router.get("/")
async def console_page(context: ConsolePage) -> Response:
    return _asset_response("index.html")


@router.get("/api/config")
async def console_config(context: ConsoleData) -> Response:
    settings = context.settings
    fixed = settings.console_fhir_server
    return _json(
        {
            "fhirServer": fixed.rstrip("/") if fixed else None,
            "fhirServerFixed": bool(fixed),
            "localMode": settings.local_mode,
            "explain": settings.explain_on,
            "userId": "Practitioner/example",
        }
    )


@router.get("/api/patients")
async def console_patients(context: ConsoleData, fhirServer: str | None = None) -> Response:
    base = _fhir_base(context.settings, fhirServer)
    results = await _fetch(context, base, {"patients": "Patient?_count=100"})
    found = results["patients"]
    if not found.ok:
        return _unreachable(base, found.reason)
    today = context.clock().date()
    patients = [
        _patient_summary(p, today) for p in found.resources if p.get("resourceType") == "Patient"
    ]
    patients.sort(key=lambda p: (p["name"].lower(), p["id"]))
    return _json({"fhirServer": base, "patients": patients[:_PATIENT_LIMIT]})


@router.get("/api/chart/{patient_id}")
async def console_chart(
    patient_id: str,
    context: ConsoleData,
    fhirServer: str | None = None,
) -> Response:
    settings = context.settings
    if not is_fhir_id(patient_id):
        raise InvalidRequest("patient id must be a FHIR id ([A-Za-z0-9-.]{1,64})")
    base = _fhir_base(settings, fhirServer)
    kb = context.kb
    templates = context.pipeline.templates[_HOOK]
    call = HookCall(hook=_HOOK, patient_id=patient_id)
    queries = {key: render_query(templates[key], call) for key in _CHART_KEYS if key in templates}
    results = await _fetch(context, base, queries)
    patient_result = results.get("patient")
    if patient_result is None or not patient_result.ok:
        return _unreachable(base, patient_result.reason if patient_result else "not-asked")
    if not patient_result.resources:
        return operation_outcome(404, f"No Patient/{patient_id} on {base}", code="not-found")

    def ok(key: str) -> list[dict[str, Any]]:
        result = results.get(key)
        return list(result.resources) if result is not None and result.ok else []

    unavailable = sorted(
        f"{key}: {result.reason}" for key, result in results.items() if not result.ok
    )
    meds = [resource_of(r) for r in ok("medicationRequests") + ok("medicationStatements")]
    refs = unresolved_medication_refs(meds)  # as the hook path: only what nobody sent
    fetcher = context.pipeline.fetcher
    assert fetcher is not None  # _fetch refused the call otherwise
    if refs:
        read = await fetcher.read_references(base, refs, None, settings.fhir_deadline_s)
        meds += [resource_of(r) for r in read.values()]
    return _json(
        {
            "fhirServer": base,
            "patient": _patient_summary(patient_result.resources[0], context.clock().date()),
            "problems": _problems(ok("conditions")),
            "medications": _medications(meds),
            "labs": _labs(kb, ok("observations")),
            "findings": _findings(ok("symptoms")),
            "unavailable": unavailable,
        }
    )


@router.get("/{name}")
async def console_asset(name: str, context: ConsolePage) -> Response:
    if name not in _STATIC:
        raise UnknownService(f"No console file {name!r}")
    return _asset_response(name)


# --- FHIR access -------------------------------------------------------------------------------


def _fhir_base(settings: Settings, given: str | None) -> str:
    """The FHIR base this console may read: the configured one, or (local mode) the user's."""
    fixed = settings.console_fhir_server
    if fixed:
        fixed = fixed.rstrip("/")
        if given and given.rstrip("/") != fixed:
            raise InvalidRequest(f"This console reads only {fixed} (CDS_CONSOLE_FHIR_SERVER)")
        return fixed
    if not given or not given.strip():
        raise InvalidRequest("Enter the FHIR server's base URL (fhirServer)")
    if not settings.local_mode:
        raise InvalidRequest("Outside local mode the console reads only CDS_CONSOLE_FHIR_SERVER")
    base = given.strip().rstrip("/")
    check_fhir_server(base, None)
    return base


async def _fetch(context: AppContext, base: str, queries: dict[str, str]) -> dict[str, Any]:
    fetcher = context.pipeline.fetcher
    if fetcher is None:
        raise UnknownService("The FHIR client is not ready")
    try:
        results: dict[str, Any] = dict(
            await fetcher.search_many(base, queries, None, context.settings.fhir_deadline_s)
        )
    except ValueError as exc:
        raise InvalidRequest(f"fhirServer: {exc}") from None
    return results


def _unreachable(base: str, reason: str | None) -> Response:
    return operation_outcome(
        502, f"The FHIR server {base} could not be read ({reason or 'error'})", code="transient"
    )


# --- summaries (plain data; the page renders every value as text) -----------------------------
# Codes, labels, ages and medicines are read as the engine reads them (``engine/reader.py``), so
# the chart names things as the cards do; only what the rules never read (names, identifiers,
# dosage text, display dates) is taken from the JSON here.

_UNREADABLE = (TypeError, ValueError, AttributeError)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _day(value: Any) -> str | None:
    text = _text(value)
    return text[:10] if text else None


def _label(value: object) -> str | None:
    """What a clinician would call a CodeableConcept (slim struct): ``concept_of``'s label."""
    concept = concept_of(value)
    return concept.label if concept is not None else None


def _slim(resources: list[dict[str, Any]], kind: str) -> list[tuple[dict[str, Any], Resource]]:
    """Each ``kind`` resource with its slim struct (the engine's reading of it)."""
    pairs = []
    for raw in resources:
        resource = resource_of(raw)
        if isinstance(resource, Resource) and resource.resourceType == kind:
            pairs.append((raw, resource))
    return pairs


def _patient_summary(patient: dict[str, Any], today: date) -> dict[str, Any]:
    names = [n for n in patient.get("name") or [] if isinstance(n, dict)]
    official = next((n for n in names if n.get("use") == "official"), names[0] if names else {})
    parts = [g for g in official.get("given") or [] if isinstance(g, str)]
    if family := _text(official.get("family")):
        parts.append(family)
    name = _text(official.get("text")) or " ".join(parts) or str(patient.get("id", "?"))
    identifiers = [i for i in patient.get("identifier") or [] if isinstance(i, dict)]
    born = parse_date(patient.get("birthDate"))
    return {
        "id": str(patient.get("id", "")),
        "name": name,
        "gender": _text(patient.get("gender")),
        "birthDate": _day(patient.get("birthDate")),
        "age": age_on(born, today) if born is not None else None,
        "mrn": next((i["value"] for i in identifiers if _text(i.get("value"))), None),
    }


def _problems(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [
        {
            "text": _label(c.code) or "(unnamed condition)",
            "onset": _day(raw.get("onsetDateTime"))
            or _day((raw.get("onsetPeriod") or {}).get("start"))
            or _day(raw.get("recordedDate")),
            "status": _label(c.clinicalStatus),
        }
        for raw, c in _slim(conditions, "Condition")
    ]
    return sorted(rows, key=lambda r: r["onset"] or "", reverse=True)


def _medication_name(med: Resource, medications: dict[str, Resource]) -> str:
    try:
        concept = medication_concept(med, medications)
    except _UNREADABLE:  # the record reader skips such an order too
        concept = None
    return concept.label if concept is not None else "(unnamed medication)"


def _medications(resources: list[object]) -> list[dict[str, Any]]:
    """Orders and statements, each named by its drug: coded, contained, sent or read Medication."""
    slim = [r for r in resources if isinstance(r, Resource)]
    medications = {f"Medication/{r.id}": r for r in slim if r.resourceType == "Medication"}
    rows = []
    for med in slim:
        if med.resourceType not in ("MedicationRequest", "MedicationStatement"):
            continue
        dosages = med.dosageInstruction or med.dosage
        dosage = next(
            (
                d["text"]
                for d in (dosages if isinstance(dosages, list) else [])
                if isinstance(d, dict) and _text(d.get("text"))
            ),
            None,
        )
        rows.append(
            {
                "text": _medication_name(med, medications),
                "status": _text(med.status),
                "date": _day(med.authoredOn)
                or _day(med.effectiveDateTime)
                or _day(med.dateAsserted),
                "dosage": dosage,
                "kind": "statement" if med.resourceType == "MedicationStatement" else "order",
            }
        )
    return sorted(rows, key=lambda r: r["text"].lower())


def _value(raw: dict[str, Any], obs: Resource) -> str | None:
    quantity = raw.get("valueQuantity")
    if isinstance(quantity, dict) and isinstance(quantity.get("value"), int | float):
        number = quantity["value"]
        shown = f"{number:g}" if isinstance(number, float) else str(number)
        unit = _text(quantity.get("unit")) or _text(quantity.get("code"))
        comparator = _text(quantity.get("comparator")) or ""
        return f"{comparator}{shown} {unit}" if unit else f"{comparator}{shown}"
    if concept := _label(obs.valueCodeableConcept):
        return concept
    if isinstance(raw.get("valueBoolean"), bool):
        return "yes" if raw["valueBoolean"] else "no"
    if isinstance(raw.get("valueInteger"), int):
        return str(raw["valueInteger"])
    return _text(raw.get("valueString"))


def _when(obs: dict[str, Any]) -> str | None:
    return (
        _day(obs.get("effectiveDateTime"))
        or _day((obs.get("effectivePeriod") or {}).get("start"))
        or _day(obs.get("issued"))
    )


def _flag(obs: Resource) -> str | None:
    flags = []
    interpretation = obs.interpretation
    for item in interpretation if isinstance(interpretation, list) else []:
        concept = concept_of(item)
        for system, code in concept.codings if concept is not None else ():
            if system.endswith("v3-ObservationInterpretation") and code not in ("N", "NEG"):
                flags.append(code)
    return ", ".join(flags) or None


def _labs(kb: KnowledgeBase, observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    names = {key: kb.analytes[name].display for key, name in kb.analyte_by_code.items()}
    rows = []
    for raw, obs in _slim(observations, "Observation"):
        concept = concept_of(obs.code)
        codings = concept.codings if concept is not None else ()
        known = next((names[k] for k in codings if k in names), None)
        rows.append(
            {
                "name": known or (concept.label if concept is not None else "(unnamed result)"),
                "value": _value(raw, obs) or "(no value)",
                "date": _when(raw),
                "flag": _flag(obs),
                "status": _text(obs.status),
            }
        )
    return sorted(rows, key=lambda r: (r["date"] or "", r["name"]), reverse=True)


def _findings(observations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [
        {
            "text": _label(obs.code) or "(unnamed finding)",
            "value": _value(raw, obs),
            "date": _when(raw),
        }
        for raw, obs in _slim(observations, "Observation")
    ]
    return sorted(rows, key=lambda r: r["date"] or "", reverse=True)
