"""Card composition: fired rules → at most one card per topic, sorted by urgency.

Several rules of one topic (for example three abnormal labs) make one card: the most urgent
indicator, the summary of the most urgent rule, every rule's advice and evidence in ``detail``.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson
from jinja2 import Template

from service.cdshooks.models import SUMMARY_MAX
from service.engine.prefetch import OPTIONAL_CATEGORIES, needs
from service.engine.record import PatientRecord
from service.engine.rules import SEVERITY, RuleOutcome
from service.engine.suppression import RuleRef, SuggestionRef
from service.knowledge import orders, schema
from service.knowledge.base import CODESYSTEM_URL, KnowledgeBase
from service.knowledge.templates import environment

MISSING_DATA_NOTE = (
    "**Data that could not be read:** {categories}. Rules that need these data were not "
    "evaluated; absence of a card is not evidence of a normal result."
)
OPTIONAL_DATA_NOTE = (
    "**Data that could not be read:** {categories}. An order or result already on the record "
    "would have held this card back: check the record before acting on it."
)


@dataclass(frozen=True)
class CardMeta:
    """What the audit trail and suppression need to know about a card."""

    uuid: str
    key: str
    topic: str
    indicator: str
    rules: tuple[str, ...]
    suggestion_uuids: tuple[str, ...]
    rule_refs: tuple[RuleRef, ...] = ()
    suggestion_refs: tuple[SuggestionRef, ...] = ()


def rule_key(outcome: RuleOutcome) -> str:
    """One rule's evidence fingerprint: feedback holds a rule while this stays the same."""
    parts = [outcome.rule.id, *sorted(e.key for e in outcome.evidence)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def _codes_of(resource: dict[str, Any] | None) -> list[str]:
    resource = resource or {}
    concept = resource.get("code") or resource.get("medicationCodeableConcept") or {}
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [
        f"{c.get('system')}|{c.get('code')}"
        for c in codings or []
        if isinstance(c, dict) and c.get("code")
    ]


def card_key(patient_id: str, topic: str, outcomes: list[RuleOutcome]) -> str:
    """Stable across calls while the evidence is the same; new evidence gives a new key."""
    parts = [patient_id, topic]
    for outcome in sorted(outcomes, key=lambda o: o.rule.id):
        parts.append(outcome.rule.id)
        parts.extend(sorted(e.key for e in outcome.evidence))
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


@lru_cache(maxsize=1024)
def _compiled(template: str, markdown: bool = True) -> Template:
    """A card template compiled once: compiling costs about 100x rendering, so ``CardComposer``
    compiles every rule's templates at start-up and requests only render."""
    return environment(markdown).from_string(template)


def _action_signature(action: dict[str, Any]) -> tuple[str, ...]:
    resource = action.get("resource") or {}
    codings = (resource.get("code") or {}).get("coding") or []
    codes = sorted(f"{c.get('system')}|{c.get('code')}" for c in codings)
    return (
        action["type"],
        str(action.get("resourceId", "")),
        resource.get("resourceType", ""),
        *codes,
    )


def _copier(template: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    """A deep copy of the template, fast: an order template is plain JSON, and parsing its bytes
    is far cheaper than ``copy.deepcopy`` (which stays the fallback for anything else)."""
    blob = orjson.dumps(template)
    if orjson.loads(blob) == template:
        return lambda: orjson.loads(blob)
    return lambda: copy.deepcopy(template)


def _instantiate(
    fresh: Callable[[], dict[str, Any]], patient_id: str, reasons: list[str]
) -> dict[str, Any]:
    """``orders.instantiate`` of the template ``fresh`` copies: its subject and reasons (filled
    in by ``orders.instantiate`` itself) after the template's own elements."""
    return {**fresh(), **orders.instantiate({}, patient_id, reasons)}


def _render(
    template: str, bindings: dict[str, Any], record: PatientRecord, *, markdown: bool = True
) -> str:
    compiled = _compiled(template, markdown)
    return compiled.render(patient_age=record.age_years, **bindings).strip()


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def _suggestion_ref(
    record: PatientRecord, suggestion: dict[str, Any], rules: list[str]
) -> SuggestionRef:
    creates: list[str] = []
    deletes: list[str] = []
    drafts = {d.ref: d for d in record.drafts}
    for action in suggestion["actions"]:
        if action["type"] == "create":
            creates += _codes_of(action.get("resource"))
        elif action["type"] == "delete":
            ref = str(action.get("resourceId", ""))
            deletes.append(ref)
            draft = drafts.get(ref)
            if draft is not None:
                deletes += [f"{system}|{code}" for system, code in draft.concept.codings]
    return SuggestionRef(
        suggestion["uuid"],
        tuple(dict.fromkeys(rules)),
        tuple(sorted(set(creates))),
        tuple(sorted(set(deletes))),
    )


class CardComposer:
    def __init__(self, kb: KnowledgeBase, app_base_url: str | None = None) -> None:
        self.kb = kb
        self.app_base_url = app_base_url  # where smart links live; None: leave them out
        for rule in kb.rules:
            _compiled(rule.card.summary, False)
            _compiled(rule.card.detail, True)
        self._order_templates = {
            name: _copier(orders.order_template(spec)) for name, spec in kb.orders.items()
        }
        self._lab_orders = {
            name: _copier(orders.lab_order(analyte, kb.lab_order_category))
            for name, analyte in kb.analytes.items()
            if analyte.order is not None
        }
        # Optional data each rule reads: its note goes only on cards of rules that read it.
        self._optional_reads: dict[str, frozenset[str]] = {}
        for rule in kb.rules:
            reads: set[str] = set()
            for tree in (rule.when, *(e.when for e in rule.card.escalate)):
                reads |= needs(tree)[0]
            self._optional_reads[rule.id] = frozenset(reads & OPTIONAL_CATEGORIES)
        self._override_reasons = [
            {"system": CODESYSTEM_URL, "code": r.code, "display": r.display}
            for r in kb.policy.override_reasons
        ]

    def compose(
        self, record: PatientRecord, outcomes: list[RuleOutcome]
    ) -> tuple[list[dict[str, Any]], list[CardMeta]]:
        by_topic: dict[str, list[RuleOutcome]] = {}
        for outcome in outcomes:
            if outcome.status == "fired":
                by_topic.setdefault(outcome.rule.topic, []).append(outcome)
        built: list[tuple[int, dict[str, Any], CardMeta]] = []
        for topic, fired in by_topic.items():
            fired.sort(key=lambda o: (-SEVERITY[o.indicator or "info"], o.rule.card.priority))
            card, meta = self._card(record, topic, fired)
            built.append((SEVERITY[meta.indicator], card, meta))
        built.sort(key=lambda item: -item[0])
        return [card for _, card, _ in built], [meta for _, _, meta in built]

    def _card(
        self, record: PatientRecord, topic: str, fired: list[RuleOutcome]
    ) -> tuple[dict[str, Any], CardMeta]:
        lead = fired[0]
        indicator = lead.indicator or lead.rule.card.indicator
        card_uuid = str(uuid.uuid4())
        topic_coding = self.kb.topic(topic)
        source = lead.rule.sources[0]
        card: dict[str, Any] = {
            "uuid": card_uuid,
            "summary": _shorten(
                _render(lead.rule.card.summary, lead.bindings, record, markdown=False)
            ),
            "indicator": indicator,
            "detail": self._detail(record, fired),
            "source": {
                "label": source.label,
                "url": source.url,
                "topic": {
                    "system": CODESYSTEM_URL,
                    "code": topic_coding.code,
                    "display": topic_coding.display,
                },
            },
        }
        suggestions, carried = self._suggestions(record, card_uuid, fired)
        if suggestions:
            card["suggestions"] = suggestions
            card["selectionBehavior"] = "any"
        card["overrideReasons"] = self._override_reasons
        links = self._links(fired)
        if links:
            card["links"] = links
        meta = CardMeta(
            uuid=card_uuid,
            key=card_key(record.patient_id, topic, fired),
            topic=topic,
            indicator=indicator,
            rules=tuple(f"{o.rule.id}@{o.rule.version}" for o in fired),
            suggestion_uuids=tuple(s["uuid"] for s in suggestions),
            rule_refs=tuple(
                RuleRef(
                    f"{o.rule.id}@{o.rule.version}",
                    rule_key(o),
                    o.indicator or o.rule.card.indicator,
                )
                for o in fired
            ),
            suggestion_refs=tuple(
                _suggestion_ref(record, s, carried[s["label"]]) for s in suggestions
            ),
        )
        return card, meta

    def _detail(self, record: PatientRecord, fired: list[RuleOutcome]) -> str:
        sections = []
        shown: set[str] = set()  # a result behind two rules of one card is listed once
        for outcome in fired:
            rule = outcome.rule
            lines = [f"**{rule.title}**", "", _render(rule.card.detail, outcome.bindings, record)]
            evidence = [e.text for e in outcome.evidence if e.text not in shown]
            shown.update(evidence)
            if evidence:
                lines += ["", "Evidence:"]
                lines += [f"- {text}" for text in dict.fromkeys(evidence)]
            refs = "; ".join(f"[{s.label}]({s.url})" for s in rule.sources)
            lines += ["", f"Source: {refs} (rule {rule.id} v{rule.version})"]
            sections.append("\n".join(lines))
        required = record.unavailable - OPTIONAL_CATEGORIES
        if required:
            sections.append(MISSING_DATA_NOTE.format(categories=", ".join(sorted(required))))
        optional = record.unavailable & frozenset().union(
            *(self._optional_reads.get(o.rule.id, frozenset()) for o in fired)
        )
        if optional:
            sections.append(OPTIONAL_DATA_NOTE.format(categories=", ".join(sorted(optional))))
        return "\n\n---\n\n".join(sections)

    def _suggestions(
        self, record: PatientRecord, card_uuid: str, fired: list[RuleOutcome]
    ) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
        """The card's suggestions, and per label the rules whose advice each one carries."""
        suggestions: list[dict[str, Any]] = []
        labels: set[str] = set()
        offered: dict[tuple[str, ...], str] = {}
        carried: dict[str, list[str]] = {}
        for outcome in fired:
            rule = f"{outcome.rule.id}@{outcome.rule.version}"
            reasons = sorted({e.ref for e in outcome.evidence if e.ref and "/" in e.ref})
            for spec in outcome.rule.suggestions:
                if spec.label in labels:
                    carried[spec.label].append(rule)
                    continue
                # An order already offered by an earlier suggestion of this card is not offered
                # twice (two rules may both suggest the same referral); accepting that earlier
                # suggestion answers both rules.
                actions = []
                for action in self._actions(record, spec, outcome, reasons):
                    signature = _action_signature(action)
                    if signature in offered:
                        carried[offered[signature]].append(rule)
                    else:
                        actions.append(action)
                if not actions:
                    continue
                offered.update((_action_signature(a), spec.label) for a in actions)
                labels.add(spec.label)
                carried[spec.label] = [rule]
                suggestion: dict[str, Any] = {
                    "label": spec.label,
                    "uuid": str(uuid.uuid5(uuid.UUID(card_uuid), spec.label)),
                    "actions": actions,
                }
                if spec.recommended:
                    suggestion["isRecommended"] = True
                suggestions.append(suggestion)
        return suggestions, carried

    def _actions(
        self,
        record: PatientRecord,
        spec: schema.SuggestionSpec,
        outcome: RuleOutcome,
        reasons: list[str],
    ) -> list[dict[str, Any]]:
        actions: list[dict[str, Any]] = []
        if spec.remove_draft:
            binding = outcome.bindings.get(spec.remove_draft) or {}
            for ref in binding.get("refs", []):
                actions.append(
                    {
                        "type": "delete",
                        "description": f"Remove the draft order {ref}",
                        "resourceId": ref,
                    }
                )
        for name in spec.orders:
            resource = _instantiate(self._order_templates[name], record.patient_id, reasons)
            actions.append(
                {"type": "create", "description": self.kb.orders[name].label, "resource": resource}
            )
        if spec.missing_labs and spec.missing_within_days is not None:
            for analyte in spec.missing_labs:
                results = record.labs.get(analyte) or []
                if results and (record.as_of - results[0].when).days <= spec.missing_within_days:
                    continue
                resource = _instantiate(self._lab_orders[analyte], record.patient_id, reasons)
                actions.append(
                    {
                        "type": "create",
                        "description": f"Order {self.kb.analytes[analyte].display}",
                        "resource": resource,
                    }
                )
        return actions

    def _links(self, fired: list[RuleOutcome]) -> list[dict[str, str]]:
        links: list[dict[str, str]] = []
        seen: set[str] = set()
        for outcome in fired:
            for link in outcome.rule.links:
                url = link.url
                if link.type == "smart":
                    if self.app_base_url is None:
                        continue
                    url = self.app_base_url + url
                if url not in seen:
                    seen.add(url)
                    links.append({"label": link.label, "url": url, "type": link.type})
        return links
