"""The rule engine: a hook's rules against a record, each ending fired, not fired, not
evaluable or not applicable (population, complaint, exclusions), with evidence and bindings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from service.engine.compiler import Program
from service.engine.conditions.base import Node
from service.engine.evaluator import Evaluator
from service.engine.record import PatientRecord
from service.engine.result import Evidence, Result
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase

SEVERITY = {"info": 0, "warning": 1, "critical": 2}

Status = Literal["fired", "not-fired", "not-evaluable", "not-applicable"]


@dataclass
class RuleOutcome:
    rule: schema.Rule
    status: Status
    indicator: str | None = None
    evidence: list[Evidence] = field(default_factory=list)
    bindings: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    trace: list[str] = field(default_factory=list)


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
            result = evaluator.eval(self._populations[name])
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
        complaint = evaluator.eval(self._complaint)
        age = record.age_years
        paediatric = age is not None and age < self.kb.policy.adult_age_years
        outcomes: list[RuleOutcome] = []
        for compiled in self._rules_for(hook):
            rule, when = compiled[0], compiled[1]
            outcome = _gate(rule, paediatric, complaint)
            if outcome is None:
                result = evaluator.eval(when)
                if result.value is None:
                    outcome = RuleOutcome(
                        rule, "not-evaluable", reason="data could not be read", trace=result.trace
                    )
                elif not result.value:
                    outcome = RuleOutcome(
                        rule, "not-fired", reason="conditions not met", trace=result.trace
                    )
                else:
                    outcome = self._excluded(evaluator, rule) or _fired(evaluator, compiled, result)
            outcomes.append(outcome)
        return outcomes


def _gate(rule: schema.Rule, paediatric: bool, complaint: Result) -> RuleOutcome | None:
    """Not applicable (or not evaluable) before its conditions are read: the rule's population,
    or the sleep-movement complaint it requires."""
    if (rule.population == "adult" and paediatric) or (
        rule.population == "pediatric" and not paediatric
    ):
        return RuleOutcome(rule, "not-applicable", reason="population")
    if rule.requires_complaint and complaint.value is not True:
        status: Status = "not-applicable" if complaint.value is False else "not-evaluable"
        reason = (
            "no sleep-movement complaint in the record"
            if complaint.value is False
            else "symptom data could not be read"
        )
        return RuleOutcome(rule, status, reason=reason, trace=complaint.trace)
    return None


def _fired(evaluator: Evaluator, compiled: _Compiled, result: Result) -> RuleOutcome:
    """A fired rule's card: escalated by its true escalations, with its context's bindings and
    evidence added."""
    rule, _, escalations, contexts = compiled
    indicator = rule.card.indicator
    evidence = list(result.evidence)
    for escalation, escalation_node in zip(rule.card.escalate, escalations, strict=True):
        escalated = evaluator.eval(escalation_node)
        if escalated.value is True and (SEVERITY[escalation.indicator] > SEVERITY[indicator]):
            indicator = escalation.indicator
            # What made the card more urgent is evidence too (and part of its key).
            known = {e.key for e in evidence}
            evidence += [e for e in escalated.evidence if e.key not in known]
    bindings = result.bindings
    for context_node in contexts:
        extra = evaluator.eval(context_node)
        if extra.value is True:
            bindings = {**bindings, **extra.bindings}
            known = {e.key for e in evidence}
            evidence += [e for e in extra.evidence if e.key not in known]
    return RuleOutcome(
        rule,
        "fired",
        indicator=indicator,
        evidence=evidence,
        bindings=bindings,
        trace=result.trace,
    )
