"""CDS Hooks endpoints: discovery, the three services, feedback, and the integrators' explain."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, Path, Request
from starlette.responses import Response

from service import metrics
from service.api.deps import Caller, authenticate, check_fhir_server, settings_of
from service.api.jsonbody import parse_json, validate
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
from service.api.openapi import (
    JSON as JSON_MEDIA,
)
from service.cdshooks import models
from service.cdshooks.discovery import SERVICES, ServiceSpec, service_by_id
from service.db import repository
from service.engine.cards import CardMeta
from service.engine.pipeline import HookCall, HookPipeline, HookResult
from service.engine.suppression import CLOCK_SKEW, PriorFeedback, is_suppressed
from service.errors import InvalidRequest, StorageUnavailable, UnknownService
from service.logging import bind

log = logging.getLogger("service.api")
router = APIRouter()


CallerDep = Annotated[Caller | None, Depends(authenticate)]
# Documented as the three ids; any other answers 404 (an OperationOutcome), not a 400.
ServiceId = Annotated[
    str,
    Path(
        description="A service id from discovery",
        json_schema_extra={"enum": [s.id for s in SERVICES]},
    ),
]


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON_MEDIA)


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
async def discovery(request: Request, caller: CallerDep) -> Response:
    return _json(request.app.state.discovery)


def _no_nul(where: str, *values: str | None) -> None:
    """Refuse U+0000 in what is stored: FHIR strings may not hold it and PostgreSQL text cannot,
    so it would otherwise surface as a database error (a 503, a skipped audit row)."""
    if any(value is not None and "\x00" in value for value in values):
        raise InvalidRequest(f"{where}: text may not contain NUL (U+0000)")


def _hook_call(spec: ServiceSpec, body: models.HookRequest) -> HookCall:
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
    request: Request, service_id: str, caller: Caller | None, explain: bool
) -> tuple[ServiceSpec, HookCall, models.HookRequest, HookResult]:
    spec = _service(service_id)
    bind(service_id=spec.id, hook=spec.hook)  # before parsing: a 400 is counted per service too
    settings = settings_of(request)
    # A slot bounds the bodies being read and evaluated at once; waiting calls' bodies stay in
    # the socket (uvicorn pauses reading), so memory does not grow with the queue.
    async with request.app.state.hook_slots:
        data = parse_json(await request.body(), max_depth=settings.max_json_depth)
        body = validate(models.HookRequest, data)
        del data
        bind(hook_instance=body.hookInstance)
        call = _hook_call(spec, body)
        check_fhir_server(call.fhir_server, caller)
        pipeline: HookPipeline = request.app.state.pipeline
        as_of = request.app.state.clock().date()
        result = await pipeline.run(call, as_of, explain=explain)
    return spec, call, body, result


@router.post(
    "/cds-services/{service_id}",
    response_model=models.HookResponse,
    responses={**ERRORS, 412: problem("Data unavailable")},
    openapi_extra=hook_body_schema(),
    summary="Call a CDS service",
)
async def call_service(
    service_id: ServiceId, request: Request, caller: CallerDep, background: BackgroundTasks
) -> Response:
    started = time.perf_counter()
    spec, call, body, result = await _run(request, service_id, caller, explain=False)
    hook_instance, patient_id = body.hookInstance, call.patient_id
    # The parsed prefetch is not needed past here: calls waiting on the database below must not
    # each keep theirs alive (64 concurrent 2.7 MB records took a worker to 770 MB).
    del call, body
    composed = result.metas
    result.cards, result.metas = await _without_suppressed(request, patient_id, result)
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
    shown = {id(meta) for meta in result.metas}
    metrics.observe_cards(spec.id, [m for m in composed if id(m) not in shown], suppressed=True)
    metrics.observe_hook(
        spec.id,
        prefetch_hits=result.prefetch_hits,
        prefetch_keys=result.prefetch_keys,
        skipped=result.record.skipped,
    )
    background.add_task(_audit, request, spec, hook_instance, patient_id, latency, result.metas)
    return _json({"cards": cards})


async def _without_suppressed(
    request: Request, patient_id: str, result: HookResult
) -> tuple[list[dict[str, Any]], list[CardMeta]]:
    """Drop cards the clinician already overrode or accepted with the same evidence.

    A failure to read feedback never hides a card: the card is shown (fail open).
    """
    if not result.cards:
        return result.cards, result.metas
    try:
        # Bounded: a database that accepts connections and never answers must not hold the chart.
        async with asyncio.timeout(settings_of(request).db_read_deadline_s):
            history = await request.app.state.db.group_commit.feedback(
                patient_id, [m.key for m in result.metas]
            )
    except Exception as exc:
        metrics.DB_ERRORS.labels(operation="suppression").inc()
        log.warning(
            "suppression skipped: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "suppression-skipped"},
        )
        return result.cards, result.metas
    now = request.app.state.clock()
    policy = request.app.state.kb.policy
    kept: list[tuple[dict[str, Any], CardMeta]] = []
    try:
        for card, meta in zip(result.cards, result.metas, strict=True):
            prior = [PriorFeedback(*row) for row in history.get(meta.key, [])]
            if not is_suppressed(policy, meta.indicator, prior, now):
                kept.append((card, meta))
    except Exception as exc:  # a bug or odd data in the suppression logic never hides a card
        log.error(
            "suppression skipped: %s", type(exc).__name__, extra={"outcome": "suppression-skipped"}
        )
        return result.cards, result.metas
    if len(kept) < len(result.cards):
        bind(suppressed=len(result.cards) - len(kept))
    return [card for card, _ in kept], [meta for _, meta in kept]


async def _audit(
    request: Request,
    spec: ServiceSpec,
    hook_instance: str,
    patient_id: str,
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
        patient_id=patient_id,
        called_at=request.app.state.clock(),
        latency_ms=latency_ms,
        cards=tuple(
            repository.CardRecord(m.uuid, m.key, m.topic, m.indicator, ",".join(m.rules))
            for m in metas
        ),
    )
    try:
        await request.app.state.db.group_commit.audit(record)
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
        200: ok("Every item is stored (new or already there)", FEEDBACK_ACK),
        **ERRORS,
        503: problem("Not stored: the database is unavailable; retry later"),
    },
    openapi_extra=feedback_body_schema(),
    summary="Feedback on cards (accepted / overridden)",
)
async def feedback(service_id: ServiceId, request: Request, caller: CallerDep) -> Response:
    spec = _service(service_id)
    bind(service_id=spec.id)
    settings = settings_of(request)
    data = parse_json(await request.body(), max_depth=settings.max_json_depth)
    body = validate(models.FeedbackRequest, data)
    received = request.app.state.clock()
    items = []
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
        try:
            outcome_at = datetime.fromisoformat(entry.outcomeTimestamp.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"feedback.{i}.outcomeTimestamp: not an ISO 8601 date-time"
            ) from None
        if outcome_at.tzinfo is None:
            raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: a UTC offset is required")
        try:
            outcome_at = outcome_at.astimezone(UTC)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: out of range") from None
        if outcome_at > received + CLOCK_SKEW:
            raise InvalidRequest(
                f"feedback.{i}.outcomeTimestamp: more than 5 minutes after the service's clock"
            )
        # The suppression window starts when the service received the feedback, or earlier
        # if the client says so: a client clock can never push a window into the future.
        outcome_at = min(outcome_at, received)
        if entry.outcome == "accepted" and not entry.acceptedSuggestions:
            raise InvalidRequest(f"feedback.{i}: acceptedSuggestions is required when accepted")
        reason = entry.overrideReason.reason if entry.overrideReason else None
        items.append(
            repository.FeedbackRecord(
                service_id=spec.id,
                card_uuid=entry.card,
                outcome=entry.outcome,
                outcome_at=outcome_at,
                accepted_suggestions=[s.id for s in entry.acceptedSuggestions or []],
                reason_system=reason.system if reason else None,
                reason_code=reason.code if reason else None,
                comment=entry.overrideReason.userComment if entry.overrideReason else None,
            )
        )
    try:
        stored, duplicates = await repository.store_feedback(request.app.state.db, items)
    except Exception as exc:
        metrics.observe_feedback_failed(spec.id, len(items))
        log.error(
            "feedback not stored: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "503"},
        )
        raise StorageUnavailable("Feedback could not be stored; retry later") from None
    bind(service_id=spec.id, items=len(items), stored=stored, duplicates=duplicates)
    metrics.observe_feedback(
        spec.id, stored=stored, duplicates=duplicates, outcomes=[i.outcome for i in items]
    )
    return _json({"stored": stored, "duplicates": duplicates})


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
async def explain(service_id: ServiceId, request: Request, caller: CallerDep) -> Response:
    if not settings_of(request).explain_on:
        raise UnknownService("The explain endpoint is not enabled")
    _, _, _, result = await _run(request, service_id, caller, explain=True)
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
    return _json(
        {
            "cards": result.cards,
            "rules": rules,
            "unavailable": sorted(result.record.unavailable),
            "fetches": result.fetches,
            "skippedResources": result.record.skipped,
            "unusableLabResults": result.record.unusable_labs,
        }
    )


@router.get("/healthz", summary="Process is up", responses={200: ok("Up", HEALTH)})
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get(
    "/readyz",
    summary="Database reachable and knowledge loaded",
    responses={200: ok("Ready", READY), 503: ok("Not ready", READY)},
)
async def readyz(request: Request) -> Response:
    db_ok = await request.app.state.db.ping()
    if not db_ok:
        metrics.DB_ERRORS.labels(operation="readiness").inc()
    kb_ok = request.app.state.kb is not None
    status = 200 if db_ok and kb_ok else 503
    return _json({"database": db_ok, "knowledge": kb_ok}, status)
