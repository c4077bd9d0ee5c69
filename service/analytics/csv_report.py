"""The report as CSV: the JSON's numbers, one row per level, then per level and ISO week."""

from __future__ import annotations

import csv
import io
from typing import Any

from service.analytics.json_report import to_dict
from service.analytics.stats import NO_REASON, TOP_REASONS, CardAnalytics

CSV_COLUMNS = [
    "level",
    "topic",
    "rule",
    "week",
    "week_start",
    "shown",
    "accepted",
    "overridden",
    "no_feedback",
    "acceptance_rate",
    "decided",
    "median_seconds_to_decision",
    *[f"override_reason_{i}{s}" for i in range(1, TOP_REASONS + 1) for s in ("", "_count")],
]


def _cell(value: object) -> str:
    """Text as a spreadsheet shows it; a leading formula character is neutralised."""
    if value is None:
        return ""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


Level = tuple[str, str, str, dict[str, Any]]  # level, topic, rule, the JSON's numbers


def render_csv(report: CardAnalytics) -> str:
    """One row per level (total, topic, rule) for the period, then one per level and ISO week.

    The numbers are those of the JSON: rates are fractions (0.5 = 50 %).
    """
    levels = _levels(to_dict(report))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    writer.writerows(_period_row(level) for level in levels)
    writer.writerows(_week_row(level, week) for level in levels for week in level[3]["weekly"])
    return buffer.getvalue()


def _levels(data: dict[str, Any]) -> list[Level]:
    """The total, then each topic followed by its rules, in the JSON's order."""
    levels: list[Level] = [("total", "", "", data["total"])]
    for topic in data["topics"]:
        levels.append(("topic", topic["topic"], "", topic))
        levels.extend(("rule", topic["topic"], rule["rule"], rule) for rule in topic["rules"])
    return levels


def _period_row(level: Level) -> list[str]:
    name, topic, rule, numbers = level
    return _row(
        name,
        topic,
        rule,
        None,
        None,
        numbers["shown"],
        numbers["accepted"],
        numbers["overridden"],
        numbers["noFeedback"],
        numbers["acceptanceRate"],
        numbers["decided"],
        numbers["medianSecondsToDecision"],
        *_reason_cells(numbers["topOverrideReasons"]),
    )


def _week_row(level: Level, week: dict[str, Any]) -> list[str]:
    """A week has counts and a rate only: the decision and reason columns stay empty."""
    name, topic, rule, _ = level
    return _row(
        name,
        topic,
        rule,
        week["week"],
        week["weekStart"],
        week["shown"],
        week["accepted"],
        week["overridden"],
        week["shown"] - week["accepted"] - week["overridden"],
        week["acceptanceRate"],
        *([None] * (2 + 2 * TOP_REASONS)),
    )


def _reason_cells(top: list[dict[str, Any]]) -> list[object]:
    """Code and count for each of the ``TOP_REASONS`` places, empty where there are fewer."""
    cells: list[object] = []
    for i in range(TOP_REASONS):
        if i < len(top):
            cells += [top[i]["code"] if top[i]["code"] is not None else NO_REASON]
            cells += [top[i]["count"]]
        else:
            cells += [None, None]
    return cells


def _row(*values: object) -> list[str]:
    return [_cell(v) for v in values]
