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

Modules: ``period`` (the [from, to) period and ISO weeks), ``query`` (the one SQL statement),
``stats`` (counting, pure), ``json_report`` and ``csv_report`` (the report's two text forms),
``chart`` (the matplotlib figure) and ``html_page`` (the chart with its table as one page).
"""

from service.analytics.chart import ChartUnavailable, render_chart, require_matplotlib
from service.analytics.csv_report import render_csv
from service.analytics.json_report import render_json, to_dict
from service.analytics.period import MAX_PERIOD_DAYS, parse_period
from service.analytics.query import card_analytics, card_rows
from service.analytics.stats import NO_REASON, CardAnalytics, CardRow, aggregate

__all__ = [
    "MAX_PERIOD_DAYS",
    "NO_REASON",
    "CardAnalytics",
    "CardRow",
    "ChartUnavailable",
    "aggregate",
    "card_analytics",
    "card_rows",
    "parse_period",
    "render_chart",
    "render_csv",
    "render_json",
    "require_matplotlib",
    "to_dict",
]
