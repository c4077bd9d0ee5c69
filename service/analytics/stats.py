"""Counting cards shown, accepted and overridden per level and ISO week (pure, no I/O)."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime

from service.analytics.period import monday, weeks_of

TOP_REASONS = 3
NO_REASON = "(no reason given)"


@dataclass(frozen=True)
class CardRow:
    """One card shown and its latest feedback (outcome None: no feedback yet)."""

    topic: str
    rules: str
    shown_at: datetime
    outcome: str | None = None
    outcome_at: datetime | None = None
    reason_code: str | None = None


@dataclass
class Week:
    shown: int = 0
    accepted: int = 0
    overridden: int = 0


@dataclass
class Stats:
    """Counts for one level (overall, a topic, or a rule) over the period and per week."""

    shown: int = 0
    accepted: int = 0
    overridden: int = 0
    reasons: Counter[str | None] = field(default_factory=Counter)
    decision_seconds: list[float] = field(default_factory=list)
    weekly: dict[date, Week] = field(default_factory=dict)

    def add(self, row: CardRow) -> None:
        week = self.weekly.setdefault(monday(row.shown_at.date()), Week())
        self.shown += 1
        week.shown += 1
        if row.outcome == "accepted":
            self.accepted += 1
            week.accepted += 1
        elif row.outcome == "overridden":
            self.overridden += 1
            week.overridden += 1
            self.reasons[row.reason_code] += 1
        if row.outcome is not None and row.outcome_at is not None:
            seconds = (row.outcome_at - row.shown_at).total_seconds()
            self.decision_seconds.append(max(0.0, seconds))

    @property
    def acceptance_rate(self) -> float | None:
        return rate(self.accepted, self.shown)

    @property
    def median_seconds(self) -> float | None:
        if not self.decision_seconds:
            return None
        return round(statistics.median(self.decision_seconds), 1)

    def top_reasons(self) -> list[tuple[str | None, int]]:
        # Most frequent first; ties by code, "no reason given" last.
        ordered = sorted(self.reasons.items(), key=lambda kv: (-kv[1], kv[0] is None, kv[0] or ""))
        return ordered[:TOP_REASONS]


def rate(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def percent(value: float | None) -> str:
    """A rate as the chart and the HTML page show it."""
    return "n/a" if value is None else f"{value * 100:.0f}%"


@dataclass
class RuleStats(Stats):
    rule: str = ""


@dataclass
class TopicStats(Stats):
    topic: str = ""
    rules: dict[str, RuleStats] = field(default_factory=dict)


@dataclass
class CardAnalytics:
    start: date
    end: date
    total: Stats = field(default_factory=Stats)
    topics: dict[str, TopicStats] = field(default_factory=dict)

    @property
    def weeks(self) -> list[date]:
        return weeks_of(self.start, self.end)

    def ordered_topics(self) -> list[TopicStats]:
        return sorted(self.topics.values(), key=lambda t: (-t.shown, t.topic))

    def ordered_rules(self) -> list[tuple[TopicStats, RuleStats]]:
        """Every (topic, rule) row, most cards shown first."""
        rows = [(t, r) for t in self.topics.values() for r in t.rules.values()]
        return sorted(rows, key=lambda tr: (-tr[1].shown, tr[1].rule, tr[0].topic))


def rules_of(field_value: str) -> list[str]:
    """``"a@1,b@2"`` → ``["a@1", "b@2"]`` (each rule once)."""
    rules = list(dict.fromkeys(r.strip() for r in field_value.split(",") if r.strip()))
    return rules or ["(no rule recorded)"]


def add_row(report: CardAnalytics, row: CardRow) -> None:
    report.total.add(row)
    topic = report.topics.setdefault(row.topic, TopicStats(topic=row.topic))
    topic.add(row)
    for rule in rules_of(row.rules):
        topic.rules.setdefault(rule, RuleStats(rule=rule)).add(row)


def aggregate(rows: Iterable[CardRow], start: date, end: date) -> CardAnalytics:
    """The report for rows already read (pure)."""
    report = CardAnalytics(start, end)
    for row in rows:
        add_row(report, row)
    return report
