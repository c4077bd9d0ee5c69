"""The report as JSON (``GET /analytics/cards``, ``sleep-cds analytics``)."""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson

from service.analytics.period import iso_week
from service.analytics.stats import CardAnalytics, Stats, Week, rate


def _weekly(stats: Stats, weeks: list[date]) -> list[dict[str, Any]]:
    out = []
    for monday in weeks:
        week = stats.weekly.get(monday, Week())
        out.append(
            {
                "week": iso_week(monday),
                "weekStart": monday.isoformat(),
                "shown": week.shown,
                "accepted": week.accepted,
                "overridden": week.overridden,
                "acceptanceRate": rate(week.accepted, week.shown),
            }
        )
    return out


def _numbers(stats: Stats, weeks: list[date]) -> dict[str, Any]:
    return {
        "shown": stats.shown,
        "accepted": stats.accepted,
        "overridden": stats.overridden,
        "noFeedback": stats.shown - stats.accepted - stats.overridden,
        "acceptanceRate": stats.acceptance_rate,
        "topOverrideReasons": [{"code": c, "count": n} for c, n in stats.top_reasons()],
        "decided": len(stats.decision_seconds),
        "medianSecondsToDecision": stats.median_seconds,
        "weekly": _weekly(stats, weeks),
    }


def to_dict(report: CardAnalytics) -> dict[str, Any]:
    weeks = report.weeks
    topics = []
    for topic in report.ordered_topics():
        rules = []
        for rule in sorted(topic.rules.values(), key=lambda r: (-r.shown, r.rule)):
            rule_id, _, version = rule.rule.partition("@")
            rules.append(
                {"rule": rule.rule, "ruleId": rule_id, "version": version or None}
                | _numbers(rule, weeks)
            )
        topics.append({"topic": topic.topic} | _numbers(topic, weeks) | {"rules": rules})
    return {
        "period": {
            "from": report.start.isoformat(),
            "to": report.end.isoformat(),
            "toExclusive": True,
            "days": (report.end - report.start).days,
        },
        "weeks": [{"week": iso_week(m), "weekStart": m.isoformat()} for m in weeks],
        "total": _numbers(report.total, weeks),
        "topics": topics,
    }


def render_json(report: CardAnalytics, *, indent: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(to_dict(report), option=option)
