"""Reads and writes the service makes; each function is one transaction.

Callers decide how to fail: the hook path fails open (cards are still shown), the feedback path
fails closed (503, nothing acknowledged that is not committed).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, bindparam, delete, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from service.db.models import CardShown, FeedbackItem, HookCall, SeenJti, Suppression

if TYPE_CHECKING:
    from service.db.database import Database


@dataclass(frozen=True)
class CardRecord:
    uuid: str
    key: str
    topic: str
    indicator: str
    rules: str
    detail: dict[str, Any] | None = None


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
    decided_at: datetime | None = None
    holds: tuple[dict[str, Any], ...] = ()
    """``suppression`` rows (column values) this item sets, if it is new."""

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


def _insert_ignore(session: AsyncSession):  # type: ignore[no-untyped-def]
    dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
    if dialect == "postgresql":
        return postgresql.insert(FeedbackItem).on_conflict_do_nothing(index_elements=["item_key"])
    if dialect == "sqlite":
        return sqlite.insert(FeedbackItem).on_conflict_do_nothing(index_elements=["item_key"])
    return insert(FeedbackItem)


def _upsert_hold(dialect: str) -> Any:
    """Newer feedback on the same rule key in the same scope replaces the older."""
    table: Any = Suppression.__table__
    statement = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
    keys = ("patient_id", "rule_key", "issuer", "tenant")
    return statement.on_conflict_do_update(
        index_elements=[table.c[k] for k in keys],
        set_={c.name: statement.excluded[c.name] for c in table.c if c.name not in keys},
    )


async def store_feedback(
    db: Database, items: Sequence[FeedbackRecord], now: datetime | None = None
) -> tuple[int, int]:
    """Store every item durably, once, and the holds of each new item. Returns (new rows,
    duplicates). Commits before returning. A retried item never re-applies its holds, so a late
    retry cannot undo newer feedback."""
    now = now or db.clock()
    stored = 0
    async with db.sessions() as session, session.begin():
        statement = _insert_ignore(session).returning(FeedbackItem.id)
        dialect = session.bind.dialect.name if session.bind is not None else "sqlite"
        upsert = _upsert_hold(dialect)
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
                    "decided_at": item.decided_at,
                },
            )
            if result.first() is not None:
                stored += 1
                for hold in item.holds:
                    await session.execute(upsert, {**hold, "received_at": now})
    return stored, len(items) - stored


async def issued_cards(db: Database, uuids: Sequence[str]) -> list[dict[str, Any]]:
    """The cards with these uuids the service issued (one primary-key read each)."""
    if not uuids:
        return []
    async with db.sessions() as session:
        rows = await session.execute(
            select(
                CardShown.uuid,
                CardShown.issuer,
                CardShown.tenant,
                CardShown.patient_id,
                CardShown.shown_at,
                CardShown.detail,
            ).where(CardShown.uuid.in_(list(uuids)))
        )
        return [dict(row._mapping) for row in rows]


# --- Set-at-a-time statements for the group-commit writer (service/db/batch.py) ---------------
# Each takes an open connection inside the caller's transaction and handles many calls' rows at
# once: one round trip for N calls instead of N.


@dataclass(frozen=True)
class AuditRecord:
    """One hook call's audit row and the cards it showed."""

    hook_instance: str
    service_id: str
    hook: str
    patient_id: str | None
    called_at: datetime
    latency_ms: float
    cards: tuple[CardRecord, ...]
    issuer: str = ""
    tenant: str = ""


HoldRows = dict[tuple[str, str, str], dict[str, dict[str, Any]]]
"""(issuer, tenant, patient) → rule key → the ``suppression`` row."""


def _claim_statement(insert_for_dialect: Any) -> Any:
    table = SeenJti.__table__
    statement = insert_for_dialect(table)
    return statement.on_conflict_do_update(
        index_elements=[table.c.iss, table.c.jti],
        set_={"expires_at": statement.excluded.expires_at},
        where=table.c.expires_at < bindparam("now"),
    ).returning(table.c.iss, table.c.jti)


# Built once: constructing a statement costs more CPU than running it in a batch.
_CLAIM = {
    "postgresql": _claim_statement(postgresql.insert),
    "sqlite": _claim_statement(sqlite.insert),
}
_HOLDS_FOR_PATIENTS = select(Suppression).where(
    Suppression.patient_id.in_(bindparam("patients", expanding=True)),
    Suppression.rule_key.in_(bindparam("keys", expanding=True)),
)
_INSERT_HOOK_CALLS = insert(HookCall).returning(HookCall.id, sort_by_parameter_order=True)
_INSERT_CARDS = insert(CardShown)


# The three statements of the group-commit writer (service/db/batch.py) take a sync connection:
# the writer runs a whole round in one go (in its thread on SQLite, ``run_sync`` on PostgreSQL).


def claim_jtis(
    connection: Connection, claims: Sequence[tuple[str, str, datetime]], now: datetime
) -> set[tuple[str, str]]:
    """Insert ``(iss, jti, expires_at)`` rows; returns the pairs this statement claimed first.

    One ``INSERT ... ON CONFLICT DO UPDATE ... WHERE expired RETURNING``: a pair comes back only if
    it was new or its earlier token had expired. Pairs must be distinct within one call.
    """
    if not claims:
        return set()
    result = connection.execute(
        _CLAIM[connection.dialect.name],
        [{"iss": i, "jti": j, "expires_at": e, "now": now} for i, j, e in claims],
    )
    return {(row[0], row[1]) for row in result}


def holds_for_patients(
    connection: Connection, patient_ids: Sequence[str], keys: Sequence[str]
) -> HoldRows:
    """The latest feedback on these rule keys of these patients, per scope: a primary-key range
    read of the ``suppression`` table, never the patient's card history."""
    found: HoldRows = {}
    if not patient_ids or not keys:
        return found
    rows = connection.execute(
        _HOLDS_FOR_PATIENTS, {"patients": list(patient_ids), "keys": list(keys)}
    )
    for row in rows:
        values = dict(row._mapping)
        scope = (values["issuer"], values["tenant"], values["patient_id"])
        found.setdefault(scope, {})[values["rule_key"]] = values
    return found


def insert_audits(connection: Connection, audits: Sequence[AuditRecord]) -> None:
    """Audit rows and their card rows for many calls, two statements in all."""
    if not audits:
        return
    result = connection.execute(
        _INSERT_HOOK_CALLS,
        [
            {
                "hook_instance": a.hook_instance,
                "service_id": a.service_id,
                "hook": a.hook,
                "patient_id": a.patient_id,
                "called_at": a.called_at,
                "latency_ms": a.latency_ms,
                "card_count": len(a.cards),
            }
            for a in audits
        ],
    )
    ids = list(result.scalars())
    cards = [
        {
            "uuid": card.uuid,
            "hook_call_id": call_id,
            "service_id": audit.service_id,
            "patient_id": audit.patient_id,
            "card_key": card.key,
            "topic": card.topic,
            "indicator": card.indicator,
            "rules": card.rules,
            "shown_at": audit.called_at,
            "issuer": audit.issuer,
            "tenant": audit.tenant,
            "detail": card.detail,
        }
        for audit, call_id in zip(audits, ids, strict=True)
        for card in audit.cards
    ]
    if cards:
        connection.execute(_INSERT_CARDS, cards)


# --- retention (``sleep-cds purge``) -----------------------------------------------------------


@dataclass
class PurgeCounts:
    hook_calls: int = 0
    cards: int = 0
    feedback: int = 0
    holds: int = 0
    jtis: int = 0


async def _delete_in_chunks(db: Database, table: Any, key: Any, where: Any, chunk: int) -> int:
    """Delete matching rows ``chunk`` at a time, one short transaction each, so a purge never
    holds a long lock on a table the hook path writes."""
    total = 0
    while True:
        async with db.sessions() as session, session.begin():
            ids = (await session.execute(select(key).where(where).limit(chunk))).scalars().all()
            if not ids:
                return total
            await session.execute(delete(table).where(key.in_(ids)))
        total += len(ids)


async def purge(db: Database, cutoff: datetime, now: datetime, chunk: int = 2000) -> PurgeCounts:
    """Delete audit rows and cards shown before ``cutoff`` with their feedback, holds that have
    ended, and expired JWT ids. Holds still in force are kept whatever their age: they are the
    feedback suppression needs (and they never reference a purged row)."""
    counts = PurgeCounts()
    old_cards = select(CardShown.uuid).where(CardShown.shown_at < cutoff)
    counts.feedback = await _delete_in_chunks(
        db, FeedbackItem, FeedbackItem.id, FeedbackItem.card_uuid.in_(old_cards), chunk
    )
    counts.cards = await _delete_in_chunks(
        db, CardShown, CardShown.uuid, CardShown.shown_at < cutoff, chunk
    )
    counts.hook_calls = await _delete_in_chunks(
        db, HookCall, HookCall.id, HookCall.called_at < cutoff, chunk
    )
    async with db.sessions() as session, session.begin():
        result = await session.execute(delete(Suppression).where(Suppression.until < now))
        counts.holds = int(getattr(result, "rowcount", 0) or 0)
        result = await session.execute(delete(SeenJti).where(SeenJti.expires_at < now))
        counts.jtis = int(getattr(result, "rowcount", 0) or 0)
    return counts
