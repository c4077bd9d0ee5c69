"""CDS Hooks endpoints: discovery, the three services, feedback, and the integrators' explain."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, BackgroundTasks, Depends, Request
from starlette.responses import Response

from service.api.deps import Caller, authenticate, check_fhir_server, settings_of
from service.api.jsonbody import parse_json, validate
from service.cdshooks import models
from service.cdshooks.discovery import ServiceSpec, service_by_id
from service.db import repository
from service.engine.cards import CardMeta
from service.engine.pipeline import HookCall, HookPipeline, HookResult
from service.engine.suppression import PriorFeedback, is_suppressed
from service.errors import InvalidRequest, StorageUnavailable, UnknownService
from service.logging import bind

log = logging.getLogger("service.api")
router = APIRouter()

JSON = "application/json"
CallerDep = Annotated[Caller | None, Depends(authenticate)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": models.OperationOutcome, "description": text}
    for code, text in {
        400: "Malformed JSON or an invalid request",
        401: "Authentication failed",
        404: "Unknown service",
        413: "Body too large",
    }.items()
}


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type=JSON)


def _service(service_id: str) -> ServiceSpec:
    spec = service_by_id(service_id)
    if spec is None:
        raise UnknownService(f"No CDS service with id {service_id!r}")
    return spec


def _hook_body_schema() -> dict[str, Any]:
    schema = models.HookRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def _feedback_body_schema() -> dict[str, Any]:
    schema = models.FeedbackRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


@router.get(
    "/cds-services",
    response_model=models.Discovery,
    responses={401: _ERRORS[401]},
    summary="CDS Hooks discovery",
)
async def discovery(request: Request, caller: CallerDep) -> Response:
    return _json(request.app.state.discovery)


def _hook_call(spec: ServiceSpec, body: models.HookRequest) -> HookCall:
    if body.hook != spec.hook:
        raise InvalidRequest(f"hook {body.hook!r} does not match service {spec.id} ({spec.hook})")
    context = body.context
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
    settings = settings_of(request)
    data = parse_json(await request.body(), max_depth=settings.max_json_depth)
    body = validate(models.HookRequest, data)
    bind(hook_instance=body.hookInstance, service_id=spec.id, hook=spec.hook)
    call = _hook_call(spec, body)
    check_fhir_server(call.fhir_server, caller)
    pipeline: HookPipeline = request.app.state.pipeline
    as_of = request.app.state.clock().date()
    result = await pipeline.run(call, as_of, explain=explain)
    return spec, call, body, result


@router.post(
    "/cds-services/{service_id}",
    response_model=models.HookResponse,
    responses={
        **_ERRORS,
        412: {"model": models.OperationOutcome, "description": "Data unavailable"},
    },
    openapi_extra=_hook_body_schema(),
    summary="Call a CDS service",
)
async def call_service(
    service_id: str, request: Request, caller: CallerDep, background: BackgroundTasks
) -> Response:
    started = time.perf_counter()
    spec, call, body, result = await _run(request, service_id, caller, explain=False)
    result.cards, result.metas = await _without_suppressed(request, call.patient_id, result)
    cards = result.cards
    latency = (time.perf_counter() - started) * 1000
    bind(
        cards=len(cards),
        card_topics=[m.topic for m in result.metas],
        fetches=result.fetches or None,
        skipped_resources=result.record.skipped or None,
        outcome="ok",
    )
    background.add_task(_audit, request, spec, body.hookInstance, call.patient_id, latency, result)
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
        history = await repository.feedback_by_card_key(
            request.app.state.db, patient_id, [m.key for m in result.metas]
        )
    except Exception as exc:
        log.warning(
            "suppression skipped: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "suppression-skipped"},
        )
        return result.cards, result.metas
    now = request.app.state.clock()
    policy = request.app.state.kb.policy
    kept: list[tuple[dict[str, Any], CardMeta]] = []
    for card, meta in zip(result.cards, result.metas, strict=True):
        prior = [PriorFeedback(*row) for row in history.get(meta.key, [])]
        if not is_suppressed(policy, meta.indicator, prior, now):
            kept.append((card, meta))
    if len(kept) < len(result.cards):
        bind(suppressed=len(result.cards) - len(kept))
    return [card for card, _ in kept], [meta for _, meta in kept]


async def _audit(
    request: Request,
    spec: ServiceSpec,
    hook_instance: str,
    patient_id: str,
    latency_ms: float,
    result: HookResult,
) -> None:
    """Write the audit row after the response: the EHR never waits for it, and a database fault
    costs the audit row (counted in the log), never the cards."""
    try:
        await repository.record_hook_call(
            request.app.state.db,
            hook_instance=hook_instance,
            service_id=spec.id,
            hook=spec.hook,
            patient_id=patient_id,
            called_at=request.app.state.clock(),
            latency_ms=latency_ms,
            cards=[
                repository.CardRecord(m.uuid, m.key, m.topic, m.indicator, ",".join(m.rules))
                for m in result.metas
            ],
        )
    except Exception as exc:
        log.warning(
            "audit row skipped: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "audit-skipped"},
        )


@router.post(
    "/cds-services/{service_id}/feedback",
    responses={**_ERRORS, 503: {"model": models.OperationOutcome, "description": "Not stored"}},
    openapi_extra=_feedback_body_schema(),
    summary="Feedback on cards (accepted / overridden)",
)
async def feedback(service_id: str, request: Request, caller: CallerDep) -> Response:
    spec = _service(service_id)
    settings = settings_of(request)
    data = parse_json(await request.body(), max_depth=settings.max_json_depth)
    body = validate(models.FeedbackRequest, data)
    items = []
    for i, entry in enumerate(body.feedback):
        try:
            outcome_at = datetime.fromisoformat(entry.outcomeTimestamp.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidRequest(
                f"feedback.{i}.outcomeTimestamp: not an ISO 8601 date-time"
            ) from None
        if outcome_at.tzinfo is None:
            raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: a UTC offset is required")
        if entry.outcome == "accepted" and not entry.acceptedSuggestions:
            raise InvalidRequest(f"feedback.{i}: acceptedSuggestions is required when accepted")
        reason = entry.overrideReason.reason if entry.overrideReason else None
        items.append(
            repository.FeedbackRecord(
                service_id=spec.id,
                card_uuid=entry.card,
                outcome=entry.outcome,
                outcome_at=outcome_at.astimezone(UTC),
                accepted_suggestions=[s.id for s in entry.acceptedSuggestions or []],
                reason_system=reason.system if reason else None,
                reason_code=reason.code if reason else None,
                comment=entry.overrideReason.userComment if entry.overrideReason else None,
            )
        )
    try:
        stored, duplicates = await repository.store_feedback(request.app.state.db, items)
    except Exception as exc:
        log.error(
            "feedback not stored: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "503"},
        )
        raise StorageUnavailable("Feedback could not be stored; retry later") from None
    bind(service_id=spec.id, items=len(items), stored=stored, duplicates=duplicates)
    return _json({"stored": stored, "duplicates": duplicates})


@router.post(
    "/cds-services/{service_id}/explain",
    responses=_ERRORS,
    openapi_extra=_hook_body_schema(),
    summary="For integrators: each rule's outcome for this request (off unless enabled)",
)
async def explain(service_id: str, request: Request, caller: CallerDep) -> Response:
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


@router.get("/healthz", summary="Process is up")
async def healthz() -> Response:
    return _json({"status": "ok"})


@router.get("/readyz", summary="Database reachable and knowledge loaded")
async def readyz(request: Request) -> Response:
    db_ok = await request.app.state.db.ping()
    kb_ok = request.app.state.kb is not None
    status = 200 if db_ok and kb_ok else 503
    return _json({"database": db_ok, "knowledge": kb_ok}, status)
