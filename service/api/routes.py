"""CDS Hooks endpoints: discovery, the three services, feedback, and the integrators' explain."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Path, Request
from starlette.responses import Response

from service import metrics
from service.api import feedback as feedback_trust
from service.api.context import AppContext
from service.api.deps import Caller, CallerDep, ContextDep
from service.api.jsonbody import decode_hook_request, parse_json, validate
from service.api.openapi import (
    ERRORS,
    EXPLAIN,
    FEEDBACK_ACK,
    HEALTH,
    READY,
    feedback_body_schema,
    hook_body_schema,
    ok,
    problem,
)
from service.api.responses import json_response
from service.cdshooks import models
from service.cdshooks.discovery import SERVICES, ServiceSpec, service_by_id
from service.db import repository
from service.engine.cards import CardMeta
from service.engine.pipeline import HookCall, HookResult
from service.engine.suppression import Scope
from service.errors import InvalidRequest, PrefetchUnavailable, UnknownService
from service.logging import bind
from service.security import check_fhir_server

log = logging.getLogger("service.api")
router = APIRouter()


# Documented as the three ids; any other answers 404 (an OperationOutcome), not a 400.
ServiceId = Annotated[
    str,
    Path(
        description="A service id from discovery",
        json_schema_extra={"enum": [s.id for s in SERVICES]},
    ),
]


def _service(service_id: str) -> ServiceSpec:
    spec = service_by_id(service_id)
    if spec is None:
        raise UnknownService(f"No CDS service with id {service_id!r}")
    return spec


@router.get(
    "/cds-services",
    response_model=models.Discovery,
    responses={401: ERRORS[401]},
    summary="CDS Hooks discovery",
)
async def discovery(caller: CallerDep, context: ContextDep) -> Response:
    return json_response(context.discovery)


def _no_nul(where: str, *values: str | None) -> None:
    """Refuse U+0000 in what is stored: FHIR strings may not hold it and PostgreSQL text cannot,
    so it would otherwise surface as a database error (a 503, a skipped audit row)."""
    if any(value is not None and "\x00" in value for value in values):
        raise InvalidRequest(f"{where}: text may not contain NUL (U+0000)")


def hook_call(spec: ServiceSpec, body: models.HookRequest) -> HookCall:
    context = body.context
    _no_nul("hookInstance/context", body.hookInstance, context.patientId, context.userId)
    if body.hook != spec.hook:
        raise InvalidRequest(f"hook {body.hook!r} does not match service {spec.id} ({spec.hook})")
    if body.fhirAuthorization is not None and not body.fhirServer:
        raise InvalidRequest(
            "fhirAuthorization without fhirServer: CDS Hooks 2.0 requires fhirServer whenever "
            "fhirAuthorization is sent"
        )
    missing = [f for f in ("patientId", "userId") if not getattr(context, f)]
    if spec.hook in ("order-select", "order-sign") and context.draftOrders is None:
        missing.append("draftOrders")
    if spec.hook == "order-select" and context.selections is None:
        missing.append("selections")
    if missing:
        raise InvalidRequest(f"context is missing required field(s) for {spec.hook}: {missing}")
    drafts: list[Any] = []
    if context.draftOrders is not None:
        entries = context.draftOrders.get("entry")
        if entries is not None and not isinstance(entries, list):
            raise InvalidRequest("context.draftOrders.entry must be an array")
        drafts = [e.get("resource") for e in entries or [] if isinstance(e, dict)]
    selections = None
    if spec.hook == "order-select" and context.selections is not None:
        selections = frozenset(context.selections)
    token = body.fhirAuthorization.access_token if body.fhirAuthorization else None
    assert context.patientId is not None
    return HookCall(
        hook=spec.hook,
        patient_id=context.patientId,
        user_id=context.userId,
        encounter_id=context.encounterId,
        prefetch=body.prefetch,
        fhir_server=body.fhirServer.rstrip("/") if body.fhirServer else None,
        token=token,
        draft_orders=drafts,
        selections=selections,
    )


async def _run(
    request: Request, context: AppContext, service_id: str, caller: Caller | None, explain: bool
) -> tuple[ServiceSpec, HookCall, models.HookRequest, HookResult]:
    spec = _service(service_id)
    bind(service_id=spec.id, hook=spec.hook)  # before parsing: a 400 is counted per service too
    settings = context.settings
    # The body is read first (bounded in size and time by RequestGuard), so a stalled client
    # never holds a slot; a slot bounds the parsed records and evaluations at once.
    raw = await request.body()
    async with context.hook_slots:
        body = decode_hook_request(raw, max_depth=settings.max_json_depth)
        del raw
        bind(hook_instance=body.hookInstance)
        call = hook_call(spec, body)
        check_fhir_server(call.fhir_server, caller)
        as_of = context.clock().date()
        try:
            result = await context.pipeline.run(call, as_of, explain=explain)
        except PrefetchUnavailable as exc:
            metrics.observe_fhir(exc.fetches, exc.fetch_ms)
            raise
    metrics.observe_fhir(result.fetches, result.fetch_ms)
    return spec, call, body, result


@router.post(
    "/cds-services/{service_id}",
    response_model=models.HookResponse,
    responses={**ERRORS, 412: problem("Data unavailable")},
    openapi_extra=hook_body_schema(),
    summary="Call a CDS service",
)
async def call_service(
    service_id: ServiceId,
    request: Request,
    caller: CallerDep,
    context: ContextDep,
    background: BackgroundTasks,
) -> Response:
    started = time.perf_counter()
    spec, call, body, result = await _run(request, context, service_id, caller, explain=False)
    hook_instance, patient_id = body.hookInstance, call.patient_id
    # The parsed prefetch is not needed past here: calls waiting on the database below must not
    # each keep theirs alive (64 concurrent 2.7 MB records took a worker to 770 MB).
    del call, body
    composed = result.metas
    result.cards, result.metas, _ = await feedback_trust.visible(
        context, caller, patient_id, result
    )
    cards = result.cards
    latency = (time.perf_counter() - started) * 1000
    bind(
        cards=len(cards),
        card_topics=[m.topic for m in result.metas],
        fetches=result.fetches or None,
        skipped_resources=result.record.skipped or None,
        outcome="ok",
    )
    metrics.observe_cards(spec.id, result.metas)
    shown = {meta.topic for meta in result.metas}
    metrics.observe_cards(spec.id, [m for m in composed if m.topic not in shown], suppressed=True)
    metrics.observe_hook(
        spec.id,
        prefetch_hits=result.prefetch_hits,
        prefetch_keys=result.prefetch_keys,
        skipped=result.record.skipped,
    )
    scope = feedback_trust.scope_of(caller, patient_id)
    background.add_task(_audit, context, spec, hook_instance, scope, latency, result.metas)
    return json_response({"cards": cards})


async def _audit(
    context: AppContext,
    spec: ServiceSpec,
    hook_instance: str,
    scope: Scope,
    latency_ms: float,
    metas: list[CardMeta],
) -> None:
    """Write the audit row after the response: the EHR never waits for it, and a database fault
    costs the audit row (counted in the log), never the cards. Only the card metadata is kept
    until then, not the parsed prefetch."""
    record = repository.AuditRecord(
        hook_instance=hook_instance,
        service_id=spec.id,
        hook=spec.hook,
        patient_id=scope.patient_id,
        called_at=context.clock(),
        latency_ms=latency_ms,
        cards=tuple(
            repository.CardRecord(
                m.uuid,
                m.key,
                m.topic,
                m.indicator,
                ",".join(m.rules),
                feedback_trust.card_detail(m),
            )
            for m in metas
        ),
        issuer=scope.issuer,
        tenant=scope.tenant,
    )
    try:
        await context.db.group_commit.audit(record)
    except Exception as exc:
        metrics.observe_audit(written=False)
        log.warning(
            "audit row skipped: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "audit-skipped"},
        )
    else:
        metrics.observe_audit(written=True)


@router.post(
    "/cds-services/{service_id}/feedback",
    responses={
        200: ok(
            "Items about issued cards stored (new or already there); others ignored", FEEDBACK_ACK
        ),
        **ERRORS,
        429: problem("More feedback items per minute than allowed for this issuer"),
        503: problem("Not stored: the database is unavailable; retry later"),
    },
    openapi_extra=feedback_body_schema(),
    summary="Feedback on cards (accepted / overridden)",
)
async def feedback(
    service_id: ServiceId, request: Request, caller: CallerDep, context: ContextDep
) -> Response:
    spec = _service(service_id)
    bind(service_id=spec.id)
    data = parse_json(await request.body(), max_depth=context.settings.max_json_depth)
    body = validate(models.FeedbackRequest, data)
    for i, entry in enumerate(body.feedback):
        override = entry.overrideReason
        _no_nul(
            f"feedback.{i}",
            entry.card,
            entry.outcomeTimestamp,
            *(s.id for s in entry.acceptedSuggestions or []),
            override.userComment if override else None,
            *(
                (override.reason.system, override.reason.code)
                if override and override.reason
                else ()
            ),
        )
    return json_response(await feedback_trust.receive(context, spec.id, caller, body))


@router.post(
    "/cds-services/{service_id}/explain",
    responses={
        200: ok("Each rule's outcome", EXPLAIN),
        **ERRORS,
        412: problem("Data unavailable"),
    },
    openapi_extra=hook_body_schema(),
    summary="For integrators: each rule's outcome for this request (off unless enabled)",
)
async def explain(
    service_id: ServiceId, request: Request, caller: CallerDep, context: ContextDep
) -> Response:
    if not context.settings.explain_on:
        raise UnknownService("The explain endpoint is not enabled")
    _, call, _, result = await _run(request, context, service_id, caller, explain=True)
    scope = feedback_trust.scope_of(caller, call.patient_id)
    hidden = await feedback_trust.hidden_rules(context, scope, result) or {}
    rules = [
        {
            "rule": f"{o.rule.id}@{o.rule.version}",
            "title": o.rule.title,
            "topic": o.rule.topic,
            "status": o.status,
            "indicator": o.indicator,
            "reason": o.reason or None,
            "evidence": [e.text for e in o.evidence],
            "trace": o.trace,
        }
        for o in result.outcomes
    ]
    return json_response(
        {
            "cards": result.cards,
            "rules": rules,
            "unavailable": sorted(result.record.unavailable),
            "fetches": result.fetches,
            "skippedResources": result.record.skipped,
            "unusableLabResults": result.record.unusable_labs,
            "suppressed": [
                {
                    "rule": rule,
                    "topic": topic,
                    "why": verdict.why,
                    "until": verdict.until.isoformat() if verdict.until else None,
                }
                for rule, (topic, verdict) in sorted(hidden.items())
            ],
        }
    )


@router.get("/healthz", summary="Process is up", responses={200: ok("Up", HEALTH)})
async def healthz() -> Response:
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    summary="Database reachable, knowledge loaded, and hook calls not queueing",
    responses={200: ok("Ready", READY), 503: ok("Not ready", READY)},
)
async def readyz(context: ContextDep) -> Response:
    db_ok = await context.db.ping()
    if not db_ok:
        metrics.DB_ERRORS.labels(operation="readiness").inc()
    kb_ok = context.kb is not None
    slots = context.hook_slots
    status = 200 if db_ok and kb_ok and not slots.saturated else 503
    return json_response(
        {
            "database": db_ok,
            "knowledge": kb_ok,
            "hookSlots": {**slots.state(), "available": not slots.saturated},
        },
        status,
    )
