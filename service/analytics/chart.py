"""Acceptance rate per rule per ISO week, drawn with matplotlib (the optional ``report`` extra)."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from service.analytics.html_page import html_page
from service.analytics.stats import CardAnalytics, RuleStats, Stats, TopicStats, Week, percent

CHART_MAX_LINES = 12
SMALL_WEEK = 5  # a weekly rate from fewer cards than this is drawn hollow
INSTALL_HINT = (
    "the chart needs matplotlib: pip install 'sleep-movement-cds[report]' "
    "(in a checkout: .venv/bin/pip install -e '.[report]')"
)


class ChartUnavailable(RuntimeError):
    """matplotlib is not installed (it is the optional ``report`` extra)."""


def require_matplotlib() -> None:
    """Raise ``ChartUnavailable`` (with the install hint) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ChartUnavailable(INSTALL_HINT) from None


def _figure(report: CardAnalytics) -> Any:
    """Acceptance rate per rule per ISO week: one line per rule, the overall rate dashed."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    figure = Figure(
        figsize=(12, 6.75), dpi=150, layout=ConstrainedLayoutEngine(rect=(0, 0.03, 1, 0.97))
    )
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    _titles(axes, report)
    rows = report.ordered_rules()
    drawn = rows[:CHART_MAX_LINES]
    _rule_lines(axes, report.weeks, rows, drawn)
    _overall_line(axes, report)
    _week_axes(axes, report.weeks)
    _legend(axes, bool(rows))
    _notes(figure, axes, len(rows), len(drawn))
    return figure


def _titles(axes: Any, report: CardAnalytics) -> None:
    period = f"{report.start:%d %b %Y} to {report.end - timedelta(days=1):%d %b %Y}"
    axes.set_title(
        f"{period} · {report.total.shown} cards shown · "
        f"{percent(report.total.acceptance_rate)} accepted overall",
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


def _series(stats: Stats, weeks: list[date]) -> tuple[list[float], list[int]]:
    """The weekly acceptance in percent (NaN: no card that week, a gap) and cards shown."""
    ys, ns = [], []
    for monday in weeks:
        week = stats.weekly.get(monday, Week())
        ys.append(week.accepted / week.shown * 100 if week.shown else float("nan"))
        ns.append(week.shown)
    return ys, ns


def _rule_lines(
    axes: Any,
    weeks: list[date],
    rows: list[tuple[TopicStats, RuleStats]],
    drawn: list[tuple[TopicStats, RuleStats]],
) -> None:
    """One line per drawn rule, named with its topic when two topics share the rule."""
    import matplotlib

    x = list(range(len(weeks)))
    duplicate_names = {r.rule for _, r in rows if sum(1 for _, o in rows if o.rule == r.rule) > 1}
    cmap = matplotlib.colormaps["tab20" if len(drawn) > 10 else "tab10"]
    colours = [cmap(i % cmap.N) for i in range(len(drawn))]
    markers = ["o", "s", "^", "D", "v", "<", ">", "h", "p", "8", "d", "H"]
    # Rules with the same rate in a week would hide each other: shift each a little sideways.
    spread = min(0.3, 0.05 * max(len(drawn) - 1, 0))
    for i, (topic, rule) in enumerate(drawn):
        ys, ns = _series(rule, weeks)
        shift = spread * (i / (len(drawn) - 1) - 0.5) if len(drawn) > 1 else 0.0
        xs = [xi + shift for xi in x]
        name = rule.rule + (f" ({topic.topic})" if rule.rule in duplicate_names else "")
        label = f"{name} — {percent(rule.acceptance_rate)} of {rule.shown}"
        style: dict[str, Any] = {
            "color": colours[i],
            "marker": markers[i % len(markers)],
            "markersize": 7,
            "markeredgewidth": 1.5,
            "clip_on": False,
        }
        _rule_line(axes, xs, ys, ns, label, style)


def _rule_line(
    axes: Any, xs: list[float], ys: list[float], ns: list[int], label: str, style: dict[str, Any]
) -> None:
    """Filled points: five cards or more that week; hollow points: fewer (a noisy rate)."""
    axes.plot(xs, ys, linewidth=2, label=label, markevery=[n >= SMALL_WEEK for n in ns], **style)
    small = [(xi, yi) for xi, yi, n in zip(xs, ys, ns, strict=True) if 0 < n < SMALL_WEEK]
    if small:
        axes.plot(
            [xi for xi, _ in small],
            [yi for _, yi in small],
            linestyle="",
            markerfacecolor="white",
            zorder=3,
            **style,
        )


def _overall_line(axes: Any, report: CardAnalytics) -> None:
    overall, _ = _series(report.total, report.weeks)
    axes.plot(
        list(range(len(report.weeks))),
        overall,
        color="black",
        linestyle="--",
        linewidth=2.2,
        clip_on=False,
        label=f"All cards — {percent(report.total.acceptance_rate)} of {report.total.shown}",
    )


def _week_axes(axes: Any, weeks: list[date]) -> None:
    """0-100 % upwards, at most 13 week labels across, a light grid, no box."""
    from matplotlib.ticker import PercentFormatter

    x = list(range(len(weeks)))
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


def _legend(axes: Any, visible: bool) -> None:
    """The rules' legend right of the plot, with a key for the hollow points."""
    from matplotlib.lines import Line2D

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
    legend.set_visible(visible)


def _notes(figure: Any, axes: Any, rules: int, drawn: int) -> None:
    """What acceptance means, how many rules were left out, or that there is nothing to draw."""
    notes = [
        "Acceptance = cards with accepted feedback ÷ all cards shown (no feedback counts as "
        "not accepted). A card with several rules counts for each rule. Gaps: no card that week."
    ]
    if rules > drawn:
        notes.append(
            f"{rules - drawn} rule(s) with fewer cards not drawn; see the CSV/JSON report."
        )
    if not rules:
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
    path.write_text(html_page(report, svg.getvalue()), encoding="utf-8")
