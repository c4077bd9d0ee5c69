"""Rule evaluation: a small typed interpreter over the condition trees of the rule files.

Logic is three-valued. A leaf whose data could not be read (its prefetch query failed) is
*unknown*, never false: "no ferritin on file" must not be claimed because the lab query failed.
A rule fires only when its condition is true.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from service.engine.record import (
    Concept,
    DraftOrder,
    Finding,
    JournalNight,
    LabResult,
    MedicationUse,
    PatientRecord,
)
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown

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


@dataclass
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
    evidence: list[Evidence] = []
    bindings: dict[str, Any] = {}
    for result in results:
        if result.value is True:
            evidence.extend(result.evidence)
            bindings.update(result.bindings)
    return evidence, bindings, [line for r in results for line in r.trace]


class Evaluator:
    """Evaluates condition trees against one record; leaf results are memoised per node."""

    def __init__(self, kb: KnowledgeBase, record: PatientRecord, *, explain: bool) -> None:
        self.kb = kb
        self.record = record
        self.explain = explain
        self._memo: dict[int, Result] = {}
        self._in_valueset: dict[str, list[Finding]] = {}
        self._by_concept: dict[Concept, list[tuple[int, Finding]]] | None = None
        self._nights_within: dict[int, list[JournalNight]] = {}

    def evaluate(self, node: schema.Condition) -> Result:
        key = id(node)
        cached = self._memo.get(key)
        if cached is None:
            cached = self._evaluate(node)
            self._memo[key] = cached
        return cached

    def _evaluate(self, node: schema.Condition) -> Result:
        if isinstance(node, schema.AllCond):
            parts = [self.evaluate(child) for child in node.all]
            values = [p.value for p in parts]
            value: Truth = False if False in values else (None if None in values else True)
            return Result(value, *_combine(parts)) if value else Result(value, trace=_trace(parts))
        if isinstance(node, schema.AnyCond):
            parts = [self.evaluate(child) for child in node.any]
            values = [p.value for p in parts]
            value = True if True in values else (None if None in values else False)
            return Result(value, *_combine(parts)) if value else Result(value, trace=_trace(parts))
        if isinstance(node, schema.NotCond):
            inner = self.evaluate(node.not_)
            value = None if inner.value is None else not inner.value
            return Result(value, trace=[f"not → {_word(value)}", *inner.trace])
        if isinstance(node, schema.AtLeastCond):
            parts = [self.evaluate(child) for child in node.at_least.of]
            trues = sum(p.value is True for p in parts)
            unknowns = sum(p.value is None for p in parts)
            need = node.at_least.count
            value = True if trues >= need else (None if trues + unknowns >= need else False)
            if value:
                return Result(value, *_combine(parts))
            return Result(value, trace=[f"at least {need}: {trues} true", *_trace(parts)])
        return self._leaf(node)

    def _leaf(self, node: schema.Condition) -> Result:
        if isinstance(node, schema.FindingCond):
            result = self._finding(node.finding)
        elif isinstance(node, schema.LabCond):
            result = self._lab(node.lab)
        elif isinstance(node, schema.LabMissingCond):
            result = self._lab_missing(node.lab_missing)
        elif isinstance(node, schema.MedicationCond):
            result = self._medication(node.medication)
        elif isinstance(node, schema.MedicationBeforeFindingCond):
            result = self._medication_before_finding(node.medication_before_finding)
        elif isinstance(node, schema.DraftOrderCond):
            result = self._draft(node.draft_order)
        elif isinstance(node, schema.JournalCond):
            result = self._journal(node.journal)
        elif isinstance(node, schema.AgeCond):
            result = self._age(node.age)
        else:  # pragma: no cover - the schema admits no other node
            raise TypeError(type(node).__name__)
        return result

    # helpers ----------------------------------------------------------------------------------

    def _unavailable(self, *categories: str) -> bool:
        return any(c in self.record.unavailable for c in categories)

    def _result(self, label: str, value: Truth, detail: str = "") -> Result:
        trace = (
            [f"{label}: {_word(value)}{' — ' + detail if detail else ''}"] if self.explain else []
        )
        return Result(value, trace=trace)

    def _findings_in(self, url: str) -> list[Finding]:
        """Every finding whose concept is in the value set, in record order.

        A record repeats few concepts many times (each journal night repeats the same items), so
        findings are grouped by concept once per record and each value set tests each distinct
        concept once, not every finding on every leaf that names it.
        """
        found = self._in_valueset.get(url)
        if found is not None:
            return found
        if self._by_concept is None:
            self._by_concept = {}
            for index, finding in enumerate(self.record.findings):
                self._by_concept.setdefault(finding.concept, []).append((index, finding))
        valueset = self.kb.valuesets[url]
        hits = [
            pair
            for concept, group in self._by_concept.items()
            if valueset.matches(concept.codings, concept.text)
            for pair in group
        ]
        hits.sort(key=lambda pair: pair[0])
        found = self._in_valueset[url] = [finding for _, finding in hits]
        return found

    def _matching_findings(
        self, url: str, kinds: tuple[str, ...], within_days: int | None
    ) -> list[Finding]:
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
            if window is not None and (
                finding.when is None or (as_of - finding.when).days > window
            ):
                continue
            found.append(finding)
        return found

    # leaves -----------------------------------------------------------------------------------

    def _finding(self, spec: schema.FindingSpec) -> Result:
        valueset = self.kb.valuesets[spec.valueset]
        label = f"finding {valueset.title}"
        found = self._matching_findings(spec.valueset, spec.kinds, spec.within_days)
        if not found:
            needed = {"condition": "conditions", "observation": "symptoms", "journal": "journal"}
            if self._unavailable(*(needed[k] for k in spec.kinds)):
                return self._result(label, None, "symptom data could not be read")
            return self._result(label, False)
        names = sorted({f.concept.label for f in found})
        evidence = [
            Evidence(
                "finding",
                f"{_kind_label(f)}: {escape_markdown(f.concept.label)}"
                + (f" (since {f.when.isoformat()})" if f.when else ""),
                f"finding:{f.ref}:{f.when}",
                f.ref if f.kind != "journal" else f.ref.split("#")[0],
            )
            for f in found[:5]
        ]
        first = min((f.when for f in found if f.when), default=None)
        binding = {"names": ", ".join(names), "count": len(found), "since": first}
        result = self._result(label, True, ", ".join(names))
        result.evidence = evidence
        if spec.as_:
            result.bindings[spec.as_] = binding
        return result

    def _newest(self, analyte: str, within_days: int) -> tuple[LabResult | None, LabResult | None]:
        """(newest result within the window, newest result at all)."""
        results = self.record.labs.get(analyte) or []
        newest = results[0] if results else None
        if newest is not None and (self.record.as_of - newest.when).days <= within_days:
            return newest, newest
        return None, newest

    def _lab_text(self, lab: LabResult) -> str:
        analyte = self.kb.analytes[lab.analyte]
        bound = lab.comparator or ""
        text = f"{analyte.display} {bound}{_fmt(lab.raw_value)} {lab.raw_unit or analyte.unit}"
        if lab.raw_unit and lab.raw_unit != analyte.unit:
            text += f" (= {_fmt(lab.value)} {analyte.unit})"
        text += f" on {lab.when.isoformat()}"
        if lab.ref_low is not None or lab.ref_high is not None:
            low = _fmt(lab.ref_low) if lab.ref_low is not None else ""
            high = _fmt(lab.ref_high) if lab.ref_high is not None else ""
            text += f"; lab reference range {low} to {high} {analyte.unit}"
        if lab.interpretation:
            text += f"; flagged {', '.join(sorted(lab.interpretation))}"
        return escape_markdown(text)

    def _lab_binding(self, lab: LabResult) -> dict[str, Any]:
        return {
            "value": lab.value,
            "unit": lab.unit,
            "date": lab.when,
            "raw": f"{lab.comparator or ''}{_fmt(lab.raw_value)} {lab.raw_unit}".strip(),
            "display": self.kb.analytes[lab.analyte].display,
        }

    def _lab(self, spec: schema.LabSpec) -> Result:
        analyte = self.kb.analytes[spec.analyte]
        label = f"lab {analyte.display} {spec.op} {spec.value:g} {spec.unit}"
        lab, _ = self._newest(spec.analyte, spec.within_days)
        if lab is None:
            if self._unavailable("observations"):
                return self._result(label, None, "lab results could not be read")
            return self._result(label, False, f"no result within {spec.within_days} days")
        threshold = spec.value * analyte.conversions[spec.unit]
        flagged = bool(lab.interpretation & set(spec.interpretation))
        value: Truth
        if spec.decide == "either" and flagged:
            value, how = True, "lab interpretation " + ",".join(sorted(lab.interpretation))
        elif spec.decide == "lab-first" and spec.interpretation and lab.interpretation:
            value = flagged
            how = "lab interpretation " + ",".join(sorted(lab.interpretation))
        elif (
            spec.decide == "lab-first"
            and spec.reference_range == "low"
            and lab.ref_low is not None
            and lab.comparator is None
        ):
            value, how = lab.value < lab.ref_low, "below the lab's reference range"
        elif (
            spec.decide == "lab-first"
            and spec.reference_range == "high"
            and lab.ref_high is not None
            and lab.comparator is None
        ):
            value, how = lab.value > lab.ref_high, "above the lab's reference range"
        else:
            value = _compare(spec.op, lab, threshold)
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

    def _lab_missing(self, spec: schema.LabMissingSpec) -> Result:
        analyte = self.kb.analytes[spec.analyte]
        label = f"lab_missing {analyte.display} within {spec.within_days} days"
        if self._unavailable("observations"):
            return self._result(label, None, "lab results could not be read")
        recent, newest = self._newest(spec.analyte, spec.within_days)
        if recent is not None:
            return self._result(label, False, f"result on {recent.when.isoformat()}")
        if newest is None:
            text = f"No {analyte.display} result on file"
            key = f"missing:{spec.analyte}"
        else:
            text = (
                f"No {analyte.display} result in the last {spec.within_days} days "
                f"(last: {self._lab_text(newest)})"
            )
            key = f"stale:{spec.analyte}:{newest.ref}"
        result = self._result(label, True, text)
        result.evidence = [Evidence("lab-missing", escape_markdown(text), key, None)]
        if spec.as_:
            result.bindings[spec.as_] = {
                "display": analyte.display,
                "last": self._lab_binding(newest) if newest else None,
            }
        return result

    def _in_class(self, items: list[ConceptT], include: str, exclude: str | None) -> list[ConceptT]:
        """Items whose concept is in ``include`` and not in ``exclude`` (drug-class exceptions)."""
        wanted = self.kb.valuesets[include]
        unwanted = self.kb.valuesets[exclude] if exclude else None
        return [
            item
            for item in items
            if wanted.matches(item.concept.codings, item.concept.text)
            and not (unwanted and unwanted.matches(item.concept.codings, item.concept.text))
        ]

    def _medication(self, spec: schema.MedicationSpec) -> Result:
        valueset = self.kb.valuesets[spec.valueset]
        label = f"medication {valueset.title}"
        found = self._in_class(self.record.medications, spec.valueset, spec.exclude_valueset)
        if not found:
            if self._unavailable("medications"):
                return self._result(label, None, "medications could not be read")
            return self._result(label, False)
        names = sorted({m.concept.label for m in found})
        result = self._result(label, True, ", ".join(names))
        result.evidence = [
            Evidence(
                "medication",
                f"Active medication: {escape_markdown(m.concept.label)} "
                f"({escape_markdown(valueset.title)})"
                + (f", since {m.started.isoformat()}" if m.started else ""),
                f"med:{m.ref}:{m.concept.label}",
                m.ref,
            )
            for m in found[:5]
        ]
        if spec.as_:
            result.bindings[spec.as_] = {"names": ", ".join(names), "count": len(found)}
        return result

    def _medication_before_finding(self, spec: schema.MedicationBeforeFindingSpec) -> Result:
        drugs = self.kb.valuesets[spec.medication]
        label = f"medication_before_finding {drugs.title}"
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
            if m.started is not None and drugs.matches(m.concept.codings, m.concept.text)
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
                    text = (
                        f"{escape_markdown(med.concept.label)} started {med.started.isoformat()}, "
                        f"{gap} days before {escape_markdown(finding.concept.label)} began "
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

    def _draft(self, spec: schema.DraftOrderSpec) -> Result:
        valueset = self.kb.valuesets[spec.valueset]
        label = f"draft_order {valueset.title}"
        found = self._in_class(self.record.drafts, spec.valueset, spec.exclude_valueset)
        if not found:
            return self._result(label, False)
        names = sorted({d.concept.label for d in found})
        result = self._result(label, True, ", ".join(names))
        result.evidence = [
            Evidence(
                "draft",
                f"Draft order: {escape_markdown(d.concept.label)} "
                f"({escape_markdown(valueset.title)})",
                f"draft:{d.ref}:{d.concept.label}",
                None,
            )
            for d in found
        ]
        if spec.as_:
            result.bindings[spec.as_] = {
                "names": ", ".join(names),
                "count": len(found),
                "refs": [d.ref for d in found if d.ref],
            }
        return result

    def _journal(self, spec: schema.JournalSpec) -> Result:
        label = f"journal {spec.item} {spec.op} {spec.value} on ≥{spec.min_nights} nights"
        if self._unavailable("journal"):
            return self._result(label, None, "sleep journal could not be read")
        window = self._nights_within.get(spec.within_days)
        if window is None:
            as_of = self.record.as_of
            window = self._nights_within[spec.within_days] = [
                n for n in self.record.nights if 0 <= (as_of - n.night).days <= spec.within_days
            ]
        compare = COMPARATORS[spec.op]
        hits = []
        for night in window:
            answer = night.answers.get(spec.item)
            if answer is None or isinstance(answer, bool) != isinstance(spec.value, bool):
                continue
            try:
                if compare(answer, spec.value):
                    hits.append(night)
            except TypeError:
                continue
        value = len(hits) >= spec.min_nights
        detail = f"{len(hits)} of {len(window)} nights in the last {spec.within_days} days"
        result = self._result(label, value, detail)
        if value:
            item = self.kb.journal_labels.get(spec.item, spec.item)
            answer = "" if spec.value is True else f" {spec.op} {spec.value}"
            text = f"Sleep journal: {item}{answer} on {detail}"
            result.evidence = [
                Evidence(
                    "journal",
                    escape_markdown(text),
                    f"journal:{spec.item}:{hits[0].night}:{len(hits)}",
                    hits[0].ref,
                )
            ]
            if spec.as_:
                result.bindings[spec.as_] = {
                    "nights": len(hits),
                    "of": len(window),
                    "days": spec.within_days,
                }
        return result

    def _age(self, spec: schema.AgeSpec) -> Result:
        age = self.record.age_years
        label = f"age {spec.op} {spec.years}"
        if age is None:
            return self._result(label, None, "no birth date")
        return self._result(label, COMPARATORS[spec.op](age, spec.years), f"age {age}")


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


def _word(value: Truth) -> str:
    return {True: "true", False: "false", None: "unknown"}[value]


def _trace(parts: list[Result]) -> list[str]:
    return [line for p in parts for line in p.trace]


def _kind_label(finding: Finding) -> str:
    return {"condition": "Problem", "observation": "Reported", "journal": "Sleep journal"}[
        finding.kind
    ]


class RuleEngine:
    """Runs the rules of one hook against a record; knowledge is shared, state is per call."""

    def __init__(self, kb: KnowledgeBase) -> None:
        self.kb = kb

    def run(self, hook: str, record: PatientRecord, *, explain: bool = False) -> list[RuleOutcome]:
        evaluator = Evaluator(self.kb, record, explain=explain)
        complaint = evaluator.evaluate(self.kb.policy.complaint)
        age = record.age_years
        paediatric = age is not None and age < self.kb.policy.adult_age_years
        outcomes: list[RuleOutcome] = []
        for rule in self.kb.rules_for(hook):
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
            result = evaluator.evaluate(rule.when)
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
            indicator = rule.card.indicator
            evidence = list(result.evidence)
            for escalation in rule.card.escalate:
                escalated = evaluator.evaluate(escalation.when)
                if escalated.value is True and (
                    SEVERITY[escalation.indicator] > SEVERITY[indicator]
                ):
                    indicator = escalation.indicator
                    # What made the card more urgent is evidence too (and part of its key).
                    known = {e.key for e in evidence}
                    evidence += [e for e in escalated.evidence if e.key not in known]
            outcomes.append(
                RuleOutcome(
                    rule,
                    "fired",
                    indicator=indicator,
                    evidence=evidence,
                    bindings=result.bindings,
                    trace=result.trace,
                )
            )
        return outcomes
