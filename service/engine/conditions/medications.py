"""Medicine conditions: ``medication``, ``draft_order``, ``medication_before_finding`` and
``renal_dose``; value-set membership of each item comes from the evaluator."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.engine.conditions.base import Leaf, Reads, fmt, reading
from service.engine.record import Finding, LabResult, MedicationUse
from service.engine.result import Evidence, Result
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown
from service.knowledge.valuesets import phrase_pattern

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator


@dataclass(slots=True, eq=False, kw_only=True)
class MedicationNode(Leaf):
    operator = "medication"
    spec: schema.MedicationSpec
    title: str
    """The value set's title, Markdown-escaped for evidence lines."""

    @classmethod
    def build(cls, spec: schema.MedicationSpec, kb: KnowledgeBase) -> MedicationNode:
        title = kb.valuesets[spec.valueset].title
        return cls(spec=spec, label=f"medication {title}", title=escape_markdown(title))

    @classmethod
    def reads(cls, condition: schema.MedicationCond) -> Reads:
        return reading(("medications",))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.MedicationSpec = self.spec
        label = self.label
        found = ev.in_class(
            "medication", ev.record.medications, spec.valueset, spec.exclude_valueset
        )
        if spec.recent_days is not None:
            found = _given_within(ev, found, spec)
        if not found:
            if ev.unavailable("medications"):
                return ev.result(label, None, "medications could not be read")
            return ev.result(label, False)
        drugs = [ev.drug(spec.valueset, m.concept) for m in found]
        names = sorted({name for name, _ in drugs})
        result = ev.result(label, True, ", ".join(names))
        title = self.title
        result.evidence = [
            Evidence(
                "medication",
                (
                    f"Completed course: {drug_text(name, recorded)} ({title}), "
                    f"last dated {m.last.isoformat()}"
                    if m.last is not None
                    else f"Active medication: {drug_text(name, recorded)} ({title})"
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
                "days": (ev.record.as_of - since).days if since else None,
            }
        return result


@dataclass(slots=True, eq=False, kw_only=True)
class DraftOrderNode(Leaf):
    operator = "draft_order"
    spec: schema.DraftOrderSpec
    title: str

    @classmethod
    def build(cls, spec: schema.DraftOrderSpec, kb: KnowledgeBase) -> DraftOrderNode:
        title = kb.valuesets[spec.valueset].title
        return cls(spec=spec, label=f"draft_order {title}", title=escape_markdown(title))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.DraftOrderSpec = self.spec
        label = self.label
        found = ev.in_class("draft", ev.record.drafts, spec.valueset, spec.exclude_valueset)
        if not found:
            return ev.result(label, False)
        drugs = [
            ev.drug(spec.valueset, d.concept)
            if d.resource_type in ("MedicationRequest", "MedicationStatement")
            else (d.concept.label, "")
            for d in found
        ]
        names = sorted({name for name, _ in drugs})
        result = ev.result(label, True, ", ".join(names))
        title = self.title
        result.evidence = [
            Evidence(
                "draft",
                f"Draft order: {drug_text(name, recorded)} ({title})",
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


@dataclass(slots=True, eq=False, kw_only=True)
class MedicationBeforeFindingNode(Leaf):
    operator = "medication_before_finding"
    spec: schema.MedicationBeforeFindingSpec

    @classmethod
    def build(
        cls, spec: schema.MedicationBeforeFindingSpec, kb: KnowledgeBase
    ) -> MedicationBeforeFindingNode:
        label = f"medication_before_finding {kb.valuesets[spec.medication].title}"
        return cls(spec=spec, label=label)

    @classmethod
    def reads(cls, condition: schema.MedicationBeforeFindingCond) -> Reads:
        return reading(("medications", "conditions", "symptoms", "journal"))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.MedicationBeforeFindingSpec = self.spec
        label = self.label
        findings = [
            f
            for f in ev.matching_findings(
                spec.finding, ("condition", "observation", "journal"), None
            )
            if f.when is not None
        ]
        meds = [
            m
            for m in ev.record.medications
            if m.started is not None and ev.member(spec.medication, m.concept)
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
                    name, _ = ev.drug(spec.medication, med.concept)
                    text = (
                        f"{escape_markdown(name[:1].upper() + name[1:])} started "
                        f"{med.started.isoformat()}, "
                        f"{gap} days before "
                        f"{escape_markdown(ev.named(spec.finding, finding.concept))} began "
                        f"({finding.when.isoformat()})"
                    )
                    result = ev.result(label, True, text)
                    result.evidence = [
                        Evidence("temporal", text, f"temporal:{med.ref}:{finding.ref}", med.ref)
                    ]
                    return result
        if ev.unavailable("medications", "conditions", "symptoms", "journal"):
            return ev.result(label, None, "data could not be read")
        return ev.result(label, False)


@dataclass(slots=True, eq=False, kw_only=True)
class RenalDoseNode(Leaf):
    operator = "renal_dose"
    spec: schema.RenalDoseSpec
    patterns: tuple[tuple[schema.RenalDrug, re.Pattern[str], re.Pattern[str] | None], ...]
    """Each listed drug with its name pattern and its exclusion pattern."""
    scale: float
    """The spec's unit in the analyte's canonical unit."""

    @classmethod
    def build(cls, spec: schema.RenalDoseSpec, kb: KnowledgeBase) -> RenalDoseNode:
        return cls(
            spec=spec,
            label=f"renal_dose {kb.valuesets[spec.medication].title}",
            patterns=tuple(
                (drug, _names(drug.match), phrase_pattern(drug.exclude)) for drug in spec.drugs
            ),
            scale=kb.analytes[spec.analyte].conversions[spec.unit],
        )

    @classmethod
    def reads(cls, condition: schema.RenalDoseCond) -> Reads:
        return reading(("medications", "observations"), (condition.renal_dose.analyte,))

    def evaluate(self, ev: Evaluator) -> Result:
        """Each listed drug on record against its renal limit for the newest kidney result."""
        spec: schema.RenalDoseSpec = self.spec
        matched = self._matched(ev)
        if not matched:
            if ev.unavailable("medications"):
                return ev.result(self.label, None, "medications could not be read")
            return ev.result(self.label, False)
        kidney, _ = ev.newest(spec.analyte, spec.within_days)
        if kidney is None and ev.unavailable("observations"):
            return ev.result(self.label, None, "lab results could not be read")
        lines: list[str] = []
        evidence: list[Evidence] = []
        above = False
        for med, drug in matched:
            line, over = self._line(ev, med, drug, kidney)
            above = above or over
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
        result = ev.result(self.label, value, "; ".join(lines))
        if value:
            result.evidence = evidence
            if spec.as_:
                result.bindings[spec.as_] = {"lines": "; ".join(lines), "above": above}
        return result

    def _matched(self, ev: Evaluator) -> list[tuple[MedicationUse, schema.RenalDrug]]:
        """Active medicines of the class that are one of the listed drugs (the first that
        matches), read from the record's text and label."""
        meds = ev.in_class("medication", ev.record.medications, self.spec.medication, None)
        matched = []
        for med in meds:
            text = f"{med.concept.text} | {med.concept.label.lower()}"
            for drug, include, exclude in self.patterns:
                if include.search(text) and not (exclude is not None and exclude.search(text)):
                    matched.append((med, drug))
                    break
        return matched

    def _line(
        self, ev: Evaluator, med: MedicationUse, drug: schema.RenalDrug, kidney: LabResult | None
    ) -> tuple[str, bool]:
        """The drug's dose against its limit in the kidney result's band, in words, and whether
        the recorded dose is above it."""
        spec, scale = self.spec, self.scale
        # The ingredient in plain words ("gabapentin"), the record's wording after it.
        ingredient, recorded = ev.drug(spec.medication, med.concept)
        name = f"{ingredient} (recorded as {recorded})" if recorded else ingredient
        dose = f"{fmt(med.daily_mg)} mg/day" if med.daily_mg is not None else None
        display = ev.kb.analytes[spec.analyte].display
        if kidney is None:
            days = spec.within_days
            return f"{name}: renal limit not checked (no {display} in the last {days} days)", False
        level = kidney.value / scale
        if kidney.comparator in ("<", "<="):
            level -= 1e-9  # "<15" lies in the band below 15
        limit = next(b for b in drug.limits if b.below is None or level < b.below)
        where = (
            f"the renal limit of {fmt(limit.max_daily_mg)} mg/day for {display} "
            f"{kidney.comparator or ''}{fmt(kidney.value / scale)} {ev.kb.show_unit(spec.unit)}"
        )
        above = False
        if dose is None:
            line = f"{name}: dose not on record; {where}"
        elif med.daily_mg is not None and med.daily_mg > limit.max_daily_mg:
            above = True
            line = f"{name}: {dose} is above {where}"
        else:
            line = f"{name}: {dose} is within {where}"
        return f"{line} ({drug.source})", above


def _names(names: tuple[str, ...]) -> re.Pattern[str]:
    pattern = phrase_pattern(names)
    assert pattern is not None  # the schema requires at least one name
    return pattern


def _given_within(
    ev: Evaluator, active: list[MedicationUse], spec: schema.MedicationSpec
) -> list[MedicationUse]:
    """Active medicines (an ongoing course is being given now) and completed courses whose
    last date falls within ``recent_days``."""
    assert spec.recent_days is not None
    as_of, window = ev.record.as_of, spec.recent_days
    recent = list(active)
    completed = ev.in_class(
        "completed",
        ev.record.completed_medications,
        spec.valueset,
        spec.exclude_valueset,
    )
    recent += [m for m in completed if m.last is not None and 0 <= (as_of - m.last).days <= window]
    return recent


def drug_text(name: str, recorded: str) -> str:
    """Evidence wording of a medicine: "sertraline, recorded as sertraline 50 MG Oral Tablet"."""
    text = escape_markdown(name)
    return f"{text}, recorded as {escape_markdown(recorded)}" if recorded else text
