"""Rule evaluation: a small typed interpreter over the condition trees of the rule files.

Logic is three-valued. A leaf whose data could not be read (its prefetch query failed) is
*unknown*, never false: "no ferritin on file" must not be claimed because the lab query failed.
A rule fires only when its condition is true.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal, TypeVar, get_args

from service.engine.record import (
    Concept,
    DraftOrder,
    Finding,
    JournalNight,
    LabResult,
    MedicationUse,
    PatientRecord,
    ProcedureEvent,
)
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown
from service.knowledge.valuesets import CodeKey, synonym_pattern

Truth = bool | None
ConceptT = TypeVar("ConceptT", MedicationUse, DraftOrder)

COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "==": operator.eq,
}
SEVERITY = {"info": 0, "warning": 1, "critical": 2}

Status = Literal["fired", "not-fired", "not-evaluable", "not-applicable"]


@dataclass(frozen=True, slots=True)
class Evidence:
    """One fact behind a card: a line for the clinician and a key for the card fingerprint."""

    kind: str
    text: str
    key: str
    ref: str | None = None


@dataclass(slots=True)
class Result:
    value: Truth
    evidence: list[Evidence] = field(default_factory=list)
    bindings: dict[str, Any] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)


@dataclass
class RuleOutcome:
    rule: schema.Rule
    status: Status
    indicator: str | None = None
    evidence: list[Evidence] = field(default_factory=list)
    bindings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    trace: list[str] = field(default_factory=list)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _combine(results: list[Result]) -> tuple[list[Evidence], dict[str, Any], list[str]]:
    """Evidence and bindings of the true parts; one fact read by two conditions (ferritin > 75
    and ferritin <= 100) is listed once."""
    evidence: list[Evidence] = []
    bindings: dict[str, Any] = {}
    seen: set[str] = set()
    for result in results:
        if result.value is True:
            for item in result.evidence:
                if item.key not in seen:
                    seen.add(item.key)
                    evidence.append(item)
            bindings.update(result.bindings)
    return evidence, bindings, [line for r in results for line in r.trace]


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


def _freeze(value: Any) -> Hashable:
    """A hashable, type-exact key for a spec's fields: ``1``, ``1.0`` and ``True`` stay apart."""
    if isinstance(value, dict):
        return tuple((k, _freeze(v)) for k, v in value.items())
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    return (type(value).__name__, repr(value))


class Node:
    """A condition compiled once per knowledge base: its operator's method, its children, and
    whatever of its spec does not depend on the record (label, value sets, threshold)."""

    __slots__ = ("children", "data", "label", "run", "slot", "spec", "trace_free")

    def __init__(
        self,
        slot: int,
        run: Callable[[Evaluator, Node], Result],
        children: tuple[Node, ...],
        spec: Any,
        label: str,
        trace_free: bool,
        data: tuple[Any, ...] = (),
    ) -> None:
        self.slot = slot
        self.run = run
        self.children = children
        self.spec = spec
        self.label = label
        self.trace_free = trace_free
        """No ``not`` or ``at_least`` below: without ``explain`` its trace is always empty."""
        self.data = data


class Program:
    """The compiled condition trees of one knowledge base.

    Structurally equal conditions (the same ``finding`` in six rules) compile to one node, so an
    evaluator computes each once per record. Compiling happens at start-up (``RuleEngine``); a
    condition not seen before is compiled on first use.
    """

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self._by_id: dict[int, tuple[schema.Condition, Node]] = {}
        self._by_key: dict[Hashable, Node] = {}
        # Value-set membership of a concept, for all value sets at once: by code through one
        # index, by text only when some synonym of some value set occurs in it (any set's
        # synonym pattern matching implies this union's pattern matches).
        urls_by_code: dict[CodeKey, set[str]] = {}
        for url, valueset in kb.valuesets.items():
            for code in valueset.codes:
                urls_by_code.setdefault(code, set()).add(url)
        self.urls_by_code = {code: frozenset(urls) for code, urls in urls_by_code.items()}
        self.any_synonym = synonym_pattern(
            tuple(sorted({s for v in kb.valuesets.values() for s in v.synonyms}))
        )

    def node(self, condition: schema.Condition) -> Node:
        entry = self._by_id.get(id(condition))
        if entry is not None and entry[0] is condition:
            return entry[1]
        compiled = self._compile(condition)
        self._by_id[id(condition)] = (condition, compiled)  # the reference keeps the id valid
        return compiled

    def _make(
        self,
        key: Hashable,
        run: Callable[[Evaluator, Node], Result],
        children: tuple[Node, ...] = (),
        spec: Any = None,
        label: str = "",
        data: tuple[Any, ...] = (),
        trace_free: bool = True,
    ) -> Node:
        found = self._by_key.get(key)
        if found is None:
            found = Node(len(self._by_key), run, children, spec, label, trace_free, data)
            self._by_key[key] = found
        return found

    def _compile(self, node: schema.Condition) -> Node:
        kb = self.kb
        if isinstance(node, schema.AllCond):
            children = tuple(self.node(c) for c in node.all)
            return self._make(
                ("all", tuple(c.slot for c in children)),
                Evaluator._all,
                children,
                trace_free=all(c.trace_free for c in children),
            )
        if isinstance(node, schema.AnyCond):
            children = tuple(self.node(c) for c in node.any)
            return self._make(
                ("any", tuple(c.slot for c in children)),
                Evaluator._any,
                children,
                trace_free=all(c.trace_free for c in children),
            )
        if isinstance(node, schema.NotCond):
            inner = self.node(node.not_)
            return self._make(("not", inner.slot), Evaluator._not, (inner,), trace_free=False)
        if isinstance(node, schema.AtLeastCond):
            children = tuple(self.node(c) for c in node.at_least.of)
            need = node.at_least.count
            return self._make(
                ("at_least", need, tuple(c.slot for c in children)),
                Evaluator._at_least,
                children,
                spec=need,
                trace_free=False,
            )
        key: Hashable
        if isinstance(node, schema.FindingCond):
            spec = node.finding
            key = ("finding", _freeze(spec.model_dump()))
            needed = {"condition": "conditions", "observation": "symptoms", "journal": "journal"}
            label = f"finding {kb.valuesets[spec.valueset].title}"
            categories = tuple(needed[k] for k in spec.kinds)
            return self._make(key, Evaluator._finding, (), spec, label, (categories,))
        if isinstance(node, schema.LabCond):
            lab = node.lab
            analyte = kb.analytes[lab.analyte]
            label = f"lab {analyte.display} {lab.op} {lab.value:g} {lab.unit}"
            threshold = lab.value * analyte.conversions[lab.unit]
            key = ("lab", _freeze(lab.model_dump()))
            return self._make(
                key,
                Evaluator._lab,
                (),
                lab,
                label,
                (analyte, threshold, frozenset(lab.interpretation)),
            )
        if isinstance(node, schema.LabMissingCond):
            missing = node.lab_missing
            analyte = kb.analytes[missing.analyte]
            label = f"lab_missing {analyte.display} within {missing.within_days} days"
            key = ("lab_missing", _freeze(missing.model_dump()))
            return self._make(key, Evaluator._lab_missing, (), missing, label, (analyte,))
        if isinstance(node, schema.MedicationCond):
            med = node.medication
            valueset = kb.valuesets[med.valueset]
            key = ("medication", _freeze(med.model_dump()))
            return self._make(
                key,
                Evaluator._medication,
                (),
                med,
                f"medication {valueset.title}",
                (escape_markdown(valueset.title),),
            )
        if isinstance(node, schema.MedicationBeforeFindingCond):
            before = node.medication_before_finding
            drugs = kb.valuesets[before.medication]
            key = ("medication_before_finding", _freeze(before.model_dump()))
            return self._make(
                key,
                Evaluator._medication_before_finding,
                (),
                before,
                f"medication_before_finding {drugs.title}",
            )
        if isinstance(node, schema.RenalDoseCond):
            dose = node.renal_dose
            key = ("renal_dose", _freeze(dose.model_dump()))
            patterns = tuple(
                (drug, synonym_pattern(drug.match), synonym_pattern(drug.exclude))
                for drug in dose.drugs
            )
            scale = kb.analytes[dose.analyte].conversions[dose.unit]
            return self._make(
                key,
                Evaluator._renal_dose,
                (),
                dose,
                f"renal_dose {kb.valuesets[dose.medication].title}",
                (patterns, scale),
            )
        if isinstance(node, schema.DraftOrderCond):
            draft = node.draft_order
            valueset = kb.valuesets[draft.valueset]
            key = ("draft_order", _freeze(draft.model_dump()))
            return self._make(
                key,
                Evaluator._draft,
                (),
                draft,
                f"draft_order {valueset.title}",
                (escape_markdown(valueset.title),),
            )
        if isinstance(node, schema.JournalCond):
            journal = node.journal
            label = (
                f"journal {journal.item} {journal.op} {journal.value} "
                f"on ≥{journal.min_nights} nights"
            )
            key = ("journal", _freeze(journal.model_dump()))
            return self._make(
                key,
                Evaluator._journal,
                (),
                journal,
                label,
                (
                    COMPARATORS[journal.op],
                    isinstance(journal.value, bool),
                    journal_phrase(kb, journal),
                ),
            )
        if isinstance(node, schema.ProcedureCond):
            procedure = node.procedure
            valueset = kb.valuesets[procedure.valueset]
            key = ("procedure", _freeze(procedure.model_dump()))
            states = "/".join(procedure.states)
            return self._make(
                key,
                Evaluator._procedure,
                (),
                procedure,
                f"procedure {valueset.title} {states}",
                (escape_markdown(valueset.title),),
            )
        if isinstance(node, schema.AgeCond):
            age = node.age
            key = ("age", _freeze(age.model_dump()))
            return self._make(
                key, Evaluator._age, (), age, f"age {age.op} {age.years}", (COMPARATORS[age.op],)
            )
        raise TypeError(type(node).__name__)  # pragma: no cover - the schema admits no other node


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
        return self._eval(self.program.node(node))

    def _eval(self, node: Node) -> Result:
        cached = self._memo.get(node.slot)
        if cached is None:
            cached = self._memo[node.slot] = node.run(self, node)
        return cached

    # combinators ------------------------------------------------------------------------------

    def _all(self, node: Node) -> Result:
        parts = []
        children = node.children
        for index, child in enumerate(children):
            part = self._eval(child)
            parts.append(part)
            if part.value is False and not self.explain:
                # False whatever follows. Without ``explain`` only ``not`` and ``at_least`` nodes
                # add trace lines, so the rest is evaluated only where it could add one.
                parts += [self._eval(c) for c in children[index + 1 :] if not c.trace_free]
                return Result(False, trace=_trace(parts))
        values = [p.value for p in parts]
        value: Truth = False if False in values else (None if None in values else True)
        return Result(value, *_combine(parts)) if value else Result(value, trace=_trace(parts))

    def _any(self, node: Node) -> Result:
        parts = [self._eval(child) for child in node.children]
        values = [p.value for p in parts]
        value = True if True in values else (None if None in values else False)
        return Result(value, *_combine(parts)) if value else Result(value, trace=_trace(parts))

    def _not(self, node: Node) -> Result:
        inner = self._eval(node.children[0])
        value = None if inner.value is None else not inner.value
        return Result(value, trace=[f"not → {_word(value)}", *inner.trace])

    def _at_least(self, node: Node) -> Result:
        parts = [self._eval(child) for child in node.children]
        trues = sum(p.value is True for p in parts)
        unknowns = sum(p.value is None for p in parts)
        need = node.spec
        value = True if trues >= need else (None if trues + unknowns >= need else False)
        if value:
            return Result(value, *_combine(parts))
        return Result(value, trace=[f"at least {need}: {trues} true", *_trace(parts)])

    # helpers ----------------------------------------------------------------------------------

    def _unavailable(self, *categories: str) -> bool:
        unavailable = self.record.unavailable
        return bool(unavailable) and any(c in unavailable for c in categories)

    def _result(self, label: str, value: Truth, detail: str = "") -> Result:
        if not self.explain:
            return Result(value)
        return Result(value, trace=[f"{label}: {_word(value)}{' — ' + detail if detail else ''}"])

    def _findings_in(self, url: str) -> list[Finding]:
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
        pattern = self.kb.valuesets[url].pattern
        hits: list[tuple[int, Finding]] = []
        for urls, text, pairs in groups:
            # ``ValueSetIndex.matches``: a code in the set, else a synonym in the text.
            if url in urls or (text and pattern is not None and pattern.search(text)):
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
        return [(*self._membership(*key), pairs) for key, pairs in by_concept.items()]

    def _membership(self, codings: tuple[CodeKey, ...], text: str) -> tuple[frozenset[str], str]:
        """The value sets the codes are in, and the text when a synonym may occur in it."""
        urls_by_code = self.program.urls_by_code
        urls: frozenset[str] = _NO_URLS
        for code in codings:
            more = urls_by_code.get(code)
            if more is not None:
                urls = urls | more
        any_synonym = self.program.any_synonym
        if not (text and any_synonym is not None and any_synonym.search(text)):
            text = ""
        return urls, text

    def _member(self, url: str, concept: Concept) -> bool:
        """``ValueSetIndex.matches`` for the concept, memoised per distinct concept per call."""
        key = (concept.codings, concept.text)
        entry = self._members.get(key)
        if entry is None:
            entry = self._members[key] = (*self._membership(*key), {})
        urls, text, by_text = entry
        if url in urls:
            return True
        if not text:
            return False
        hit = by_text.get(url)
        if hit is None:
            pattern = self.kb.valuesets[url].pattern
            hit = by_text[url] = pattern is not None and pattern.search(text) is not None
        return hit

    def _matching_findings(
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
        for finding in self._findings_in(url):
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

    def _named(self, url: str, concept: Concept) -> str:
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

    def _finding(self, node: Node) -> Result:
        spec: schema.FindingSpec = node.spec
        found = self._matching_findings(
            spec.valueset, spec.kinds, spec.within_days, spec.undated_conditions == "include"
        )
        if spec.clinical_status:
            found = [f for f in found if f.status in spec.clinical_status]
        if not found:
            if self._unavailable(*node.data[0]):
                return self._result(node.label, None, "symptom data could not be read")
            return self._result(node.label, False)
        names = sorted({self._named(spec.valueset, f.concept) for f in found})
        evidence = [
            Evidence(
                "finding",
                f"{_kind_label(f)}: {escape_markdown(self._named(spec.valueset, f.concept))}"
                + (f" (since {f.when.isoformat()})" if f.when else ""),
                f"finding:{f.ref}:{f.when}",
                f.ref if f.kind != "journal" else f.ref.split("#")[0],
            )
            for f in found[:5]
        ]
        result = self._result(node.label, True, ", ".join(names))
        result.evidence = evidence
        if spec.as_:
            first = min((f.when for f in found if f.when), default=None)
            binding = {"names": ", ".join(names), "count": len(found), "since": first}
            result.bindings[spec.as_] = binding
        return result

    def _newest(self, analyte: str, within_days: int) -> tuple[LabResult | None, LabResult | None]:
        """(newest result within the window, newest result at all)."""
        results = self.record.labs.get(analyte)
        newest = results[0] if results else None
        if newest is not None and (self.record.as_of - newest.when).days <= within_days:
            return newest, newest
        return None, newest

    def _lab_text(self, lab: LabResult) -> str:
        """ "Ferritin 38 ng/mL on 2026-03-01; reference 30 to 400 ng/mL; flagged L". An open-ended
        range reads "reference > 60" or "reference < 5.7 %"; units as clinicians write them."""
        kb = self.kb
        analyte = kb.analytes[lab.analyte]
        unit = kb.show_unit(analyte.unit)
        bound = lab.comparator or ""
        text = (
            f"{analyte.display} {bound}{_fmt(lab.raw_value)} {kb.show_unit(lab.raw_unit) or unit}"
        )
        if lab.raw_unit and lab.raw_unit != analyte.unit:
            text += f" (= {_fmt(lab.value)} {unit})"
        text += f" on {lab.when.isoformat()}"
        low, high = lab.ref_low, lab.ref_high
        # The comparison signs are ours, not data: mid-line ">" and "< " need no Markdown escape.
        reference = ""
        if low is not None and high is not None:
            reference = f"; reference {_fmt(low)} to {_fmt(high)} {escape_markdown(unit)}"
        elif low is not None:
            reference = f"; reference > {_fmt(low)} {escape_markdown(unit)}"
        elif high is not None:
            reference = f"; reference < {_fmt(high)} {escape_markdown(unit)}"
        flags = f"; flagged {', '.join(sorted(lab.interpretation))}" if lab.interpretation else ""
        return (
            escape_markdown(text.replace("  ", " ").rstrip()) + reference + escape_markdown(flags)
        )

    def _lab_binding(self, lab: LabResult) -> dict[str, Any]:
        shown = self.kb.show_unit(lab.raw_unit)
        return {
            "value": lab.value,
            "unit": lab.unit,
            "date": lab.when,
            "raw": f"{lab.comparator or ''}{_fmt(lab.raw_value)} {shown}".strip(),
            # The value in the analyte's canonical unit, with its bound ("<10 ng/mL", "12 %").
            "shown": f"{lab.comparator or ''}{_fmt(lab.value)} {self.kb.show_unit(lab.unit)}",
            "display": self.kb.analytes[lab.analyte].display,
        }

    def _lab(self, node: Node) -> Result:
        spec: schema.LabSpec = node.spec
        analyte, threshold, wanted = node.data
        label = node.label
        lab, _ = self._newest(spec.analyte, spec.within_days)
        if lab is None:
            if self._unavailable("observations"):
                return self._result(label, None, "lab results could not be read")
            return self._result(label, False, f"no result within {spec.within_days} days")
        flagged = bool(lab.interpretation & wanted)
        value: Truth
        # How the value was decided, for the trace: "flag", "low", "high" or "threshold".
        if spec.decide == "either" and flagged:
            value, how = True, "flag"
        elif spec.decide == "lab-first" and spec.interpretation and lab.interpretation:
            value, how = flagged, "flag"
        elif (
            spec.decide == "lab-first"
            and spec.reference_range == "low"
            and lab.ref_low is not None
            and lab.comparator is None
        ):
            value, how = lab.value < lab.ref_low, "low"
        elif (
            spec.decide == "lab-first"
            and spec.reference_range == "high"
            and lab.ref_high is not None
            and lab.comparator is None
        ):
            value, how = lab.value > lab.ref_high, "high"
        else:
            value, how = _compare(spec.op, lab, threshold), "threshold"
        if self.explain:
            if how == "flag":
                how = "lab interpretation " + ",".join(sorted(lab.interpretation))
            elif how == "low":
                how = "below the lab's reference range"
            elif how == "high":
                how = "above the lab's reference range"
            else:
                shown = f"{lab.comparator or ''}{_fmt(lab.value)} {analyte.unit}"
                how = f"{shown} {spec.op} {_fmt(threshold)}"
        if value is None:
            return self._result(label, None, f"reported as a bound: {how}")
        result = self._result(label, value, how)
        if value:
            result.evidence = [
                Evidence(
                    "lab", self._lab_text(lab), f"lab:{lab.ref}:{lab.value}:{lab.when}", lab.ref
                )
            ]
            if spec.as_:
                result.bindings[spec.as_] = self._lab_binding(lab)
        return result

    def _lab_missing(self, node: Node) -> Result:
        spec: schema.LabMissingSpec = node.spec
        analyte = node.data[0]
        label = node.label
        if self._unavailable("observations"):
            return self._result(label, None, "lab results could not be read")
        recent, newest = self._newest(spec.analyte, spec.within_days)
        if recent is not None:
            return self._result(label, False, f"result on {recent.when.isoformat()}")
        ignored = next(
            (
                i
                for i in self.record.ignored_labs.get(spec.analyte, ())
                if (self.record.as_of - i.when).days <= spec.within_days
            ),
            None,
        )
        if ignored is not None:
            # A result exists but its unit cannot be converted: say so, never "no result".
            shown = self.kb.show_unit(ignored.raw_unit) or "none"
            text = escape_markdown(
                f"No usable {analyte.display} result: {_fmt(ignored.raw_value)} {shown} on "
                f"{ignored.when.isoformat()} was ignored because its unit ({shown}) cannot be "
                f"converted to {self.kb.show_unit(analyte.unit)}"
            )
            key = f"ignored:{spec.analyte}:{ignored.ref}"
        elif newest is None:
            text = escape_markdown(f"No {analyte.display} result on file")
            key = f"missing:{spec.analyte}"
        else:
            text = (
                escape_markdown(f"No {analyte.display} result in the last {spec.within_days} days ")
                + f"(last: {self._lab_text(newest)})"
            )
            key = f"stale:{spec.analyte}:{newest.ref}"
        result = self._result(label, True, text)
        result.evidence = [Evidence("lab-missing", text, key, None)]
        if spec.as_:
            result.bindings[spec.as_] = {
                "display": analyte.display,
                "last": self._lab_binding(newest) if newest else None,
                "ignored_unit": (self.kb.show_unit(ignored.raw_unit) or "none")
                if ignored is not None
                else None,
            }
        return result

    def _in_class(
        self, kind: str, items: list[ConceptT], include: str, exclude: str | None
    ) -> list[ConceptT]:
        """Items whose concept is in ``include`` and not in ``exclude`` (drug-class exceptions)."""
        key = (kind, include, exclude)
        found = self._classes.get(key)
        if found is not None:
            return found
        member = self._member
        found = self._classes[key] = [
            item
            for item in items
            if member(include, item.concept) and not (exclude and member(exclude, item.concept))
        ]
        return found

    def _drug(self, url: str, concept: Concept) -> tuple[str, str]:
        """What the card calls the item (its ingredients, "sertraline"), and the record's own
        wording when that says more ("sertraline 50 MG Oral Tablet"); never a bare code."""
        names = self.kb.valuesets[url].drug_names(concept.codings, concept.text, concept.label)
        label = concept.label
        name = ", ".join(names) or label
        bare = any(label == code for _, code in concept.codings)
        return name, "" if bare or label.lower() == name.lower() else label

    def _medication(self, node: Node) -> Result:
        spec: schema.MedicationSpec = node.spec
        label = node.label
        found = self._in_class(
            "medication", self.record.medications, spec.valueset, spec.exclude_valueset
        )
        if spec.recent_days is not None:
            found = self._given_within(found, spec)
        if not found:
            if self._unavailable("medications"):
                return self._result(label, None, "medications could not be read")
            return self._result(label, False)
        drugs = [self._drug(spec.valueset, m.concept) for m in found]
        names = sorted({name for name, _ in drugs})
        result = self._result(label, True, ", ".join(names))
        title = node.data[0]
        result.evidence = [
            Evidence(
                "medication",
                (
                    f"Completed course: {_drug_text(name, recorded)} ({title}), "
                    f"last dated {m.last.isoformat()}"
                    if m.last is not None
                    else f"Active medication: {_drug_text(name, recorded)} ({title})"
                    + (f", since {m.started.isoformat()}" if m.started else "")
                ),
                f"med:{m.ref}:{m.concept.label}",
                m.ref,
            )
            for m, (name, recorded) in list(zip(found, drugs, strict=True))[:5]
        ]
        if spec.as_:
            since = min((m.started for m in found if m.started), default=None)
            result.bindings[spec.as_] = {
                "names": ", ".join(names),
                "count": len(found),
                "since": since,
                "days": (self.record.as_of - since).days if since else None,
            }
        return result

    def _given_within(
        self, active: list[MedicationUse], spec: schema.MedicationSpec
    ) -> list[MedicationUse]:
        """Active medicines (an ongoing course is being given now) and completed courses whose
        last date falls within ``recent_days``."""
        assert spec.recent_days is not None
        as_of, window = self.record.as_of, spec.recent_days
        recent = list(active)
        completed = self._in_class(
            "completed",
            self.record.completed_medications,
            spec.valueset,
            spec.exclude_valueset,
        )
        recent += [
            m for m in completed if m.last is not None and 0 <= (as_of - m.last).days <= window
        ]
        return recent

    def _medication_before_finding(self, node: Node) -> Result:
        spec: schema.MedicationBeforeFindingSpec = node.spec
        label = node.label
        findings = [
            f
            for f in self._matching_findings(
                spec.finding, ("condition", "observation", "journal"), None
            )
            if f.when is not None
        ]
        meds = [
            m
            for m in self.record.medications
            if m.started is not None and self._member(spec.medication, m.concept)
        ]
        # Onset of each distinct symptom: its earliest record (a Condition, or the first journal
        # night or Observation with that code). A symptom that began weeks after a drug was
        # started is linked to it even when an older, different complaint exists.
        onsets: dict[tuple[str, ...], Finding] = {}
        for finding in findings:
            key = finding.concept.codings[:1] or (finding.concept.label,)
            symptom = tuple(str(k) for k in key)
            current = onsets.get(symptom)
            if current is None or (finding.when and current.when and finding.when < current.when):
                onsets[symptom] = finding
        for med in meds:
            for finding in onsets.values():
                assert med.started is not None and finding.when is not None
                gap = (finding.when - med.started).days
                if 0 <= gap <= spec.max_days:
                    name, _ = self._drug(spec.medication, med.concept)
                    text = (
                        f"{escape_markdown(name[:1].upper() + name[1:])} started "
                        f"{med.started.isoformat()}, "
                        f"{gap} days before "
                        f"{escape_markdown(self._named(spec.finding, finding.concept))} began "
                        f"({finding.when.isoformat()})"
                    )
                    result = self._result(label, True, text)
                    result.evidence = [
                        Evidence("temporal", text, f"temporal:{med.ref}:{finding.ref}", med.ref)
                    ]
                    return result
        if self._unavailable("medications", "conditions", "symptoms", "journal"):
            return self._result(label, None, "data could not be read")
        return self._result(label, False)

    def _renal_dose(self, node: Node) -> Result:
        """Each listed drug on record against its renal limit for the newest kidney result."""
        spec: schema.RenalDoseSpec = node.spec
        patterns, scale = node.data
        meds = self._in_class("medication", self.record.medications, spec.medication, None)
        matched = []
        for med in meds:
            text = f"{med.concept.text} | {med.concept.label.lower()}"
            for drug, include, exclude in patterns:
                if include.search(text) and not (exclude is not None and exclude.search(text)):
                    matched.append((med, drug))
                    break
        if not matched:
            if self._unavailable("medications"):
                return self._result(node.label, None, "medications could not be read")
            return self._result(node.label, False)
        kidney, _ = self._newest(spec.analyte, spec.within_days)
        if kidney is None and self._unavailable("observations"):
            return self._result(node.label, None, "lab results could not be read")
        shown_unit = self.kb.show_unit(spec.unit)
        lines: list[str] = []
        evidence: list[Evidence] = []
        above = False
        for med, drug in matched:
            # The ingredient in plain words ("gabapentin"), the record's wording after it.
            ingredient, recorded = self._drug(spec.medication, med.concept)
            name = f"{ingredient} (recorded as {recorded})" if recorded else ingredient
            dose = f"{_fmt(med.daily_mg)} mg/day" if med.daily_mg is not None else None
            if kidney is None:
                line = (
                    f"{name}: renal limit not checked (no {self.kb.analytes[spec.analyte].display}"
                    f" in the last {spec.within_days} days)"
                )
            else:
                level = kidney.value / scale
                if kidney.comparator in ("<", "<="):
                    level -= 1e-9  # "<15" lies in the band below 15
                limit = next(b for b in drug.limits if b.below is None or level < b.below)
                where = (
                    f"the renal limit of {_fmt(limit.max_daily_mg)} mg/day for "
                    f"{self.kb.analytes[spec.analyte].display} "
                    f"{kidney.comparator or ''}{_fmt(kidney.value / scale)} {shown_unit}"
                )
                if dose is None:
                    line = f"{name}: dose not on record; {where}"
                elif med.daily_mg is not None and med.daily_mg > limit.max_daily_mg:
                    above = True
                    line = f"{name}: {dose} is above {where}"
                else:
                    line = f"{name}: {dose} is within {where}"
                line += f" ({drug.source})"
            lines.append(line)
            evidence.append(
                Evidence(
                    "dose",
                    escape_markdown(line),
                    f"dose:{med.ref}:{med.daily_mg}:{kidney.ref if kidney else ''}",
                    med.ref,
                )
            )
        value = above or not spec.exceeds_only
        result = self._result(node.label, value, "; ".join(lines))
        if value:
            result.evidence = evidence
            if spec.as_:
                result.bindings[spec.as_] = {"lines": "; ".join(lines), "above": above}
        return result

    def _draft(self, node: Node) -> Result:
        spec: schema.DraftOrderSpec = node.spec
        label = node.label
        found = self._in_class("draft", self.record.drafts, spec.valueset, spec.exclude_valueset)
        if not found:
            return self._result(label, False)
        drugs = [
            self._drug(spec.valueset, d.concept)
            if d.resource_type in ("MedicationRequest", "MedicationStatement")
            else (d.concept.label, "")
            for d in found
        ]
        names = sorted({name for name, _ in drugs})
        result = self._result(label, True, ", ".join(names))
        title = node.data[0]
        result.evidence = [
            Evidence(
                "draft",
                f"Draft order: {_drug_text(name, recorded)} ({title})",
                f"draft:{d.ref}:{d.concept.label}",
                None,
            )
            for d, (name, recorded) in zip(found, drugs, strict=True)
        ]
        if spec.as_:
            result.bindings[spec.as_] = {
                "names": ", ".join(names),
                "count": len(found),
                "refs": [d.ref for d in found if d.ref],
            }
        return result

    def _window(self, within_days: int) -> list[JournalNight]:
        window = self._nights_within.get(within_days)
        if window is None:
            as_of = self.record.as_of
            window = self._nights_within[within_days] = [
                n for n in self.record.nights if 0 <= (as_of - n.night).days <= within_days
            ]
        return window

    def _journal(self, node: Node) -> Result:
        spec: schema.JournalSpec = node.spec
        label = node.label
        if self._unavailable("journal"):
            return self._result(label, None, "sleep journal could not be read")
        compare, want_bool, wording = node.data
        key = (spec.item, spec.within_days, want_bool)
        answered = self._answers_within.get(key)
        if answered is None:
            # The window's answers to the item, of the type the spec compares with.
            item = spec.item
            answered = self._answers_within[key] = [
                (night, answer)
                for night in self._window(spec.within_days)
                if (answer := night.answers.get(item)) is not None
                and isinstance(answer, bool) == want_bool
            ]
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
        if not value and not self.explain:
            return Result(False)
        nights = len(self._window(spec.within_days))
        detail = f"{len(hits)} of {nights} nights in the last {spec.within_days} days"
        result = self._result(label, value, detail)
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

    def _procedure(self, node: Node) -> Result:
        spec: schema.ProcedureSpec = node.spec
        label = node.label
        as_of = self.record.as_of
        found = []
        for event in self.record.procedures:
            if event.state not in spec.states or not self._member(spec.valueset, event.concept):
                continue
            if spec.exclude_valueset and self._member(spec.exclude_valueset, event.concept):
                continue
            age = None if event.when is None else (as_of - event.when).days
            if spec.within_days is not None and (age is None or age > spec.within_days):
                continue
            if spec.min_days_ago and (age is None or age < spec.min_days_ago):
                continue
            found.append(event)
        if not found:
            if self._unavailable("procedures") and spec.if_unreadable == "unknown":
                return self._result(label, None, "procedures could not be read")
            return self._result(label, False)
        found.sort(key=_event_date, reverse=True)
        names = sorted({self._named(spec.valueset, e.concept) for e in found})
        result = self._result(label, True, ", ".join(names))
        title = node.data[0]
        result.evidence = [
            Evidence(
                "procedure",
                f"{'Done' if e.state == 'done' else 'Ordered'}: "
                f"{escape_markdown(self._named(spec.valueset, e.concept))}"
                f" ({title})" + (f" on {e.when.isoformat()}" if e.when else ""),
                f"procedure:{e.ref}:{e.state}:{e.when}",
                e.ref,
            )
            for e in found[:3]
        ]
        if spec.as_:
            newest = found[0]
            result.bindings[spec.as_] = {
                "names": ", ".join(names),
                "state": newest.state,
                "date": newest.when,
            }
        return result

    def _age(self, node: Node) -> Result:
        spec: schema.AgeSpec = node.spec
        age = self.record.age_years
        if age is None:
            return self._result(node.label, None, "no birth date")
        return self._result(node.label, node.data[0](age, spec.years), f"age {age}")


def _drug_text(name: str, recorded: str) -> str:
    """Evidence wording of a medicine: "sertraline, recorded as sertraline 50 MG Oral Tablet"."""
    text = escape_markdown(name)
    return f"{text}, recorded as {escape_markdown(recorded)}" if recorded else text


def _compare(op: str, lab: LabResult, threshold: float) -> Truth:
    """Compare a result with a threshold; a reported bound ("<10") decides only when it can."""
    if lab.comparator is None:
        return COMPARATORS[op](lab.value, threshold)
    below = lab.comparator in ("<", "<=")
    if op in ("<", "<="):
        if below and lab.value <= threshold:
            return True  # the true value is under the bound, which is within the threshold
        if not below and lab.value >= threshold:
            return False
    elif op in (">", ">="):
        if not below and lab.value >= threshold:
            return True
        if below and lab.value <= threshold:
            return False
    return None


_NO_URLS: frozenset[str] = frozenset()


def _first(pair: tuple[int, Finding]) -> int:
    return pair[0]


def _event_date(event: ProcedureEvent) -> date:
    return event.when or date.min


def _word(value: Truth) -> str:
    return {True: "true", False: "false", None: "unknown"}[value]


def _trace(parts: list[Result]) -> list[str]:
    return [line for p in parts for line in p.trace]


def _kind_label(finding: Finding) -> str:
    return {"condition": "Problem", "observation": "Reported", "journal": "Sleep journal"}[
        finding.kind
    ]


_Compiled = tuple[schema.Rule, Node, tuple[Node, ...], tuple[Node, ...]]


class RuleEngine:
    """Runs the rules of one hook against a record; knowledge is shared, state is per call.

    Every condition tree is compiled here, once, not per call.
    """

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb
        self.program = Program(kb)
        self._complaint = self.program.node(kb.policy.complaint)
        self._populations = {
            name: self.program.node(spec.when) for name, spec in kb.policy.populations.items()
        }
        self._rules: dict[str, tuple[_Compiled, ...]] = {}
        for hook in get_args(schema.Hook):
            self._rules_for(hook)

    def _rules_for(self, hook: str) -> tuple[_Compiled, ...]:
        """The hook's rules with their compiled conditions (when, escalations, context)."""
        rules = self._rules.get(hook)
        if rules is None:
            node = self.program.node
            rules = self._rules[hook] = tuple(
                (
                    rule,
                    node(rule.when),
                    tuple(node(e.when) for e in rule.card.escalate),
                    tuple(node(c) for c in rule.card.context),
                )
                for rule in self.kb.rules_for(hook)
            )
        return rules

    def _excluded(self, evaluator: Evaluator, rule: schema.Rule) -> RuleOutcome | None:
        """Not applicable when the patient is in a population the rule leaves to another rule;
        not evaluable when that cannot be told (advice unsafe for that group is never given on
        a guess)."""
        unknown: list[str] = []
        for name in rule.exclude_populations:
            result = evaluator._eval(self._populations[name])
            if result.value is True:
                return RuleOutcome(
                    rule,
                    "not-applicable",
                    reason=f"population {name}: {self.kb.policy.populations[name].description}",
                    trace=result.trace,
                )
            if result.value is None:
                unknown.append(name)
        if unknown:
            return RuleOutcome(
                rule,
                "not-evaluable",
                reason=f"could not tell whether the patient is in population {', '.join(unknown)}",
            )
        return None

    def run(self, hook: str, record: PatientRecord, *, explain: bool = False) -> list[RuleOutcome]:
        evaluator = Evaluator(self.kb, record, explain=explain, program=self.program)
        complaint = evaluator._eval(self._complaint)
        age = record.age_years
        paediatric = age is not None and age < self.kb.policy.adult_age_years
        outcomes: list[RuleOutcome] = []
        for rule, when, escalations, contexts in self._rules_for(hook):
            if (rule.population == "adult" and paediatric) or (
                rule.population == "pediatric" and not paediatric
            ):
                outcomes.append(RuleOutcome(rule, "not-applicable", reason="population"))
                continue
            if rule.requires_complaint and complaint.value is not True:
                status: Status = "not-applicable" if complaint.value is False else "not-evaluable"
                reason = (
                    "no sleep-movement complaint in the record"
                    if complaint.value is False
                    else "symptom data could not be read"
                )
                outcomes.append(RuleOutcome(rule, status, reason=reason, trace=complaint.trace))
                continue
            result = evaluator._eval(when)
            if result.value is None:
                outcomes.append(
                    RuleOutcome(
                        rule, "not-evaluable", reason="data could not be read", trace=result.trace
                    )
                )
                continue
            if not result.value:
                outcomes.append(
                    RuleOutcome(rule, "not-fired", reason="conditions not met", trace=result.trace)
                )
                continue
            excluded = self._excluded(evaluator, rule)
            if excluded is not None:
                outcomes.append(excluded)
                continue
            indicator = rule.card.indicator
            evidence = list(result.evidence)
            for escalation, escalation_node in zip(rule.card.escalate, escalations, strict=True):
                escalated = evaluator._eval(escalation_node)
                if escalated.value is True and (
                    SEVERITY[escalation.indicator] > SEVERITY[indicator]
                ):
                    indicator = escalation.indicator
                    # What made the card more urgent is evidence too (and part of its key).
                    known = {e.key for e in evidence}
                    evidence += [e for e in escalated.evidence if e.key not in known]
            bindings = result.bindings
            for context_node in contexts:
                extra = evaluator._eval(context_node)
                if extra.value is True:
                    bindings = {**bindings, **extra.bindings}
                    known = {e.key for e in evidence}
                    evidence += [e for e in extra.evidence if e.key not in known]
            outcomes.append(
                RuleOutcome(
                    rule,
                    "fired",
                    indicator=indicator,
                    evidence=evidence,
                    bindings=bindings,
                    trace=result.trace,
                )
            )
        return outcomes
