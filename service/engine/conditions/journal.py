"""``journal``: answers of the sleep-journal Questionnaire on enough nights of a window."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.engine.conditions.base import COMPARATORS, Leaf, Reads, reading
from service.engine.result import Evidence, Result
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator


@dataclass(slots=True, eq=False, kw_only=True)
class JournalNode(Leaf):
    operator = "journal"
    spec: schema.JournalSpec
    compare: Callable[[Any, Any], bool]
    want_bool: bool
    """Whether the spec compares yes/no answers (only those answers count)."""
    wording: str

    @classmethod
    def build(cls, spec: schema.JournalSpec, kb: KnowledgeBase) -> JournalNode:
        label = f"journal {spec.item} {spec.op} {spec.value} on ≥{spec.min_nights} nights"
        return cls(
            spec=spec,
            label=label,
            compare=COMPARATORS[spec.op],
            want_bool=isinstance(spec.value, bool),
            wording=journal_phrase(kb, spec),
        )

    @classmethod
    def reads(cls, condition: schema.JournalCond) -> Reads:
        return reading(("journal",))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.JournalSpec = self.spec
        label = self.label
        if ev.unavailable("journal"):
            return ev.result(label, None, "sleep journal could not be read")
        compare, want_bool, wording = self.compare, self.want_bool, self.wording
        answered = ev.answers(spec.item, spec.within_days, want_bool)
        expected = spec.value
        try:
            hits = [night for night, answer in answered if compare(answer, expected)]
        except TypeError:  # a text answer compared with a number: that night does not count
            hits = []
            for night, answer in answered:
                try:
                    if compare(answer, expected):
                        hits.append(night)
                except TypeError:
                    continue
        value = len(hits) >= spec.min_nights
        if not value and not ev.explain:
            return Result(False)
        nights = len(ev.window(spec.within_days))
        detail = f"{len(hits)} of {nights} nights in the last {spec.within_days} days"
        result = ev.result(label, value, detail)
        if value:
            sentence = (
                f"Sleep journal: {wording} on {len(hits)} of {nights} "
                f"{'night' if nights == 1 else 'nights'} (last {spec.within_days} days)"
            )
            result.evidence = [
                Evidence(
                    "journal",
                    escape_markdown(sentence),
                    f"journal:{spec.item}:{hits[0].night}:{len(hits)}",
                    hits[0].ref,
                )
            ]
            if spec.as_:
                result.bindings[spec.as_] = {
                    "nights": len(hits),
                    "of": nights,
                    "days": spec.within_days,
                }
        return result


_OPERATOR_WORDS = {"<": "under", "<=": "at most", ">": "over", ">=": "at least", "==": ""}
_LABEL_UNIT = re.compile(r"\s*\(([^)]*)\)$")


def journal_phrase(kb: KnowledgeBase, spec: schema.JournalSpec) -> str:
    """What a journal condition found, in words: "jerks at sleep onset", "stress level at
    least 7/10", "total sleep under 6 hours", "timing of jerks: while awake in the daytime"."""
    label = kb.journal_labels.get(spec.item, spec.item)
    found = _LABEL_UNIT.search(label)
    unit = found.group(1) if found else ""
    base = label[: found.start()] if found else label
    # An acronym keeps its case ("PLM count"); a word is lower-cased inside a sentence.
    phrase = base if base[:2].isupper() else base[:1].lower() + base[1:]
    value = spec.value
    if isinstance(value, bool):
        return phrase if value else f"no {phrase}"
    if isinstance(value, str):
        if value == "yes":
            return phrase
        shown = kb.journal_options.get(spec.item, {}).get(value, value)
        return f"{phrase}: {shown[:1].lower()}{shown[1:]}"
    if unit == "count" and spec.op == ">=" and value == 1:
        return phrase  # "jerks at sleep onset", not "jerks at sleep onset at least 1"
    number = f"{value:g}"
    if "-" in unit:  # a scale such as 0-10
        number += "/" + unit.rsplit("-", 1)[1]
    elif unit and unit != "count":
        number += f" {unit}"
    return f"{phrase} {_OPERATOR_WORDS[spec.op]} {number}".replace("  ", " ")
