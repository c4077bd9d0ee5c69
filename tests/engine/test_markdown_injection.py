"""Markdown injection: FHIR free text that reaches a card renders as the same text, never as a
heading, a list, a link, an image or HTML.

Rendered with markdown-it (CommonMark, the parser family EHR card renderers use) with raw HTML
on and linkify on, the most permissive set-up a client could have, then checked on the HTML
tree, not by comparing strings.
"""

from __future__ import annotations

import copy
import html
import json
import re
import uuid
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markdown_it import MarkdownIt

from service.config import Settings
from service.db.migrate import upgrade_database
from service.knowledge.templates import environment, escape_markdown
from service.main import create_app
from tests.conftest import FrozenClock

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"

ATTACKS = {
    "heading": "Zoloft 50mg\n# STOP ALL MEDICATIONS",
    "setext": "Zoloft 50mg\n===",
    "list": "Zoloft\n- give 10x dose\n1. now",
    "leading-list": "- Zoloft",
    "leading-ordered": "1. Zoloft",
    "quote-code": "Zoloft\n> quoted\n\n    code\n```\nfence",
    "bare-url": "Zoloft see https://evil.example/phish now",
    "www": "Zoloft www.evil.com",
    "domain": "Zoloft evil.com",
    "email": "Zoloft mail admin@evil.com",
    "link": "Zoloft [click](https://evil.example) ![x](https://evil.example/p.png)",
    "autolink": "Zoloft <https://evil.example>",
    "html": 'Zoloft <img src=x onerror="alert(1)"><script>alert(1)</script><b>bold</b>',
    "entity": "Zoloft &lt;b&gt; &#60;i&#62;",
    "emphasis": "Zoloft **bold** _it_ `code` ~~del~~",
    "table": "Zoloft | a\n--- | ---\nb | c",
    "hr": "Zoloft\n---\n***",
    "hard-break": "Zoloft  \nnext\\\nline",
}

DANGEROUS_TAGS = {
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "img", "script", "b", "i", "ul", "ol", "li",
    "blockquote", "pre", "code", "strong", "em", "del", "s", "table", "hr", "br",
}  # fmt: skip


class Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs += [value or "" for name, value in attrs if name in ("href", "src")]

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def renderer() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": True, "linkify": True})
    return md.enable(["linkify", "table", "strikethrough"])


def rendered(markdown: str) -> Tags:
    parser = Tags()
    parser.feed(renderer().render(markdown))
    return parser


def test_the_renderer_is_permissive_enough_to_catch_each_attack_unescaped() -> None:
    """Unescaped, every attack becomes markup or shows other text (so the tests below can fail)."""
    for name, attack in ATTACKS.items():
        tags = rendered(attack if name.startswith("leading") else f"Active medication: {attack}")
        changed = " ".join(attack.split()) not in " ".join("".join(tags.text).split())
        assert set(tags.tags) & DANGEROUS_TAGS or changed, name


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
@pytest.mark.parametrize("line", ["- Active medication: {}", "{}", "**Title**\n\n{} (SSRI)"])
def test_escaped_free_text_renders_as_itself(attack: str, line: str) -> None:
    tags = rendered(line.format(escape_markdown(attack)))
    allowed = {"p", "ul", "li", "strong"} if line.startswith(("- ", "**")) else {"p"}
    assert set(tags.tags) <= allowed, tags.tags
    shown = " ".join("".join(tags.text).split())
    assert " ".join(attack.split()) in shown


def test_template_values_are_escaped_in_detail_and_plain_in_summary() -> None:
    """A journal answer or drug name bound into a rule's template: escaped in Markdown detail,
    verbatim (one line) in the plain-text summary."""
    attack = ATTACKS["heading"] + " " + ATTACKS["html"]
    detail = environment(True).from_string("Reported: {{ answer }}").render(answer=attack)
    tags = rendered(detail)
    assert set(tags.tags) == {"p"}
    summary = environment(False).from_string("Reported: {{ answer }}").render(answer=attack)
    assert summary == f"Reported: {attack}"  # plain text: clients show it verbatim, no backslashes


def hook(scenario: dict[str, Any]) -> dict[str, Any]:
    return {
        "hook": scenario["hook"],
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": scenario["patient_id"]},
        "prefetch": scenario["prefetch"],
    }


def _set_texts(value: Any, old: str, new: str) -> int:
    """Replace every ``text`` equal to ``old`` (at any depth); returns how many."""
    count = 0
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "text" and item == old:
                value[key] = new
                count += 1
            else:
                count += _set_texts(item, old, new)
    elif isinstance(value, list):
        for item in value:
            count += _set_texts(item, old, new)
    return count


@pytest.mark.parametrize("attack", ["heading", "bare-url", "html", "link", "list"])
def test_condition_and_medication_text_in_a_real_card(tmp_path: Path, attack: str) -> None:
    """End to end: the EHR's condition text and medication text carry the attack; the card
    detail renders with no heading, link, image or HTML, and shows the text itself."""
    scenario = json.loads((SCENARIOS / "medication-text-only-zoloft.json").read_text())
    body = hook(scenario)
    text = ATTACKS[attack]
    prefetch = copy.deepcopy(body["prefetch"])
    assert _set_texts(prefetch, "Zoloft 50mg", f"Zoloft 50mg {text}") == 1
    assert _set_texts(prefetch, "Hypnic jerks (sleep starts)", f"Hypnic jerks {text}") >= 1
    body["prefetch"] = prefetch
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}")
    upgrade_database(settings)
    now = datetime.fromisoformat(scenario["as_of"]).replace(hour=9, tzinfo=UTC)
    app = create_app(settings, clock=FrozenClock(now), configure_logging=False)
    with TestClient(app) as client:
        response = client.post("/cds-services/sleep-movement-patient-view", json=body)
    assert response.status_code == 200, response.text
    details = [card["detail"] for card in response.json()["cards"]]
    carrying = [d for d in details if "Zoloft" in html.unescape(renderer().render(d))]
    assert carrying, details
    for detail in details:
        tags = rendered(detail)
        assert not set(tags.tags) & {"h1", "h2", "h3", "img", "script", "b", "pre", "ol"}
        # The only links are the rule's own sources (Markdown links the rule author wrote).
        assert all("evil" not in href for href in tags.hrefs), tags.hrefs
        assert not re.search(r"<(?!/?(p|ul|li|strong|hr|em|a)[ >])", renderer().render(detail))
    shown = " ".join("".join(rendered(carrying[0]).text).split())
    assert " ".join(text.split()) in shown
    for card in response.json()["cards"]:
        assert "\n" not in card["summary"]
