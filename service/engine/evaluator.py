"""The evaluator: condition trees against one record, each compiled node evaluated at most once.

Besides the per-node memo it keeps the record queries that several leaves share (the findings
in a value set, the items of a drug class, a window of journal nights), so six rules naming the
same value set test each distinct concept once.
"""

from __future__ import annotations

from typing import Any, TypeVar

from service.engine.compiler import Program
from service.engine.conditions.base import Node
from service.engine.record import (
    Concept,
    DraftOrder,
    Finding,
    JournalNight,
    LabResult,
    MedicationUse,
    PatientRecord,
)
from service.engine.result import Result, Truth, word
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.valuesets import CodeKey

ConceptT = TypeVar("ConceptT", MedicationUse, DraftOrder)


class Evaluator:
    """Evaluates condition trees against one record; results are memoised per compiled node."""

    def __init__(
        self,
        kb: KnowledgeBase,
        record: PatientRecord,
        *,
        explain: bool,
        program: Program | None = None,
    ) -> None:
        self.kb = kb
        self.record = record
        self.explain = explain
        self.program = program if program is not None and program.kb is kb else Program(kb)
        self._memo: dict[int, Result] = {}
        self._in_valueset: dict[str, list[Finding]] = {}
        self._matching: dict[tuple[str, tuple[str, ...], int | None, bool], list[Finding]] = {}
        self._groups: list[tuple[frozenset[str], str, list[tuple[int, Finding]]]] | None = None
        self._nights_within: dict[int, list[JournalNight]] = {}
        self._answers_within: dict[tuple[str, int, bool], list[tuple[JournalNight, Any]]] = {}
        self._classes: dict[tuple[str, str, str | None], list[Any]] = {}
        self._members: dict[
            tuple[tuple[CodeKey, ...], str], tuple[frozenset[str], str, dict[str, bool]]
        ] = {}

    def evaluate(self, node: schema.Condition) -> Result:
        return self.eval(self.program.node(node))

    def eval(self, node: Node) -> Result:
        """The node's result for this record, computed once."""
        cached = self._memo.get(node.slot)
        if cached is None:
            cached = self._memo[node.slot] = node.evaluate(self)
        return cached

    # for the leaves -----------------------------------------------------------------------------

    def unavailable(self, *categories: str) -> bool:
        unavailable = self.record.unavailable
        return bool(unavailable) and any(c in unavailable for c in categories)

    def result(self, label: str, value: Truth, detail: str = "") -> Result:
        if not self.explain:
            return Result(value)
        return Result(value, trace=[f"{label}: {word(value)}{' — ' + detail if detail else ''}"])

    def findings_in(self, url: str) -> list[Finding]:
        """Every finding whose concept is in the value set, in record order.

        A record repeats few concepts many times (each journal night repeats the same items), so
        findings are grouped by concept once per record and each value set tests each distinct
        concept once, not every finding on every leaf that names it.
        """
        found = self._in_valueset.get(url)
        if found is not None:
            return found
        groups = self._groups
        if groups is None:
            groups = self._groups = self._concept_groups()
        text_matches = self.program.matcher.text_matches
        hits: list[tuple[int, Finding]] = []
        for urls, text, pairs in groups:
            # ``ValueSetMatcher.matches``: a code in the set, else a synonym in the text.
            if url in urls or (text and text_matches(url, text)):
                hits += pairs
        hits.sort(key=_first)
        found = self._in_valueset[url] = [finding for _, finding in hits]
        return found

    def _concept_groups(self) -> list[tuple[frozenset[str], str, list[tuple[int, Finding]]]]:
        """The record's findings grouped by what value-set matching reads (codes and text):
        each group's value sets by code, its text when a synonym may occur in it, its findings."""
        by_concept: dict[tuple[tuple[CodeKey, ...], str], list[tuple[int, Finding]]] = {}
        for index, finding in enumerate(self.record.findings):
            key = (finding.concept.codings, finding.concept.text)
            group = by_concept.get(key)
            if group is None:
                by_concept[key] = [(index, finding)]
            else:
                group.append((index, finding))
        return [
            (*self.program.matcher.membership(*key), pairs) for key, pairs in by_concept.items()
        ]

    def member(self, url: str, concept: Concept) -> bool:
        """``ValueSetMatcher.matches`` for the concept, memoised per distinct concept per call."""
        key = (concept.codings, concept.text)
        entry = self._members.get(key)
        if entry is None:
            entry = self._members[key] = (*self.program.matcher.membership(*key), {})
        urls, text, by_text = entry
        if url in urls:
            return True
        if not text:
            return False
        hit = by_text.get(url)
        if hit is None:
            hit = by_text[url] = self.program.matcher.text_matches(url, text)
        return hit

    def matching_findings(
        self,
        url: str,
        kinds: tuple[str, ...],
        within_days: int | None,
        undated_conditions: bool = False,
    ) -> list[Finding]:
        key = (url, kinds, within_days, undated_conditions)
        found = self._matching.get(key)
        if found is not None:
            return found
        lookback = self.kb.policy.finding_lookback_days
        as_of = self.record.as_of
        found = []
        for finding in self.findings_in(url):
            if finding.kind not in kinds:
                continue
            window = (
                within_days
                if within_days is not None
                else (None if finding.kind == "condition" else lookback)
            )
            if finding.when is None:
                if window is not None and not (undated_conditions and finding.kind == "condition"):
                    continue
            elif window is not None and (as_of - finding.when).days > window:
                continue
            found.append(finding)
        self._matching[key] = found
        return found

    # leaves -----------------------------------------------------------------------------------

    def named(self, url: str, concept: Concept) -> str:
        """What a card calls a coded concept: the record's display or text, else the ValueSet's
        display of the matched code, else the ValueSet's title; never a bare code ("E83.110")."""
        label = concept.label
        if label and all(label != code for _, code in concept.codings):
            return label
        index = self.kb.valuesets.get(url)
        if index is None:
            return label
        for key in concept.codings:
            display = index.displays.get(key)
            if display:
                return display
        return index.title or label

    def newest(self, analyte: str, within_days: int) -> tuple[LabResult | None, LabResult | None]:
        """(newest result within the window, newest result at all)."""
        results = self.record.labs.get(analyte)
        newest = results[0] if results else None
        if newest is not None and (self.record.as_of - newest.when).days <= within_days:
            return newest, newest
        return None, newest

    def in_class(
        self, kind: str, items: list[ConceptT], include: str, exclude: str | None
    ) -> list[ConceptT]:
        """Items whose concept is in ``include`` and not in ``exclude`` (drug-class exceptions)."""
        key = (kind, include, exclude)
        found = self._classes.get(key)
        if found is not None:
            return found
        member = self.member
        found = self._classes[key] = [
            item
            for item in items
            if member(include, item.concept) and not (exclude and member(exclude, item.concept))
        ]
        return found

    def drug(self, url: str, concept: Concept) -> tuple[str, str]:
        """What the card calls the item (its ingredients, "sertraline"), and the record's own
        wording when that says more ("sertraline 50 MG Oral Tablet"); never a bare code."""
        names = self.kb.valuesets[url].drug_names(concept.codings, concept.text, concept.label)
        label = concept.label
        name = ", ".join(names) or label
        bare = any(label == code for _, code in concept.codings)
        return name, "" if bare or label.lower() == name.lower() else label

    def window(self, within_days: int) -> list[JournalNight]:
        window = self._nights_within.get(within_days)
        if window is None:
            as_of = self.record.as_of
            window = self._nights_within[within_days] = [
                n for n in self.record.nights if 0 <= (as_of - n.night).days <= within_days
            ]
        return window

    def answers(
        self, item: str, within_days: int, want_bool: bool
    ) -> list[tuple[JournalNight, Any]]:
        """The window's answers to the item, of the type a spec compares with (yes/no or not)."""
        key = (item, within_days, want_bool)
        answered = self._answers_within.get(key)
        if answered is None:
            answered = self._answers_within[key] = [
                (night, answer)
                for night in self.window(within_days)
                if (answer := night.answers.get(item)) is not None
                and isinstance(answer, bool) == want_bool
            ]
        return answered


def _first(pair: tuple[int, Finding]) -> int:
    return pair[0]
