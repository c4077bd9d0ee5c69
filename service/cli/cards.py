"""Cards as a clinician would skim them in a terminal (``sleep-cds hook``), or raw JSON."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any, TextIO

import orjson

from service.cli.call import HookOutcome

_BLOCK_LINE = re.compile(r"^\s*([-*+] |\d+[.)] |#|\||>|---)")


def _wrap(text: str, indent: str) -> str:
    """Re-flow Markdown prose paragraphs to the terminal; list, heading and table lines stay."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if any(_BLOCK_LINE.match(line) for line in lines):
            parts = lines
        else:
            parts = [" ".join(line.strip() for line in lines)]
        for part in parts:
            sub = indent + "  " if _BLOCK_LINE.match(part) else indent
            out.append(
                textwrap.fill(part.strip(), width=100, initial_indent=indent, subsequent_indent=sub)
            )
        out.append("")
    return "\n".join(out).rstrip()


def format_cards(response: dict[str, Any]) -> str:
    """Cards as a clinician would skim them: indicator, summary, detail, suggestions, links."""
    cards = response.get("cards") or []
    if not cards:
        return "  (no cards)"
    out: list[str] = []
    for card in cards:
        out.append(f"  [{str(card.get('indicator', '?')).upper()}] {card.get('summary', '')}")
        if card.get("detail"):
            out.append(_wrap(str(card["detail"]), "      "))
        source = card.get("source") or {}
        if source.get("label"):
            url = f" <{source['url']}>" if source.get("url") else ""
            out.append(f"      source: {source['label']}{url}")
        suggestions = card.get("suggestions") or []
        if suggestions:
            out.append(f"      suggestions ({card.get('selectionBehavior', '?')}):")
            for suggestion in suggestions:
                mark = "  [recommended]" if suggestion.get("isRecommended") else ""
                out.append(f"        * {suggestion.get('label', '')}{mark}")
                for action in suggestion.get("actions") or []:
                    target = action.get("resourceId") or (action.get("resource") or {}).get(
                        "resourceType", ""
                    )
                    desc = action.get("description", "")
                    out.append(f"            - {action.get('type')} {target}: {desc}")
        for link in card.get("links") or []:
            out.append(f"      link: {link.get('label')} -> {link.get('url')} ({link.get('type')})")
        for reason in card.get("overrideReasons") or []:
            out.append(f"      override reason: {reason.get('display') or reason.get('code')}")
        out.append("")
    for action in response.get("systemActions") or []:
        out.append(f"  system action: {action.get('type')} {action.get('description', '')}")
    return "\n".join(out).rstrip()


def write_responses_json(outcomes: Sequence[HookOutcome], out: TextIO) -> None:
    """``--json``: each service's answer as received, by service id."""
    data = {o.service_id: o.response for o in outcomes if o.response is not None}
    out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def print_outcomes(outcomes: Sequence[HookOutcome], hook: str, as_json: bool, out: TextIO) -> None:
    if as_json:
        write_responses_json(outcomes, out)
        return
    for o in outcomes:
        if o.error:
            continue
        cards = (o.response or {}).get("cards") or []
        out.write(
            f"== {o.service_id} ({hook}): HTTP {o.status} in {o.elapsed_ms:.0f} ms, "
            f"{len(cards)} card(s)\n"
        )
        if o.prefetch_filled or o.prefetch_omitted:
            omitted = ", ".join(f"{k} ({v})" for k, v in o.prefetch_omitted.items())
            out.write(
                f"   prefetch sent: {', '.join(o.prefetch_filled) or '-'}"
                + (f"; omitted: {omitted}" if omitted else "")
                + "\n"
            )
        out.write(format_cards(o.response or {}) + "\n")
