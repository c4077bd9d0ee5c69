"""Reads and writes the service makes; each function is one transaction.

Callers decide how to fail: the hook path fails open (cards are still shown), the feedback path
fails closed (503, nothing acknowledged that is not committed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.database import Database
from service.db.models import CardShown, FeedbackItem, HookCall


@dataclass(frozen=True)
class CardRecord:
    uuid: str
    key: str
    topic: str
    indicator: str
    rules: str


@dataclass(frozen=True)
class FeedbackRecord:
    service_id: str
    card_uuid: str
    outcome: str
    outcome_at: datetime
    accepted_suggestions: list[str]
    reason_system: str | None
    reason_code: str | None
    comment: str | None

    def key(self) -> str:
        """Idempotency key: the same item sent twice is the same row."""
        payload = orjson.dumps(
            [
                self.service_id,
                self.card_uuid,
                self.outcome,
                self.outcome_at.isoformat(),
                sorted(self.accepted_suggestions),
                self.reason_system,
                self.reason_code,
                self.comment,
            ]
        )
        return hashlib.sha256(payload).hexdigest()


async def record_hook_call(
    db: Database,
    *,
    hook_instance: str,
    service_id: str,
    hook: str,
    patient_id: str | None,
    called_at: datetime,
    latency_ms: float,
    cards: Sequence[CardRecord],
) -> None:
    async with db.sessions() as session, session.begin():
        call = HookCall(
            hook_instance=hook_instance,
            service_id=service_id,
            hook=hook,
            patient_id=patient_id,
            called_at=called_at,
            latency_ms=latency_ms,
            card_count=len(cards),
        )
        session.add(call)
        await session.flush()
        for card in cards:
            session.add(
                CardShown(
                    uuid=card.uuid,
                    hook_call_id=call.id,
                    service_id=service_id,
                    patient_id=patient_id,
                    card_key=card.key,
                    topic=card.topic,
                    indicator=card.indicator,
                    rules=card.rules,
                    shown_at=called_at,
                )
            )


def _insert_ignore(session: AsyncSession):  # type: ignore[no-untyped-def]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "postgresql":
        return postgresql.insert(FeedbackItem).on_conflict_do_nothing(index_elements=["item_key"])
    if dialect == "sqlite":
        return sqlite.insert(FeedbackItem).on_conflict_do_nothing(index_elements=["item_key"])
    return insert(FeedbackItem)


async def store_feedback(db: Database, items: Sequence[FeedbackRecord]) -> tuple[int, int]:
    """Store every item durably, once. Returns (new rows, duplicates). Commits before returning."""
    now = datetime.now(UTC)
    stored = 0
    async with db.sessions() as session, session.begin():
        statement = _insert_ignore(session).returning(FeedbackItem.id)
        for item in items:
            result = await session.execute(
                statement,
                {
                    "item_key": item.key(),
                    "service_id": item.service_id,
                    "card_uuid": item.card_uuid,
                    "outcome": item.outcome,
                    "outcome_at": item.outcome_at,
                    "accepted_suggestions": item.accepted_suggestions,
                    "override_reason_system": item.reason_system,
                    "override_reason_code": item.reason_code,
                    "override_comment": item.comment,
                    "received_at": now,
                },
            )
            if result.first() is not None:
                stored += 1
    return stored, len(items) - stored


async def feedback_count(db: Database) -> int:
    async with db.sessions() as session:
        rows = await session.execute(select(FeedbackItem.id))
        return len(rows.all())


async def feedback_by_card_key(
    db: Database, patient_id: str, keys: Sequence[str]
) -> dict[str, list[tuple[str, datetime, str | None]]]:
    """Feedback on earlier cards of this patient with these keys: key → (outcome, when, reason)."""
    if not keys:
        return {}
    statement = (
        select(
            CardShown.card_key,
            FeedbackItem.outcome,
            FeedbackItem.outcome_at,
            FeedbackItem.override_reason_code,
        )
        .join(FeedbackItem, FeedbackItem.card_uuid == CardShown.uuid)
        .where(CardShown.patient_id == patient_id, CardShown.card_key.in_(list(keys)))
    )
    found: dict[str, list[tuple[str, datetime, str | None]]] = {}
    async with db.sessions() as session:
        for key, outcome, outcome_at, reason in (await session.execute(statement)).all():
            found.setdefault(key, []).append((outcome, outcome_at, reason))
    return found
