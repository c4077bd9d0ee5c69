"""Tables: what the service must remember across requests, replicas and restarts.

Tokens and prefetch contents are never stored. Feedback, one audit row per hook call, the cards
each call showed (so feedback is checked against the card it answers), the latest feedback per
rule key (what suppression reads) and seen JWT ids.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JsonType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class HookCall(Base):
    """One audit row per hook call."""

    __tablename__ = "hook_call"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    hook_instance: Mapped[str] = mapped_column(String(128), index=True)
    service_id: Mapped[str] = mapped_column(String(64))
    hook: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    called_at: Mapped[datetime] = mapped_column(UTCDateTime())
    latency_ms: Mapped[float] = mapped_column(Float)
    card_count: Mapped[int] = mapped_column(Integer)


class CardShown(Base):
    """A card the service returned; ``card_key`` is stable across calls for the same evidence."""

    __tablename__ = "card_shown"

    uuid: Mapped[str] = mapped_column(String(64), primary_key=True)
    hook_call_id: Mapped[int | None] = mapped_column(
        ForeignKey("hook_call.id", ondelete="SET NULL"), index=True
    )
    service_id: Mapped[str] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(128))
    card_key: Mapped[str] = mapped_column(String(64))
    topic: Mapped[str] = mapped_column(String(64))
    indicator: Mapped[str] = mapped_column(String(16))
    rules: Mapped[str] = mapped_column(String(512))
    shown_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    issuer: Mapped[str] = mapped_column(String(512), server_default="")
    """The calling issuer (JWT ``iss``) and tenant; empty in local mode and on older rows."""
    tenant: Mapped[str] = mapped_column(String(256), server_default="")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    """Rules and suggestions of the card (``suppression.IssuedCard.detail``): what feedback on
    it may hold. Null on rows written before feedback was checked against issued cards."""

    __table_args__ = (Index("ix_card_shown_patient_key", "patient_id", "card_key"),)


class FeedbackItem(Base):
    """One feedback item, stored once however often the client retries it."""

    __tablename__ = "feedback_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    item_key: Mapped[str] = mapped_column(String(64), unique=True)
    service_id: Mapped[str] = mapped_column(String(64))
    card_uuid: Mapped[str] = mapped_column(String(128), index=True)
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_at: Mapped[datetime] = mapped_column(UTCDateTime())
    accepted_suggestions: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    override_reason_system: Mapped[str | None] = mapped_column(String(256))
    override_reason_code: Mapped[str | None] = mapped_column(String(64))
    override_comment: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """The decision time analytics use: the client's time clamped to [card issued, received]."""


class Suppression(Base):
    """The latest feedback per (patient, rule key, issuer, tenant): all the hook path reads.

    One row per rule and evidence that feedback ever held, replaced by newer feedback, so the
    lookup costs the same whatever the patient's history (it never reads ``card_shown``).
    """

    __tablename__ = "suppression"

    patient_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    rule_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(512), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(256), primary_key=True)
    rule: Mapped[str] = mapped_column(String(128))
    card_uuid: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))
    reason_code: Mapped[str | None] = mapped_column(String(64))
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime())
    until: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    until_ordered: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    unless_drafted: Mapped[list[Any]] = mapped_column(JsonType, default=list)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SeenJti(Base):
    """JWT ids already accepted, kept until the token expires (replay protection)."""

    __tablename__ = "seen_jti"

    iss: Mapped[str] = mapped_column(String(512), primary_key=True)
    jti: Mapped[str] = mapped_column(String(256), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
