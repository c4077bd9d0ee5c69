"""Alert-fatigue control: whether feedback on an earlier card hides the same card now.

A card's key is stable while its evidence is unchanged (``cards.card_key``), so new evidence
(a newer or lower lab, a new drug, a new symptom, a red flag) always shows at once. The windows
come from the policy file; this module holds only the logic.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from service.knowledge import schema

LATEST = datetime.max.replace(tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)
"""How far a client's ``outcomeTimestamp`` may lie after receipt, or before the card was issued."""


def later(start: datetime, span: timedelta) -> datetime:
    """``start + span`` that saturates at the end of the datetime range instead of overflowing."""
    try:
        return start + span
    except OverflowError:
        return LATEST if span >= timedelta(0) else datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class PriorFeedback:
    outcome: str
    outcome_at: datetime
    reason_code: str | None


def suppressed_until(
    policy: schema.Policy, indicator: str, prior: PriorFeedback
) -> datetime | None:
    """When feedback stops hiding a card with this indicator; None if it never hides it."""
    if prior.outcome == "accepted":
        return later(prior.outcome_at, timedelta(days=policy.accepted_suppress_days))
    if prior.outcome != "overridden":
        return None
    windows = {r.code: r.suppress_days for r in policy.override_reasons}
    days = windows.get(prior.reason_code or "", policy.unknown_reason_suppress_days)
    until = later(prior.outcome_at, timedelta(days=days))
    if indicator == "critical":
        # A red flag is never hidden by an override older than a day.
        until = min(
            until, later(prior.outcome_at, timedelta(hours=policy.critical_override_max_hours))
        )
    return until


def is_suppressed(
    policy: schema.Policy, indicator: str, history: list[PriorFeedback], now: datetime
) -> bool:
    """The newest feedback on the same card key decides."""
    if not history:
        return False
    latest = max(history, key=lambda f: f.outcome_at)
    until = suppressed_until(policy, indicator, latest)
    return until is not None and now < until
