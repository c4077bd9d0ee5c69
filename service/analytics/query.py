"""The one query: each card shown in the period with its latest feedback, streamed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, func, select

from service.analytics.period import midnight
from service.analytics.stats import CardAnalytics, CardRow, add_row
from service.db.database import Database
from service.db.models import CardShown, FeedbackItem


def _statement(start: datetime, end: datetime, scope: tuple[str, str] | None = None) -> Any:
    in_period = and_(CardShown.shown_at >= start, CardShown.shown_at < end)
    if scope is not None:
        in_period = and_(in_period, CardShown.issuer == scope[0], CardShown.tenant == scope[1])
    decided = func.coalesce(FeedbackItem.decided_at, FeedbackItem.outcome_at)
    ranked = (
        select(
            FeedbackItem.card_uuid.label("card_uuid"),
            FeedbackItem.outcome.label("outcome"),
            decided.label("outcome_at"),
            FeedbackItem.override_reason_code.label("reason_code"),
            func.row_number()
            .over(
                partition_by=FeedbackItem.card_uuid,
                order_by=(
                    decided.desc(),
                    FeedbackItem.received_at.desc(),
                    FeedbackItem.id.desc(),
                ),
            )
            .label("rank"),
        )
        .join(CardShown, CardShown.uuid == FeedbackItem.card_uuid)
        .where(in_period)
        .subquery("latest")
    )
    return (
        select(
            CardShown.topic,
            CardShown.rules,
            CardShown.shown_at,
            ranked.c.outcome,
            ranked.c.outcome_at,
            ranked.c.reason_code,
        )
        .outerjoin(ranked, and_(ranked.c.card_uuid == CardShown.uuid, ranked.c.rank == 1))
        .where(in_period)
    )


async def card_rows(
    db: Database, start: date, end: date, scope: tuple[str, str] | None = None
) -> AsyncIterator[CardRow]:
    """Stream the cards shown in [start, end) with their latest feedback; ``scope``: only the
    cards issued to this (issuer, tenant), None for all."""
    async with db.sessions() as session:
        result = await session.stream(
            _statement(midnight(start), midnight(end), scope).execution_options(yield_per=2000)
        )
        async for topic, rules, shown_at, outcome, outcome_at, reason in result:
            yield CardRow(topic, rules, shown_at, outcome, outcome_at, reason)


async def card_analytics(
    db: Database, start: date, end: date, scope: tuple[str, str] | None = None
) -> CardAnalytics:
    """Query and aggregate the period [start, end), one streamed row at a time."""
    report = CardAnalytics(start, end)
    async for row in card_rows(db, start, end, scope):
        add_row(report, row)
    return report
