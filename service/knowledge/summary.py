"""A clinician-facing summary of the rules, generated from the rule files (never written twice)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.knowledge import schema
from service.knowledge.base import KnowledgeBase


def describe(node: schema.Condition, kb: KnowledgeBase) -> str:
    """One condition tree in plain words."""
    if isinstance(node, schema.AllCond):
        return "all of (" + "; ".join(describe(c, kb) for c in node.all) + ")"
    if isinstance(node, schema.AnyCond):
        return "any of (" + "; ".join(describe(c, kb) for c in node.any) + ")"
    if isinstance(node, schema.NotCond):
        return "not " + describe(node.not_, kb)
    if isinstance(node, schema.AtLeastCond):
        parts = "; ".join(describe(c, kb) for c in node.at_least.of)
        return f"at least {node.at_least.count} of ({parts})"
    if isinstance(node, schema.LeafCond):
        return _LEAF_WORDS[node.operator](node.spec, kb)
    raise TypeError(type(node).__name__)  # pragma: no cover


def _finding(spec: schema.FindingSpec, kb: KnowledgeBase) -> str:
    window = f" in the last {spec.within_days} days" if spec.within_days else ""
    status = f" (status {' or '.join(spec.clinical_status)})" if spec.clinical_status else ""
    return f"{kb.valuesets[spec.valueset].title}{window}{status}"


def _lab(lab: schema.LabSpec, kb: KnowledgeBase) -> str:
    name = kb.analytes[lab.analyte].display
    text = f"{name} {lab.op} {lab.value:g} {lab.unit} (newest within {lab.within_days} days"
    if lab.interpretation:
        text += f"; lab flag {'/'.join(lab.interpretation)} decides when present"
    if lab.reference_range:
        text += f"; the lab's {lab.reference_range} limit decides when present"
    return text + ")"


def _lab_missing(spec: schema.LabMissingSpec, kb: KnowledgeBase) -> str:
    return f"no {kb.analytes[spec.analyte].display} in the last {spec.within_days} days"


def _medication(med: schema.MedicationSpec, kb: KnowledgeBase) -> str:
    if med.recent_days is not None:
        text = (
            f"{kb.valuesets[med.valueset].title} active or given in the last {med.recent_days} days"
        )
    else:
        text = f"active {kb.valuesets[med.valueset].title}"
    if med.exclude_valueset:
        text += f" except {kb.valuesets[med.exclude_valueset].title}"
    return text


def _medication_before_finding(mbf: schema.MedicationBeforeFindingSpec, kb: KnowledgeBase) -> str:
    return (
        f"{kb.valuesets[mbf.medication].title} started at most {mbf.max_days} days before "
        f"{kb.valuesets[mbf.finding].title} began"
    )


def _renal_dose(dose: schema.RenalDoseSpec, kb: KnowledgeBase) -> str:
    limits = "; ".join(
        f"{drug.name}: "
        + ", ".join(
            (f"under {b.below:g}" if b.below is not None else "otherwise")
            + f" at most {b.max_daily_mg:g} mg/day"
            for b in drug.limits
        )
        + f" ({drug.source})"
        for drug in dose.drugs
    )
    what = "a recorded daily dose above" if dose.exceeds_only else "compared with"
    return (
        f"active {kb.valuesets[dose.medication].title} with {what} the renal limit for the "
        f"newest {kb.analytes[dose.analyte].display} within {dose.within_days} days ({limits})"
    )


def _draft_order(spec: schema.DraftOrderSpec, kb: KnowledgeBase) -> str:
    return f"a draft order for {kb.valuesets[spec.valueset].title}"


def _journal(j: schema.JournalSpec, kb: KnowledgeBase) -> str:
    return (
        f"sleep journal '{j.item}' {j.op} {j.value} on at least {j.min_nights} night(s) "
        f"in the last {j.within_days} days"
    )


def _age(spec: schema.AgeSpec, kb: KnowledgeBase) -> str:
    return f"age {spec.op} {spec.years} years"


def _procedure(pr: schema.ProcedureSpec, kb: KnowledgeBase) -> str:
    text = f"{kb.valuesets[pr.valueset].title} {' or '.join(pr.states)}"
    if pr.exclude_valueset:
        text = f"{text} (not {kb.valuesets[pr.exclude_valueset].title})"
    if pr.within_days:
        text += f" in the last {pr.within_days} days"
    if pr.min_days_ago:
        text += f", at least {pr.min_days_ago} days ago"
    if pr.if_unreadable == "absent":
        text += " (unreadable counts as none)"
    return text


# One describer per leaf operator (the key in the rule files); a new operator without one fails
# tests/knowledge/test_knowledge_loading.py.
_LEAF_WORDS: dict[str, Callable[[Any, KnowledgeBase], str]] = {
    "finding": _finding,
    "lab": _lab,
    "lab_missing": _lab_missing,
    "medication": _medication,
    "medication_before_finding": _medication_before_finding,
    "renal_dose": _renal_dose,
    "draft_order": _draft_order,
    "journal": _journal,
    "age": _age,
    "procedure": _procedure,
}


def _population_lines(rule: schema.Rule) -> list[str]:
    lines = []
    if rule.population == "adult":
        lines.append(f"- **Adults only:** {rule.population_note}")
    elif rule.population == "pediatric":
        lines.append(f"- **Children only:** {rule.population_note or 'not stated'}")
    elif rule.population_note:
        lines.append(f"- **All ages:** {rule.population_note}")
    if rule.exclude_populations:
        lines.append(f"- **Not for:** {', '.join(rule.exclude_populations)}")
    return lines


def rules_markdown(kb: KnowledgeBase) -> str:
    lines = [
        "# Rules: clinician summary",
        "",
        "Generated by `sleep-cds rules-doc` from `service/knowledge/rules/`. Do not edit by hand.",
        "",
        f"No card is shown at patient-view without a sleep-movement complaint: "
        f"{describe(kb.policy.complaint, kb)}.",
        f"Adult thresholds apply from age {kb.policy.adult_age_years}. A rule for adults only "
        "says why; a rule for all ages applies to children too.",
        "",
    ]
    if kb.policy.populations:
        lines += [
            "Populations some rules leave to another rule (the rule then shows no card; when "
            "the record cannot tell, it shows none either):",
            "",
        ]
        lines += [
            f"- **{name}**: {spec.description} ({describe(spec.when, kb)})"
            for name, spec in kb.policy.populations.items()
        ]
        lines.append("")
    for rule in sorted(kb.rules, key=lambda r: (r.topic, r.id)):
        lines += [
            f"## {rule.title} (`{rule.id}` v{rule.version})",
            "",
            rule.description,
            "",
            f"- **Hooks:** {', '.join(rule.hooks)}; **topic:** {rule.topic}; "
            f"**population:** {rule.population}; **review:** {rule.review.status}",
            *_population_lines(rule),
            f"- **Fires when:** {describe(rule.when, kb)}",
            f"- **Indicator:** {rule.card.indicator}"
            + "".join(f"; {e.indicator} when {describe(e.when, kb)}" for e in rule.card.escalate),
            *[f"- **Also shows:** {describe(c, kb)}" for c in rule.card.context],
            f"- **Summary:** {rule.card.summary}",
        ]
        if rule.suggestions:
            lines.append("- **Suggestions:** " + "; ".join(s.label for s in rule.suggestions))
        lines.append("- **Sources:** " + "; ".join(f"[{s.label}]({s.url})" for s in rule.sources))
        if rule.review.notes:
            lines.append(f"- **Review notes:** {rule.review.notes}")
        lines.append("")
    return "\n".join(lines)
