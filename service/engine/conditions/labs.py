"""``lab`` and ``lab_missing``: the newest usable result of an analyte, or its absence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from service.engine.conditions.base import COMPARATORS, Leaf, Reads, fmt, reading
from service.engine.record import LabResult
from service.engine.result import Evidence, Result, Truth
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator


@dataclass(slots=True, eq=False, kw_only=True)
class LabNode(Leaf):
    operator = "lab"
    spec: schema.LabSpec
    analyte: schema.Analyte
    threshold: float
    """The spec's value in the analyte's canonical unit."""
    wanted: frozenset[str]

    @classmethod
    def build(cls, spec: schema.LabSpec, kb: KnowledgeBase) -> LabNode:
        analyte = kb.analytes[spec.analyte]
        return cls(
            spec=spec,
            label=f"lab {analyte.display} {spec.op} {spec.value:g} {spec.unit}",
            analyte=analyte,
            threshold=spec.value * analyte.conversions[spec.unit],
            wanted=frozenset(spec.interpretation),
        )

    @classmethod
    def reads(cls, condition: schema.LabCond) -> Reads:
        return reading(("observations",), (condition.lab.analyte,))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.LabSpec = self.spec
        analyte, threshold = self.analyte, self.threshold
        label = self.label
        lab, _ = ev.newest(spec.analyte, spec.within_days)
        if lab is None:
            if ev.unavailable("observations"):
                return ev.result(label, None, "lab results could not be read")
            return ev.result(label, False, f"no result within {spec.within_days} days")
        value, how = self._decide(lab)
        if ev.explain:
            if how == "flag":
                how = "lab interpretation " + ",".join(sorted(lab.interpretation))
            elif how == "low":
                how = "below the lab's reference range"
            elif how == "high":
                how = "above the lab's reference range"
            else:
                shown = f"{lab.comparator or ''}{fmt(lab.value)} {analyte.unit}"
                how = f"{shown} {spec.op} {fmt(threshold)}"
        if value is None:
            return ev.result(label, None, f"reported as a bound: {how}")
        result = ev.result(label, value, how)
        if value:
            result.evidence = [
                Evidence(
                    "lab", lab_text(ev.kb, lab), f"lab:{lab.ref}:{lab.value}:{lab.when}", lab.ref
                )
            ]
            if spec.as_:
                result.bindings[spec.as_] = lab_binding(ev.kb, lab)
        return result

    def _decide(self, lab: LabResult) -> tuple[Truth, str]:
        """The value, and how it was decided for the trace: "flag" (the lab's interpretation),
        "low"/"high" (the lab's reference range) or "threshold" (the spec's)."""
        spec = self.spec
        flagged = bool(lab.interpretation & self.wanted)
        if spec.decide == "either" and flagged:
            return True, "flag"
        if spec.decide == "lab-first" and spec.interpretation and lab.interpretation:
            return flagged, "flag"
        if spec.decide == "lab-first" and lab.comparator is None:
            if spec.reference_range == "low" and lab.ref_low is not None:
                return lab.value < lab.ref_low, "low"
            if spec.reference_range == "high" and lab.ref_high is not None:
                return lab.value > lab.ref_high, "high"
        return compare(spec.op, lab, self.threshold), "threshold"


@dataclass(slots=True, eq=False, kw_only=True)
class LabMissingNode(Leaf):
    operator = "lab_missing"
    spec: schema.LabMissingSpec
    analyte: schema.Analyte

    @classmethod
    def build(cls, spec: schema.LabMissingSpec, kb: KnowledgeBase) -> LabMissingNode:
        analyte = kb.analytes[spec.analyte]
        label = f"lab_missing {analyte.display} within {spec.within_days} days"
        return cls(spec=spec, label=label, analyte=analyte)

    @classmethod
    def reads(cls, condition: schema.LabMissingCond) -> Reads:
        return reading(("observations",), (condition.lab_missing.analyte,))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.LabMissingSpec = self.spec
        analyte = self.analyte
        label = self.label
        if ev.unavailable("observations"):
            return ev.result(label, None, "lab results could not be read")
        recent, newest = ev.newest(spec.analyte, spec.within_days)
        if recent is not None:
            return ev.result(label, False, f"result on {recent.when.isoformat()}")
        ignored = next(
            (
                i
                for i in ev.record.ignored_labs.get(spec.analyte, ())
                if (ev.record.as_of - i.when).days <= spec.within_days
            ),
            None,
        )
        if ignored is not None:
            # A result exists but its unit cannot be converted: say so, never "no result".
            shown = ev.kb.show_unit(ignored.raw_unit) or "none"
            text = escape_markdown(
                f"No usable {analyte.display} result: {fmt(ignored.raw_value)} {shown} on "
                f"{ignored.when.isoformat()} was ignored because its unit ({shown}) cannot be "
                f"converted to {ev.kb.show_unit(analyte.unit)}"
            )
            key = f"ignored:{spec.analyte}:{ignored.ref}"
        elif newest is None:
            text = escape_markdown(f"No {analyte.display} result on file")
            key = f"missing:{spec.analyte}"
        else:
            text = (
                escape_markdown(f"No {analyte.display} result in the last {spec.within_days} days ")
                + f"(last: {lab_text(ev.kb, newest)})"
            )
            key = f"stale:{spec.analyte}:{newest.ref}"
        result = ev.result(label, True, text)
        result.evidence = [Evidence("lab-missing", text, key, None)]
        if spec.as_:
            result.bindings[spec.as_] = {
                "display": analyte.display,
                "last": lab_binding(ev.kb, newest) if newest else None,
                "ignored_unit": (ev.kb.show_unit(ignored.raw_unit) or "none")
                if ignored is not None
                else None,
            }
        return result


def lab_text(kb: KnowledgeBase, lab: LabResult) -> str:
    """ "Ferritin 38 ng/mL on 2026-03-01; reference 30 to 400 ng/mL; flagged L". An open-ended
    range reads "reference > 60" or "reference < 5.7 %"; units as clinicians write them."""
    kb = kb
    analyte = kb.analytes[lab.analyte]
    unit = kb.show_unit(analyte.unit)
    bound = lab.comparator or ""
    text = f"{analyte.display} {bound}{fmt(lab.raw_value)} {kb.show_unit(lab.raw_unit) or unit}"
    if lab.raw_unit and lab.raw_unit != analyte.unit:
        text += f" (= {fmt(lab.value)} {unit})"
    text += f" on {lab.when.isoformat()}"
    low, high = lab.ref_low, lab.ref_high
    # The comparison signs are ours, not data: mid-line ">" and "< " need no Markdown escape.
    reference = ""
    if low is not None and high is not None:
        reference = f"; reference {fmt(low)} to {fmt(high)} {escape_markdown(unit)}"
    elif low is not None:
        reference = f"; reference > {fmt(low)} {escape_markdown(unit)}"
    elif high is not None:
        reference = f"; reference < {fmt(high)} {escape_markdown(unit)}"
    flags = f"; flagged {', '.join(sorted(lab.interpretation))}" if lab.interpretation else ""
    return escape_markdown(text.replace("  ", " ").rstrip()) + reference + escape_markdown(flags)


def lab_binding(kb: KnowledgeBase, lab: LabResult) -> dict[str, Any]:
    shown = kb.show_unit(lab.raw_unit)
    return {
        "value": lab.value,
        "unit": lab.unit,
        "date": lab.when,
        "raw": f"{lab.comparator or ''}{fmt(lab.raw_value)} {shown}".strip(),
        # The value in the analyte's canonical unit, with its bound ("<10 ng/mL", "12 %").
        "shown": f"{lab.comparator or ''}{fmt(lab.value)} {kb.show_unit(lab.unit)}",
        "display": kb.analytes[lab.analyte].display,
    }


def compare(op: str, lab: LabResult, threshold: float) -> Truth:
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
