"""The chart as one self-contained HTML page, with the per-rule numbers as a table."""

from __future__ import annotations

import html

from service.analytics.stats import NO_REASON, CardAnalytics, percent


def html_page(report: CardAnalytics, svg: str) -> str:
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
            f"<td>{percent(rule.acceptance_rate)}</td>"
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
{report.total.overridden} overridden ({percent(report.total.acceptance_rate)} accepted).</p>
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
