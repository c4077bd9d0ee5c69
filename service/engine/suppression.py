"""Alert-fatigue control: which rules earlier feedback still hides, and for how long.

Feedback is trusted only as far as it can be checked (docs/security.md §Feedback):

* It acts on **rules**, not cards. An override holds every rule of the card it names; an
  acceptance holds only the rules whose suggestion was accepted. A merged card is rebuilt from the
  rules still due, so unrelated advice stays.
* A rule's key (``cards.rule_key``) is stable while its evidence is unchanged, so new or worse
  evidence shows the advice again at once.
* Holds are scoped to (issuer, tenant, patient): one EHR's feedback never changes what another
  EHR's clinicians see. Local mode is one scope.
* Windows start when the service received the feedback (or the client's earlier time, never before
  the card was issued). A critical card is never held more than ``critical_override_max_hours``.
  An accepted order holds until that order is seen in the record; an accepted "remove this draft"
  never holds while the same drug is still among the draft orders.

The windows come from the policy file; this module holds only the logic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from service.knowledge import schema

LATEST = datetime.max.replace(tzinfo=UTC)
EARLIEST = datetime.min.replace(tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)
"""How far a client's ``outcomeTimestamp`` may lie after receipt, or before the card was issued."""


def later(start: datetime, span: timedelta) -> datetime:
    """``start + span`` that saturates at the end of the datetime range instead of overflowing."""
    try:
        return start + span
    except OverflowError:
        return LATEST if span >= timedelta(0) else EARLIEST


@dataclass(frozen=True)
class Scope:
    """Whose feedback: the calling issuer and tenant (empty strings in local mode), the patient."""

    issuer: str
    tenant: str
    patient_id: str


@dataclass(frozen=True)
class RuleRef:
    """One rule of an issued card: ``rule`` is ``id@version``, ``key`` its evidence fingerprint."""

    rule: str
    key: str
    indicator: str


@dataclass(frozen=True)
class SuggestionRef:
    """One suggestion of an issued card and what accepting it asks for."""

    uuid: str
    rules: tuple[str, ...]
    """The rules (``id@version``) whose advice this suggestion carries."""
    creates: tuple[str, ...] = ()
    """``system|code`` of the orders it creates."""
    deletes: tuple[str, ...] = ()
    """Draft references it removes and the ``system|code`` of those drafts' drugs."""


@dataclass(frozen=True)
class IssuedCard:
    """What the service remembers of a card it returned, to check feedback against."""

    uuid: str
    scope: Scope
    shown_at: datetime
    rules: tuple[RuleRef, ...]
    suggestions: tuple[SuggestionRef, ...] = ()

    def detail(self) -> dict[str, Any]:
        """The JSON kept in ``card_shown.detail``."""
        return {
            "rules": [[r.rule, r.key, r.indicator] for r in self.rules],
            "suggestions": [
                [s.uuid, list(s.rules), list(s.creates), list(s.deletes)] for s in self.suggestions
            ],
        }

    @classmethod
    def from_detail(
        cls, uuid: str, scope: Scope, shown_at: datetime, detail: dict[str, Any]
    ) -> IssuedCard:
        return cls(
            uuid=uuid,
            scope=scope,
            shown_at=shown_at,
            rules=tuple(RuleRef(*r) for r in detail.get("rules", [])),
            suggestions=tuple(
                SuggestionRef(s[0], tuple(s[1]), tuple(s[2]), tuple(s[3]))
                for s in detail.get("suggestions", [])
            ),
        )


@dataclass(frozen=True)
class Hold:
    """The latest feedback on one rule key in one scope: it hides that rule until ``until``."""

    rule_key: str
    rule: str
    card_uuid: str
    outcome: str
    reason_code: str | None
    starts_at: datetime
    until: datetime
    until_ordered: tuple[str, ...] = ()
    """Accepted orders (``system|code``): the hold ends once one of them is in the record."""
    unless_drafted: tuple[str, ...] = ()
    """Accepted removals (draft refs, ``system|code``): no hold while one is still a draft."""


def window_start(received: datetime, reported: datetime, issued: datetime) -> datetime:
    """Receipt, or the client's earlier time, but never before the card was issued."""
    return min(received, max(reported, issued))


def timestamp_problem(received: datetime, reported: datetime, issued: datetime | None) -> str:
    """Why a client's ``outcomeTimestamp`` cannot be true ("" when it can)."""
    if reported > later(received, CLOCK_SKEW):
        return "more than 5 minutes after the service's clock"
    if issued is not None and reported < later(issued, -CLOCK_SKEW):
        return "more than 5 minutes before the card was issued"
    return ""


def _critical_cap(policy: schema.Policy, starts_at: datetime) -> datetime:
    return later(starts_at, timedelta(hours=policy.critical_override_max_hours))


def holds_for(
    policy: schema.Policy,
    card: IssuedCard,
    outcome: str,
    reason_code: str | None,
    accepted: Iterable[str],
    starts_at: datetime,
) -> list[Hold]:
    """The holds one feedback item on ``card`` creates (one per rule it covers)."""
    if outcome == "overridden":
        windows = {r.code: r.suppress_days for r in policy.override_reasons}
        days = windows.get(reason_code or "", policy.unknown_reason_suppress_days)
        holds = []
        for ref in card.rules:
            until = later(starts_at, timedelta(days=days))
            if ref.indicator == "critical":
                until = min(until, _critical_cap(policy, starts_at))
            holds.append(Hold(ref.key, ref.rule, card.uuid, outcome, reason_code, starts_at, until))
        return holds
    if outcome != "accepted":
        return []
    wanted = set(accepted)
    creates: dict[str, set[str]] = {}
    deletes: dict[str, set[str]] = {}
    for suggestion in card.suggestions:
        if suggestion.uuid not in wanted:
            continue
        for rule in suggestion.rules:
            creates.setdefault(rule, set()).update(suggestion.creates)
            deletes.setdefault(rule, set()).update(suggestion.deletes)
    holds = []
    for ref in card.rules:
        if ref.rule not in creates:
            continue
        until = later(starts_at, timedelta(days=policy.accepted_suppress_days))
        if ref.indicator == "critical":
            until = min(until, _critical_cap(policy, starts_at))
        holds.append(
            Hold(
                ref.key,
                ref.rule,
                card.uuid,
                outcome,
                None,
                starts_at,
                until,
                until_ordered=tuple(sorted(creates[ref.rule])),
                unless_drafted=tuple(sorted(deletes[ref.rule])),
            )
        )
    return holds


@dataclass(frozen=True)
class Seen:
    """What the current record shows of orders: draft refs and the codes of drafts and drugs."""

    draft_refs: frozenset[str] = frozenset()
    draft_codes: frozenset[str] = frozenset()
    ordered_codes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Verdict:
    hidden: bool
    until: datetime | None = None
    why: str = ""


def judge(
    policy: schema.Policy, hold: Hold | None, indicator: str, seen: Seen, now: datetime
) -> Verdict:
    """Whether ``hold`` still hides a rule now, and if so until when and why."""
    if hold is None:
        return Verdict(False)
    until = hold.until
    if indicator == "critical":
        until = min(until, _critical_cap(policy, hold.starts_at))
    if now >= until:
        return Verdict(False)
    if hold.unless_drafted and (
        seen.draft_refs.intersection(hold.unless_drafted)
        or seen.draft_codes.intersection(hold.unless_drafted)
    ):
        return Verdict(False)  # the drug the clinician agreed to remove is still being ordered
    if hold.until_ordered and (
        seen.draft_codes.intersection(hold.until_ordered)
        or seen.ordered_codes.intersection(hold.until_ordered)
    ):
        return Verdict(False)  # the accepted order is in the record: the rules judge afresh
    if hold.outcome == "overridden":
        why = f"overridden ({hold.reason_code or 'no reason given'})"
    elif hold.until_ordered:
        why = "suggestion accepted; hidden until the order appears in the record"
    else:
        why = "suggestion accepted"
    return Verdict(True, until, why)
