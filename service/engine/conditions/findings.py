"""``finding`` and ``procedure``: coded concepts on the record (problems, reported symptoms,
journal answers, studies ordered or done) in a value set."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING

from service.engine.conditions.base import Leaf, Reads, reading
from service.engine.record import Finding, ProcedureEvent
from service.engine.result import Evidence, Result
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase
from service.knowledge.templates import escape_markdown

if TYPE_CHECKING:
    from service.engine.evaluator import Evaluator

CATEGORIES = {"condition": "conditions", "observation": "symptoms", "journal": "journal"}
"""The data category each finding kind is read from."""


@dataclass(slots=True, eq=False, kw_only=True)
class FindingNode(Leaf):
    operator = "finding"
    spec: schema.FindingSpec
    categories: tuple[str, ...]

    @classmethod
    def build(cls, spec: schema.FindingSpec, kb: KnowledgeBase) -> FindingNode:
        label = f"finding {kb.valuesets[spec.valueset].title}"
        return cls(spec=spec, label=label, categories=tuple(CATEGORIES[k] for k in spec.kinds))

    @classmethod
    def reads(cls, condition: schema.FindingCond) -> Reads:
        return reading(tuple(CATEGORIES[k] for k in condition.finding.kinds))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.FindingSpec = self.spec
        found = ev.matching_findings(
            spec.valueset, spec.kinds, spec.within_days, spec.undated_conditions == "include"
        )
        if spec.clinical_status:
            found = [f for f in found if f.status in spec.clinical_status]
        if not found:
            if ev.unavailable(*self.categories):
                return ev.result(self.label, None, "symptom data could not be read")
            return ev.result(self.label, False)
        names = sorted({ev.named(spec.valueset, f.concept) for f in found})
        evidence = [
            Evidence(
                "finding",
                f"{kind_label(f)}: {escape_markdown(ev.named(spec.valueset, f.concept))}"
                + (f" (since {f.when.isoformat()})" if f.when else ""),
                f"finding:{f.ref}:{f.when}",
                f.ref if f.kind != "journal" else f.ref.split("#")[0],
            )
            for f in found[:5]
        ]
        result = ev.result(self.label, True, ", ".join(names))
        result.evidence = evidence
        if spec.as_:
            first = min((f.when for f in found if f.when), default=None)
            binding = {"names": ", ".join(names), "count": len(found), "since": first}
            result.bindings[spec.as_] = binding
        return result


@dataclass(slots=True, eq=False, kw_only=True)
class ProcedureNode(Leaf):
    operator = "procedure"
    spec: schema.ProcedureSpec
    title: str

    @classmethod
    def build(cls, spec: schema.ProcedureSpec, kb: KnowledgeBase) -> ProcedureNode:
        title = kb.valuesets[spec.valueset].title
        label = f"procedure {title} {'/'.join(spec.states)}"
        return cls(spec=spec, label=label, title=escape_markdown(title))

    @classmethod
    def reads(cls, condition: schema.ProcedureCond) -> Reads:
        return reading(("procedures",), (), (condition.procedure.valueset,))

    def evaluate(self, ev: Evaluator) -> Result:
        spec: schema.ProcedureSpec = self.spec
        label = self.label
        as_of = ev.record.as_of
        found = []
        for event in ev.record.procedures:
            if event.state not in spec.states or not ev.member(spec.valueset, event.concept):
                continue
            if spec.exclude_valueset and ev.member(spec.exclude_valueset, event.concept):
                continue
            age = None if event.when is None else (as_of - event.when).days
            if spec.within_days is not None and (age is None or age > spec.within_days):
                continue
            if spec.min_days_ago and (age is None or age < spec.min_days_ago):
                continue
            found.append(event)
        if not found:
            if ev.unavailable("procedures") and spec.if_unreadable == "unknown":
                return ev.result(label, None, "procedures could not be read")
            return ev.result(label, False)
        found.sort(key=event_date, reverse=True)
        names = sorted({ev.named(spec.valueset, e.concept) for e in found})
        result = ev.result(label, True, ", ".join(names))
        title = self.title
        result.evidence = [
            Evidence(
                "procedure",
                f"{'Done' if e.state == 'done' else 'Ordered'}: "
                f"{escape_markdown(ev.named(spec.valueset, e.concept))}"
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


def event_date(event: ProcedureEvent) -> date:
    return event.when or date.min


def kind_label(finding: Finding) -> str:
    return {"condition": "Problem", "observation": "Reported", "journal": "Sleep journal"}[
        finding.kind
    ]
