"""The sleep-journal SMART app: its static files, its configuration, and its advice endpoint.

``GET /journal/launch`` and ``GET /journal/`` serve plain HTML/JS from ``service/journal/`` (no
build step, no CDN). The browser does SMART App Launch 2.0 itself with the vendored ``fhirclient``
library (authorization code + PKCE S256); the access token stays in the browser (sessionStorage,
as the library keeps it) and is never sent to this service.

Before it starts a launch the page asks ``/journal/api/check`` whether the ``iss`` may be used: the
same allow-list as hook calls (the issuer registry's ``fhir_servers``), or
``CDS_JOURNAL_FHIR_SERVERS`` when set; in local mode any https base or http to a loopback host.

``POST /journal/api/advice`` runs the patient-view rules on the data the page read with its own
token (sent as CDS Hooks prefetch). It makes no outbound call and stores nothing, so the answer
can only describe data the caller already holds. Every route answers 404 unless
``Settings.journal_on``.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from service.api.context import AppContext
from service.api.deps import ContextDep
from service.api.jsonbody import parse_json
from service.cdshooks.models import is_fhir_id
from service.engine.fhir_json import Reference, Resource
from service.engine.prefetch import KEY_CATEGORY, read_prefetch, templates_for
from service.errors import ForbiddenFhirServer, InvalidRequest, UnknownService
from service.knowledge.base import KnowledgeBase
from service.security import IssuerRegistry, check_fhir_server
from service.security.issuers import normalise_base_url

router = APIRouter(prefix="/journal", include_in_schema=False)

_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "launch.html": "text/html; charset=utf-8",
    "journal.css": "text/css; charset=utf-8",
    "journal.js": "text/javascript; charset=utf-8",
    "launch.js": "text/javascript; charset=utf-8",
    "fhirclient-2.6.3.min.js": "text/javascript; charset=utf-8",
}
HOOK = "patient-view"

# SMART v2 scopes, the narrowest that work: read the patient, read/search/create journal entries,
# and read what the patient-view rules read (labs, problems, medicines) so the app can state the
# service's advice. No openid/fhirUser (the app needs no user identity), no offline access.
_DATA_SCOPES = (
    "patient/Patient.r",
    "patient/QuestionnaireResponse.crs",
    "patient/Observation.rs",
    "patient/Condition.rs",
    "patient/MedicationRequest.rs",
    "patient/MedicationStatement.rs",
    "patient/Medication.r",  # the medicines the orders reference (the templates _include them)
)
EHR_SCOPES = " ".join(("launch", *_DATA_SCOPES))
STANDALONE_SCOPES = " ".join(("launch/patient", *_DATA_SCOPES))


async def journal_on(context: ContextDep) -> AppContext:
    """404 unless the journal app is on."""
    if not context.settings.journal_on:
        raise UnknownService("The sleep-journal app is not enabled (CDS_JOURNAL_ENABLED)")
    return context


JournalContext = Annotated[AppContext, Depends(journal_on)]


# --- which FHIR servers --------------------------------------------------------------------------


def _registered_servers(context: AppContext) -> list[str]:
    """The bases the app may use outside local mode (cached on the app: the file is read once)."""
    settings = context.settings
    cached = context.journal_servers
    if cached is None:
        if settings.journal_fhir_servers:
            cached = [s.rstrip("/") for s in settings.journal_fhir_servers]
        elif settings.trusted_issuers_file is not None:
            registry = IssuerRegistry.load(settings.trusted_issuers_file)
            cached = sorted({server for issuer in registry for server in issuer.fhir_servers})
        else:
            cached = []
        context.journal_servers = cached
    return cached


def check_journal_server(context: AppContext, iss: str) -> str:
    """The normalised base, or ``ForbiddenFhirServer`` saying why the app may not use it."""
    settings = context.settings
    check_fhir_server(iss, None)  # https (or loopback http), no credentials
    allowed = _registered_servers(context)
    if settings.local_mode and not settings.journal_fhir_servers:
        return iss.rstrip("/")
    wanted = normalise_base_url(iss)
    if not any(normalise_base_url(server) == wanted for server in allowed):
        raise ForbiddenFhirServer(
            "This FHIR server is not registered with the sleep-journal service"
        )
    return iss.rstrip("/")


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(context: AppContext) -> str:
    """Same-origin scripts and styles only; fetches to this service and the allowed FHIR servers.

    The browser talks to the EHR's FHIR server and token endpoint itself (SMART), so those origins
    are in ``connect-src`` (and may frame the app); in local mode any https origin or a loopback
    port.
    """
    settings = context.settings
    if settings.local_mode and not settings.journal_fhir_servers:
        others = ["https:", "http://127.0.0.1:*", "http://localhost:*"]
    else:
        origins = {_origin(s) for s in _registered_servers(context)}
        origins |= {_origin(s) for s in settings.journal_connect_origins}
        others = sorted(o for o in origins if o)
    # An EHR may show the app in a frame: only the EHR's own origins may frame it.
    sources = " ".join(["'self'", *others])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {sources}; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {sources}"
    )


# --- static files -------------------------------------------------------------------------------


@lru_cache(maxsize=len(_STATIC))
def _asset(name: str) -> bytes:
    return (resources.files("service.journal") / name).read_bytes()


def _headers(context: AppContext) -> dict[str, str]:
    # The middleware adds no-referrer (the redirect's ?code= never leaves in a Referer),
    # nosniff and no-store; an EHR frame is governed by frame-ancestors here.
    return {"Content-Security-Policy": content_security_policy(context)}


@lru_cache(maxsize=len(_STATIC))
def _gzipped(name: str) -> bytes:
    return gzip.compress(_asset(name), compresslevel=9, mtime=0)


def _asset_response(request: Request, context: AppContext, name: str) -> Response:
    """The file, gzipped (once, cached) when the browser accepts it: a phone on a slow network
    loads 29 KiB of app instead of 90 KiB."""
    headers = {**_headers(context), "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        return Response(_gzipped(name), media_type=_STATIC[name], headers=headers)
    return Response(_asset(name), media_type=_STATIC[name], headers=headers)


def _json(request: Request, context: AppContext, data: Any) -> Response:
    body = orjson.dumps(data)
    headers = {**_headers(context), "Vary": "Accept-Encoding"}
    if len(body) > 1024 and "gzip" in request.headers.get("accept-encoding", "").lower():
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body, compresslevel=6, mtime=0)
    return Response(body, media_type="application/json", headers=headers)


@router.get("")
@router.get("/")
async def journal_page(request: Request, context: JournalContext) -> Response:
    return _asset_response(request, context, "index.html")


@router.get("/launch")
async def launch_page(request: Request, context: JournalContext) -> Response:
    return _asset_response(request, context, "launch.html")


@lru_cache(maxsize=4)
def _questionnaire(profiles_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(
        (profiles_dir / "Questionnaire-sleep-journal.json").read_bytes()
    )
    return data


def _lab_names(kb: KnowledgeBase) -> dict[str, str]:
    """``system|code`` → analyte name, for every code of every analyte the rules know."""
    return {f"{s}|{c}": kb.analytes[name].display for (s, c), name in kb.analyte_by_code.items()}


@router.get("/api/config")
async def journal_config(request: Request, context: JournalContext) -> Response:
    settings, kb = context.settings, context.kb
    return _json(
        request,
        context,
        {
            "clientId": settings.journal_client_id,
            "scopes": {"ehr": EHR_SCOPES, "standalone": STANDALONE_SCOPES},
            "questionnaire": _questionnaire(settings.fhir_profiles_dir),
            "prefetch": templates_for(kb, HOOK),
            "labNames": _lab_names(kb),
            "fhirServers": None if settings.local_mode else _registered_servers(context),
        },
    )


@router.get("/api/check")
async def journal_check(request: Request, context: JournalContext, iss: str = "") -> Response:
    if not iss.strip():
        raise InvalidRequest("iss (the FHIR server's base URL) is required")
    base = check_journal_server(context, iss.strip())
    return _json(request, context, {"allowed": True, "iss": base})


@router.post("/api/advice")
async def journal_advice(request: Request, context: JournalContext) -> Response:
    """The patient-view cards for the data the page sends, as the EHR's CDS call would give them
    (without the EHR's feedback history: the app shows every card the rules give)."""
    raw = await request.body()  # before the slot: a stalled body must not hold one
    async with context.hook_slots:
        data = parse_json(raw, max_depth=context.settings.max_json_depth)
        if not isinstance(data, dict):
            raise InvalidRequest("body must be a JSON object")
        patient_id = data.get("patientId")
        if not isinstance(patient_id, str) or not is_fhir_id(patient_id):
            raise InvalidRequest("patientId must be a FHIR id ([A-Za-z0-9-.]{1,64})")
        fhir_server = data.get("fhirServer")
        if not isinstance(fhir_server, str):
            raise InvalidRequest("fhirServer (the FHIR base the data came from) is required")
        check_journal_server(context, fhir_server)
        prefetch = data.get("prefetch")
        if not isinstance(prefetch, dict):
            raise InvalidRequest("prefetch must be an object (CDS Hooks prefetch keys)")
        pipeline = context.pipeline
        templates = pipeline.templates[HOOK]
        read = read_prefetch(templates, prefetch)
        # What the page could not read (no scope, server fault) counts as unavailable: the rules
        # then say "not known" instead of treating it as absent.
        gaps = sorted({*read.missing, *read.paged})
        record = pipeline.reader.read(
            patient_id,
            context.clock().date(),
            [r for r in read.resources if _about(r, patient_id)],
            unavailable={KEY_CATEGORY[key] for key in gaps},
            drafts=[],
            selections=None,
        )
        outcomes = pipeline.engine.run(HOOK, record)
        cards, _ = pipeline.composer.compose(record, outcomes)
    return _json(request, context, {"cards": cards, "unavailable": gaps})


def _about(resource: Any, patient_id: str) -> bool:
    """Only the launched patient's resources count (a server that ignores ``patient=`` must not
    mix another patient's entries into this one's advice)."""
    if not isinstance(resource, Resource):
        return False
    if resource.resourceType == "Patient":
        return bool(resource.id == patient_id)
    if resource.resourceType == "Medication":  # referenced by the patient's orders
        return True
    subject = resource.subject or resource.patient
    reference = subject.reference if isinstance(subject, Reference) else None
    return isinstance(reference, str) and reference.split("/")[-2:] == ["Patient", patient_id]


@router.get("/{name}")
async def journal_asset(name: str, request: Request, context: JournalContext) -> Response:
    if name not in _STATIC or name in ("index.html", "launch.html"):
        raise UnknownService(f"No journal file {name!r}")
    return _asset_response(request, context, name)
