"""Card analytics for governance: how often each rule's cards were shown, accepted and overridden.

The unit is a *card shown* in the period [from, to) (``card_shown.shown_at``, UTC). Its outcome is
its latest feedback (``feedback_item.outcome_at``; ties broken by the order received), whenever that
feedback arrived, so a period's numbers settle as late feedback comes in. A card without feedback
counts as shown and neither accepted nor overridden. A card composed from several rules counts
once for each of its rules, and once in its topic's total and in the overall total.

Numbers per level (overall, topic, rule) and per ISO week (by the week the card was shown):

* ``shown``, ``accepted``, ``overridden``, ``noFeedback`` (shown - accepted - overridden);
* ``acceptanceRate`` = accepted / shown (null when nothing was shown);
* ``topOverrideReasons``: the three most frequent override reason codes (null: no reason given);
* ``medianSecondsToDecision``: median of (decision time - shown time) over cards with feedback.
  The decision time is the client's ``outcomeTimestamp`` clamped to [card issued, feedback
  received] (``feedback_item.decided_at``), so a wrong client clock cannot skew it; timestamps
  more than 5 min off are refused at the feedback endpoint and never stored.

A hook JWT sees only the cards issued to its own issuer and tenant; the admin token (and local
mode) sees every card.

Nothing here reads patient ids or override comments: the report holds no PHI. The query streams
one row per card shown (five short columns); the period is limited to ``MAX_PERIOD_DAYS``.
"""

from __future__ import annotations

import csv
import html
import io
import statistics
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import and_, func, select

from service.db.database import Database
from service.db.models import CardShown, FeedbackItem

MAX_PERIOD_DAYS = 366
DEFAULT_PERIOD_DAYS = 84  # twelve weeks
TOP_REASONS = 3
CHART_MAX_LINES = 12
SMALL_WEEK = 5  # a weekly rate from fewer cards than this is drawn hollow
INSTALL_HINT = (
    "the chart needs matplotlib: pip install 'sleep-movement-cds[report]' "
    "(in a checkout: .venv/bin/pip install -e '.[report]')"
)


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed (it is the optional ``report`` extra)."""


# --- the period ---------------------------------------------------------------------------------


def parse_period(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """[from, to) from ``YYYY-MM-DD`` strings; defaults: the twelve weeks up to and incl. today.

    Raises ``ValueError`` with a message fit for the caller.
    """

    def parse(name: str, value: str) -> date:
        try:
            return date.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{name} must be a date as YYYY-MM-DD") from None

    def looks_like_date(value: str) -> bool:
        return len(value) == 10 and value[4] == "-" and value[7] == "-"

    for name, value in (("from", start), ("to", end)):
        if value is not None and not looks_like_date(value):
            raise ValueError(f"{name} must be a date as YYYY-MM-DD")
    stop = parse("to", end) if end is not None else today + timedelta(days=1)
    begin = parse("from", start) if start is not None else stop - timedelta(DEFAULT_PERIOD_DAYS)
    if begin >= stop:
        raise ValueError("from must be before to (to is exclusive)")
    if (stop - begin).days > MAX_PERIOD_DAYS:
        raise ValueError(f"the period may span at most {MAX_PERIOD_DAYS} days")
    return begin, stop


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def _monday(day: date) -> date:
    return day - timedelta(days=day.weekday())


def iso_week(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def weeks_of(start: date, end: date) -> list[date]:
    """Mondays of the ISO weeks that overlap [start, end)."""
    first, last = _monday(start), _monday(end - timedelta(days=1))
    return [first + timedelta(weeks=i) for i in range((last - first).days // 7 + 1)]


# --- the query ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardRow:
    """One card shown and its latest feedback (outcome None: no feedback yet)."""

    topic: str
    rules: str
    shown_at: datetime
    outcome: str | None = None
    outcome_at: datetime | None = None
    reason_code: str | None = None


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
            _statement(_midnight(start), _midnight(end), scope).execution_options(yield_per=2000)
        )
        async for topic, rules, shown_at, outcome, outcome_at, reason in result:
            yield CardRow(topic, rules, shown_at, outcome, outcome_at, reason)


# --- aggregation (pure) -------------------------------------------------------------------------


@dataclass
class _Week:
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
    weekly: dict[date, _Week] = field(default_factory=dict)

    def add(self, row: CardRow) -> None:
        week = self.weekly.setdefault(_monday(row.shown_at.date()), _Week())
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


def _count(report: CardAnalytics, row: CardRow) -> None:
    report.total.add(row)
    topic = report.topics.setdefault(row.topic, TopicStats(topic=row.topic))
    topic.add(row)
    for rule in rules_of(row.rules):
        topic.rules.setdefault(rule, RuleStats(rule=rule)).add(row)


def aggregate(rows: Iterable[CardRow], start: date, end: date) -> CardAnalytics:
    """The report for rows already read (pure)."""
    report = CardAnalytics(start, end)
    for row in rows:
        _count(report, row)
    return report


async def card_analytics(
    db: Database, start: date, end: date, scope: tuple[str, str] | None = None
) -> CardAnalytics:
    """Query and aggregate the period [start, end), one streamed row at a time."""
    report = CardAnalytics(start, end)
    async for row in card_rows(db, start, end, scope):
        _count(report, row)
    return report


# --- renderers ----------------------------------------------------------------------------------


def _weekly(stats: Stats, weeks: list[date]) -> list[dict[str, Any]]:
    out = []
    for monday in weeks:
        week = stats.weekly.get(monday, _Week())
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
NO_REASON = "(no reason given)"


def _cell(value: object) -> str:
    """Text as a spreadsheet shows it; a leading formula character is neutralised."""
    if value is None:
        return ""
    text = str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def render_csv(report: CardAnalytics) -> str:
    """One row per level (total, topic, rule) for the period, then one per level and ISO week.

    The numbers are those of the JSON: rates are fractions (0.5 = 50 %).
    """
    data = to_dict(report)
    levels: list[tuple[str, str, str, dict[str, Any]]] = [("total", "", "", data["total"])]
    for topic in data["topics"]:
        levels.append(("topic", topic["topic"], "", topic))
        levels.extend(("rule", topic["topic"], rule["rule"], rule) for rule in topic["rules"])
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for level, topic_name, rule_name, numbers in levels:
        reasons: list[object] = []
        for i in range(TOP_REASONS):
            top = numbers["topOverrideReasons"]
            if i < len(top):
                reasons += [top[i]["code"] if top[i]["code"] is not None else NO_REASON]
                reasons += [top[i]["count"]]
            else:
                reasons += [None, None]
        writer.writerow(
            [
                _cell(v)
                for v in (
                    level,
                    topic_name,
                    rule_name,
                    None,
                    None,
                    numbers["shown"],
                    numbers["accepted"],
                    numbers["overridden"],
                    numbers["noFeedback"],
                    numbers["acceptanceRate"],
                    numbers["decided"],
                    numbers["medianSecondsToDecision"],
                    *reasons,
                )
            ]
        )
    for level, topic_name, rule_name, numbers in levels:
        for week in numbers["weekly"]:
            writer.writerow(
                [
                    _cell(v)
                    for v in (
                        level,
                        topic_name,
                        rule_name,
                        week["week"],
                        week["weekStart"],
                        week["shown"],
                        week["accepted"],
                        week["overridden"],
                        week["shown"] - week["accepted"] - week["overridden"],
                        week["acceptanceRate"],
                        *([None] * (2 + 2 * TOP_REASONS)),
                    )
                ]
            )
    return buffer.getvalue()


# --- the chart ----------------------------------------------------------------------------------


def require_matplotlib() -> None:
    """Raise ``ChartUnavailable`` (with the install hint) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartUnavailable(INSTALL_HINT) from None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.0f}%"


def _figure(report: CardAnalytics) -> Any:
    """Acceptance rate per rule per ISO week: one line per rule, the overall rate dashed."""
    require_matplotlib()
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    weeks = report.weeks
    x = list(range(len(weeks)))
    figure = Figure(
        figsize=(12, 6.75), dpi=150, layout=ConstrainedLayoutEngine(rect=(0, 0.03, 1, 0.97))
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    period = f"{report.start:%d %b %Y} to {report.end - timedelta(days=1):%d %b %Y}"
    axes.set_title(
        f"{period} · {report.total.shown} cards shown · "
        f"{_percent(report.total.acceptance_rate)} accepted overall",
        loc="left",
        fontsize=10.5,
        color="#444444",
        pad=12,
    )
    axes.annotate(
        "CDS card acceptance rate per rule, by week",
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, 30),
        textcoords="offset points",
        fontsize=15,
        weight="bold",
        ha="left",
        va="bottom",
        annotation_clip=False,
    )

    def series(stats: Stats) -> tuple[list[float], list[int]]:
        ys, ns = [], []
        for monday in weeks:
            week = stats.weekly.get(monday, _Week())
            ys.append(week.accepted / week.shown * 100 if week.shown else float("nan"))
            ns.append(week.shown)
        return ys, ns

    rows = report.ordered_rules()
    drawn = rows[:CHART_MAX_LINES]
    duplicate_names = {r.rule for _, r in rows if sum(1 for _, o in rows if o.rule == r.rule) > 1}
    cmap = matplotlib.colormaps["tab20" if len(drawn) > 10 else "tab10"]
    colours = [cmap(i % cmap.N) for i in range(len(drawn))]
    markers = ["o", "s", "^", "D", "v", "<", ">", "h", "p", "8", "d", "H"]
    # Rules with the same rate in a week would hide each other: shift each a little sideways.
    spread = min(0.3, 0.05 * max(len(drawn) - 1, 0))
    for i, (topic, rule) in enumerate(drawn):
        ys, ns = series(rule)
        shift = spread * (i / (len(drawn) - 1) - 0.5) if len(drawn) > 1 else 0.0
        xs = [xi + shift for xi in x]
        name = rule.rule + (f" ({topic.topic})" if rule.rule in duplicate_names else "")
        label = f"{name} — {_percent(rule.acceptance_rate)} of {rule.shown}"
        colour, marker = colours[i], markers[i % len(markers)]
        common: dict[str, Any] = {
            "color": colour,
            "marker": marker,
            "markersize": 7,
            "markeredgewidth": 1.5,
            "clip_on": False,
        }
        # Filled points: five cards or more that week; hollow points: fewer (a noisy rate).
        axes.plot(
            xs, ys, linewidth=2, label=label, markevery=[n >= SMALL_WEEK for n in ns], **common
        )
        small = [(xi, yi) for xi, yi, n in zip(xs, ys, ns, strict=True) if 0 < n < SMALL_WEEK]
        if small:
            axes.plot(
                [xi for xi, _ in small],
                [yi for _, yi in small],
                linestyle="",
                markerfacecolor="white",
                zorder=3,
                **common,
            )
    overall, _ = series(report.total)
    axes.plot(
        x,
        overall,
        color="black",
        linestyle="--",
        linewidth=2.2,
        clip_on=False,
        label=f"All cards — {_percent(report.total.acceptance_rate)} of {report.total.shown}",
    )

    axes.set_ylim(0, 100)
    axes.set_xlim(-0.5, max(len(weeks) - 0.5, 0.5))
    axes.yaxis.set_major_formatter(PercentFormatter(xmax=100, decimals=0))
    axes.set_yticks(range(0, 101, 10))
    axes.set_ylabel("Cards accepted ÷ cards shown (%)", fontsize=11)
    axes.set_xlabel("ISO week the card was shown (week starting Monday)", fontsize=11)
    step = -(-len(weeks) // 13)  # at most 13 week labels
    axes.set_xticks(x[::step])
    axes.set_xticklabels(
        [f"W{m.isocalendar()[1]:02d}\n{m:%d %b}" for m in weeks][::step], fontsize=9
    )
    axes.grid(axis="y", color="#dddddd", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)

    handles, labels = axes.get_legend_handles_labels()
    handles.append(Line2D([], [], linestyle="", marker="o", color="grey", markerfacecolor="white"))
    labels.append(f"hollow point: fewer than {SMALL_WEEK} cards that week")
    legend = axes.legend(
        handles,
        labels,
        title="Rule — accepted of shown in the period",
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=9,
        title_fontsize=9.5,
        frameon=False,
    )
    legend.get_title().set_horizontalalignment("left")
    legend.set_visible(bool(rows))
    notes = [
        "Acceptance = cards with accepted feedback ÷ all cards shown (no feedback counts as "
        "not accepted). A card with several rules counts for each rule. Gaps: no card that week."
    ]
    if len(rows) > len(drawn):
        notes.append(
            f"{len(rows) - len(drawn)} rule(s) with fewer cards not drawn; see the CSV/JSON report."
        )
    if not rows:
        axes.text(
            0.5,
            0.5,
            "No cards shown in this period",
            ha="center",
            va="center",
            transform=axes.transAxes,
            fontsize=14,
            color="#666666",
        )
    figure.text(0.01, 0.005, "  ".join(notes), fontsize=8.5, color="#555555", ha="left")
    return figure


def render_chart(report: CardAnalytics, path: Path) -> None:
    """Write the chart as PNG (``.png``) or a self-contained HTML page (``.html``/``.htm``)."""
    suffix = path.suffix.lower()
    if suffix not in (".png", ".html", ".htm"):
        raise ValueError("the chart file must end in .png or .html")
    figure = _figure(report)
    if suffix == ".png":
        figure.savefig(path, format="png")
        return
    svg = io.StringIO()
    figure.savefig(svg, format="svg")
    path.write_text(_html_page(report, svg.getvalue()), encoding="utf-8")


def _html_page(report: CardAnalytics, svg: str) -> str:
    esc = html.escape
    svg = svg[svg.find("<svg") :]  # drop the XML prolog and DOCTYPE
    rows = []
    for topic, rule in report.ordered_rules():
        reasons = ", ".join(
            f"{esc(code if code is not None else NO_REASON)} ({n})"
            for code, n in rule.top_reasons()
        )
        median = rule.median_seconds
        rows.append(
            "<tr>"
            f"<td>{esc(topic.topic)}</td><td>{esc(rule.rule)}</td>"
            f"<td>{rule.shown}</td><td>{rule.accepted}</td><td>{rule.overridden}</td>"
            f"<td>{_percent(rule.acceptance_rate)}</td>"
            f"<td>{'' if median is None else f'{median:g}'}</td><td>{reasons}</td>"
            "</tr>"
        )
    period = f"{report.start.isoformat()} to {report.end.isoformat()} (exclusive)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>CDS card analytics {esc(period)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; margin-top: 1rem; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
td:nth-child(n+3):nth-child(-n+7) {{ text-align: right; }}
svg {{ max-width: 100%; height: auto; }}
</style></head><body>
<h1>CDS card analytics</h1>
<p>Period {esc(period)}: {report.total.shown} cards shown, {report.total.accepted} accepted,
{report.total.overridden} overridden ({_percent(report.total.acceptance_rate)} accepted).</p>
{svg}
<table><thead><tr><th>Topic</th><th>Rule</th><th>Shown</th><th>Accepted</th><th>Overridden</th>
<th>Acceptance</th><th>Median s to decision</th><th>Top override reasons</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<p>Acceptance = cards accepted ÷ cards shown; cards without feedback count as not accepted.
A card built from several rules counts for each of its rules. See docs/analytics.md.</p>
</body></html>
"""
