"""Feedback you can trust: checking feedback against issued cards, and applying its holds.

The hook path asks :func:`visible` which rules earlier feedback still hides in the caller's
(issuer, tenant, patient) scope and rebuilds merged cards from the rules still due. The feedback
endpoint (:func:`receive`) accepts an item only if it names a card this service issued to the same
issuer and tenant, with suggestion ids that card carried; anything else is answered as ignored and
never stored. Items per request and per issuer per minute are bounded. The trust model is in
docs/security.md §Feedback.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service import metrics
from service.api.context import AppContext
from service.api.deps import Caller
from service.cdshooks import models
from service.db import repository
from service.engine.cards import CardMeta, rule_key
from service.engine.pipeline import HookResult
from service.engine.record import PatientRecord
from service.engine.suppression import (
    Hold,
    IssuedCard,
    Scope,
    Seen,
    Verdict,
    holds_for,
    judge,
    timestamp_problem,
    window_start,
)
from service.errors import InvalidRequest, StorageUnavailable, TooManyRequests
from service.logging import bind

log = logging.getLogger("service.api")

ISSUED_CACHE = 20_000
"""Cards remembered in process until their audit row is surely written (feedback may arrive
before the background audit write commits)."""


def scope_of(caller: Caller | None, patient_id: str) -> Scope:
    """Local mode is one scope (empty issuer and tenant)."""
    if caller is None:
        return Scope("", "", patient_id)
    return Scope(caller.iss, caller.tenant or "", patient_id)


class IssuedCards:
    """Recently issued cards by uuid, bounded (oldest forgotten first)."""

    def __init__(self, size: int = ISSUED_CACHE) -> None:
        self._cards: OrderedDict[str, IssuedCard] = OrderedDict()
        self._size = size

    def add(self, card: IssuedCard) -> None:
        self._cards[card.uuid] = card
        while len(self._cards) > self._size:
            self._cards.popitem(last=False)

    def get(self, uuid: str) -> IssuedCard | None:
        return self._cards.get(uuid)


class RateLimit:
    """Feedback items per issuer per minute (token bucket, per process)."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, issuer: str, n: int) -> bool:
        now = self._clock()
        tokens, at = self._buckets.get(issuer, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        if tokens < n:
            self._buckets[issuer] = (tokens, now)
            return False
        self._buckets[issuer] = (tokens - n, now)
        return True


@dataclass
class FeedbackMemory:
    """What this process remembers between calls: cards just issued, and the rate buckets."""

    limit: RateLimit | None = None
    issued: IssuedCards = field(default_factory=IssuedCards)


# --- the hook path ---------------------------------------------------------------------------


def _seen(record: PatientRecord) -> Seen:
    """Orders the record shows: drafts (order hooks), active medications, and studies ordered or
    done (the ServiceRequest/Procedure/DiagnosticReport prefetch keys, when the EHR sends them)."""
    draft_codes = {f"{s}|{c}" for d in record.drafts for s, c in d.concept.codings}
    ordered = {f"{s}|{c}" for m in record.medications for s, c in m.concept.codings}
    ordered |= {f"{s}|{c}" for p in record.procedures for s, c in p.concept.codings}
    return Seen(frozenset(d.ref for d in record.drafts), frozenset(draft_codes), frozenset(ordered))


def _hold(row: dict[str, Any]) -> Hold:
    return Hold(
        rule_key=row["rule_key"],
        rule=row["rule"],
        card_uuid=row["card_uuid"],
        outcome=row["outcome"],
        reason_code=row["reason_code"],
        starts_at=row["starts_at"],
        until=row["until"],
        until_ordered=tuple(row["until_ordered"] or ()),
        unless_drafted=tuple(row["unless_drafted"] or ()),
    )


async def hidden_rules(
    context: AppContext, scope: Scope, result: HookResult
) -> dict[str, tuple[str, Verdict]] | None:
    """Fired rules earlier feedback still hides: rule id → (topic, verdict). None when the
    feedback could not be read (the caller shows every card: fail open)."""
    fired = [o for o in result.outcomes if o.status == "fired"]
    if not fired:
        return {}
    keys = {o.rule.id: rule_key(o) for o in fired}
    try:
        async with asyncio.timeout(context.settings.db_read_deadline_s):
            rows = await context.db.group_commit.holds(
                (scope.issuer, scope.tenant, scope.patient_id), sorted(set(keys.values()))
            )
    except Exception as exc:
        metrics.DB_ERRORS.labels(operation="suppression").inc()
        log.warning(
            "suppression skipped: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "suppression-skipped"},
        )
        return None
    if not rows:
        return {}
    try:
        now = context.clock()
        policy = context.kb.policy
        seen = _seen(result.record)
        hidden: dict[str, tuple[str, Verdict]] = {}
        for outcome in fired:
            row = rows.get(keys[outcome.rule.id])
            indicator = outcome.indicator or outcome.rule.card.indicator
            verdict = judge(policy, _hold(row) if row else None, indicator, seen, now)
            if verdict.hidden:
                hidden[outcome.rule.id] = (outcome.rule.topic, verdict)
        return hidden
    except Exception as exc:  # a bug or odd row in the suppression logic never hides a card
        log.error(
            "suppression skipped: %s", type(exc).__name__, extra={"outcome": "suppression-skipped"}
        )
        return None


async def visible(
    context: AppContext, caller: Caller | None, patient_id: str, result: HookResult
) -> tuple[list[dict[str, Any]], list[CardMeta], dict[str, tuple[str, Verdict]]]:
    """The cards to show: merged cards rebuilt from the rules still due. Remembers them as
    issued to this scope, so feedback on them is recognised at once."""
    scope = scope_of(caller, patient_id)
    cards, metas = result.cards, result.metas
    hidden = await hidden_rules(context, scope, result) if result.cards else {}
    if hidden:
        kept = [o for o in result.outcomes if o.rule.id not in hidden]
        cards, metas = context.pipeline.composer.compose(result.record, kept)
        topics = {m.topic for m in metas}
        bind(suppressed=len({m.topic for m in result.metas} - topics), suppressed_rules=len(hidden))
    issued = context.feedback.issued
    now = context.clock()
    for meta in metas:
        issued.add(IssuedCard(meta.uuid, scope, now, meta.rule_refs, meta.suggestion_refs))
    return cards, metas, hidden or {}


def card_detail(meta: CardMeta) -> dict[str, Any]:
    return IssuedCard(
        meta.uuid, Scope("", "", ""), datetime.now(UTC), meta.rule_refs, meta.suggestion_refs
    ).detail()


# --- the feedback endpoint -------------------------------------------------------------------


async def _issued(context: AppContext, uuids: list[str]) -> dict[str, IssuedCard]:
    """The issued cards among ``uuids``: this process's recent cards, then the audit trail, read
    once more after a short wait for cards another replica may still be writing."""
    issued = context.feedback.issued
    found = {u: card for u in uuids if (card := issued.get(u)) is not None}
    missing = [u for u in uuids if u not in found]
    for attempt in range(2):
        if not missing:
            break
        if attempt:
            await asyncio.sleep(context.settings.feedback_confirm_wait_s)
        for row in await repository.issued_cards(context.db, missing):
            if row["detail"] is None:
                continue  # issued before feedback was checked: not usable for suppression
            scope = Scope(row["issuer"], row["tenant"], row["patient_id"] or "")
            found[row["uuid"]] = IssuedCard.from_detail(
                row["uuid"], scope, row["shown_at"], row["detail"]
            )
        missing = [u for u in uuids if u not in found]
    return found


def _hold_row(scope: Scope, hold: Hold) -> dict[str, Any]:
    """The ``suppression`` row (column values) of one hold."""
    return {
        "patient_id": scope.patient_id,
        "rule_key": hold.rule_key,
        "issuer": scope.issuer,
        "tenant": scope.tenant,
        "rule": hold.rule,
        "card_uuid": hold.card_uuid,
        "outcome": hold.outcome,
        "reason_code": hold.reason_code,
        "starts_at": hold.starts_at,
        "until": hold.until,
        "until_ordered": list(hold.until_ordered),
        "unless_drafted": list(hold.unless_drafted),
    }


def _parse_time(i: int, value: str) -> datetime:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: not an ISO 8601 date-time") from None
    if when.tzinfo is None:
        raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: a UTC offset is required")
    try:
        return when.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: out of range") from None


async def receive(
    context: AppContext, service_id: str, caller: Caller | None, body: models.FeedbackRequest
) -> dict[str, Any]:
    """Check, store and apply feedback; the acknowledgement body."""
    entries = body.feedback
    own = scope_of(caller, "")
    _admit(context, service_id, own.issuer, len(entries))
    received = context.clock()
    reported = [_parse_time(i, e.outcomeTimestamp) for i, e in enumerate(entries)]
    for i, entry in enumerate(entries):
        if entry.outcome == "accepted" and not entry.acceptedSuggestions:
            raise InvalidRequest(f"feedback.{i}: acceptedSuggestions is required when accepted")
        problem = timestamp_problem(received, reported[i], None)
        if problem:
            raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: {problem}")
    try:
        cards = await _issued(context, list(dict.fromkeys(e.card for e in entries)))
    except Exception as exc:
        raise _database_down(service_id, len(entries), "checked", exc) from None
    items, ignored = _records(context, service_id, own, entries, cards, received, reported)
    stored, duplicates = await _store(context, service_id, items, received)
    bind(items=len(entries), stored=stored, duplicates=duplicates, ignored=len(ignored))
    metrics.observe_feedback(
        service_id,
        stored=stored,
        duplicates=duplicates,
        outcomes=[i.outcome for i in items],
        ignored=len(ignored),
    )
    return {"stored": stored, "duplicates": duplicates, "ignored": ignored}


def _admit(context: AppContext, service_id: str, issuer: str, count: int) -> None:
    """Refuse a request over the per-request item limit or the issuer's per-minute budget."""
    settings = context.settings
    if count > settings.feedback_max_items:
        raise InvalidRequest(
            f"feedback: at most {settings.feedback_max_items} items per request (got {count})"
        )
    limit = context.feedback.limit
    if limit is not None and not limit.take(issuer, count):
        metrics.observe_feedback_throttled(service_id, count)
        raise TooManyRequests(
            f"feedback: more than {settings.feedback_rate_per_minute} items per minute from "
            "this issuer; retry later"
        )


def _records(
    context: AppContext,
    service_id: str,
    own: Scope,
    entries: list[models.FeedbackEntry],
    cards: dict[str, IssuedCard],
    received: datetime,
    reported: list[datetime],
) -> tuple[list[repository.FeedbackRecord], list[dict[str, Any]]]:
    """The items to store (with the holds each applies) and the ones ignored, with why."""
    policy = context.kb.policy
    items: list[repository.FeedbackRecord] = []
    ignored: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        card = cards.get(entry.card)
        if card is None or (card.scope.issuer, card.scope.tenant) != (own.issuer, own.tenant):
            ignored.append({"item": i, "card": entry.card, "reason": "unknown-card"})
            continue
        problem = timestamp_problem(received, reported[i], card.shown_at)
        if problem:
            raise InvalidRequest(f"feedback.{i}.outcomeTimestamp: {problem}")
        accepted = [s.id for s in entry.acceptedSuggestions or []]
        known = {s.uuid for s in card.suggestions}
        unknown = [s for s in accepted if s not in known]
        if unknown:
            ignored.append({"item": i, "card": entry.card, "reason": "unknown-suggestion"})
            continue
        starts = window_start(received, reported[i], card.shown_at)
        reason = entry.overrideReason.reason if entry.overrideReason else None
        holds = holds_for(
            policy, card, entry.outcome, reason.code if reason else None, accepted, starts
        )
        items.append(
            repository.FeedbackRecord(
                service_id=service_id,
                card_uuid=entry.card,
                outcome=entry.outcome,
                outcome_at=reported[i],
                accepted_suggestions=accepted,
                reason_system=reason.system if reason else None,
                reason_code=reason.code if reason else None,
                comment=entry.overrideReason.userComment if entry.overrideReason else None,
                decided_at=starts,
                holds=tuple(_hold_row(card.scope, h) for h in holds),
            )
        )
    return items, ignored


async def _store(
    context: AppContext,
    service_id: str,
    items: list[repository.FeedbackRecord],
    received: datetime,
) -> tuple[int, int]:
    """(stored, duplicates); ``StorageUnavailable`` (503) when the database fails."""
    if not items:
        return 0, 0
    try:
        return await repository.store_feedback(context.db, items, received)
    except Exception as exc:
        raise _database_down(service_id, len(items), "stored", exc) from None


def _database_down(service_id: str, count: int, step: str, exc: Exception) -> StorageUnavailable:
    """Count and log a feedback request the database failed at ``step``; the 503 to raise."""
    metrics.observe_feedback_failed(service_id, count)
    log.error(
        f"feedback not {step}: database unavailable",
        extra={"error_type": type(exc).__name__, "outcome": "503"},
    )
    return StorageUnavailable(f"Feedback could not be {step}; retry later")
