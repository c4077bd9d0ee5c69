"""The knowledge base: every knowledge file loaded, cross-checked and indexed once at start-up.

Anything wrong (bad YAML, a field the schema does not know, an unresolved ValueSet, an unknown
analyte, order or template variable) raises ``KnowledgeError`` naming the file and field, and the
service does not start.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from jinja2 import meta
from pydantic import BaseModel, ValidationError

from service.errors import KnowledgeError
from service.knowledge import schema
from service.knowledge.orders import validate_order_templates
from service.knowledge.templates import TEMPLATE_GLOBALS, environment
from service.knowledge.valuesets import (
    ValueSetIndex,
    index_valuesets,
    load_profiles,
    phrase_pattern,
)

M = TypeVar("M", bound=BaseModel)

JOURNAL_URL = "https://sleep-cds.example.org/fhir/Questionnaire/sleep-journal"
CODESYSTEM_URL = "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds"


@dataclass(frozen=True)
class KnowledgeBase:
    rules: tuple[schema.Rule, ...]
    rule_files: dict[str, Path]
    valuesets: dict[str, ValueSetIndex]
    analytes: dict[str, schema.Analyte]
    unit_aliases: dict[str, str]
    lab_order_category: schema.CodingSpec
    orders: dict[str, schema.OrderSpec]
    policy: schema.Policy
    journal_url: str
    journal_items: dict[str, str]
    """linkId → item type of the sleep-journal Questionnaire."""
    journal_labels: dict[str, str]
    """linkId → what the clinician reads (the item code's display)."""
    analyte_by_code: dict[tuple[str, str], str] = field(default_factory=dict)
    not_about_patient: re.Pattern[str] | None = None
    negation_after: re.Pattern[str] | None = None
    negation_breaks: re.Pattern[str] | None = None
    journal_options: dict[str, dict[str, str]] = field(default_factory=dict)
    """linkId → answer code → display, for choice items."""
    unit_display: dict[str, str] = field(default_factory=dict)
    """UCUM code → how clinicians write it (``mL/min/{1.73_m2}`` → ``mL/min/1.73 m²``)."""

    def show_unit(self, unit: str) -> str:
        """A UCUM unit as a clinician reads it: listed spellings first, else the annotation
        braces removed (``{score}`` → ``score``)."""
        shown = self.unit_display.get(unit)
        if shown is not None:
            return shown
        return re.sub(r"\{([^}]*)\}", lambda m: m.group(1).replace("_", " "), unit)

    def rules_for(self, hook: str) -> tuple[schema.Rule, ...]:
        return tuple(r for r in self.rules if r.status == "active" and hook in r.hooks)

    def topic(self, code: str) -> schema.CodingSpec:
        for coding in self.policy.topics:
            if coding.code == code:
                return coding
        raise KeyError(code)


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False, include_url=False):
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"field '{location}': {error['msg']}")
    return "; ".join(parts)


def _load_yaml(path: Path, model: type[M]) -> M:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise KnowledgeError(f"{path}: cannot read YAML: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise KnowledgeError(f"{path}: {_format_errors(exc)}") from exc


def iter_conditions(node: schema.Condition) -> Iterator[schema.Condition]:
    """Every node of a condition tree, depth first."""
    yield node
    for child in node.children:
        yield from iter_conditions(child)


def _bindings(node: schema.Condition) -> dict[str, str]:
    """Binding name → operator, for template and suggestion checks."""
    names: dict[str, str] = {}
    for item in iter_conditions(node):
        as_ = getattr(item.spec, "as_", None) if isinstance(item, schema.LeafCond) else None
        if as_:
            names[as_] = item.operator
    return names


class _Checker:
    """Cross-reference checks shared by rules and the policy."""

    def __init__(self, kb_parts: dict[str, Any]) -> None:
        self.valuesets: dict[str, ValueSetIndex] = kb_parts["valuesets"]
        self.analytes: dict[str, schema.Analyte] = kb_parts["analytes"]
        self.journal_items: dict[str, str] = kb_parts["journal_items"]
        self.unit_aliases: dict[str, str] = kb_parts["unit_aliases"]

    def valueset(self, where: str, url: str) -> None:
        if url not in self.valuesets:
            raise KnowledgeError(f"{where}: ValueSet {url} is not in fhir_profiles/")

    def condition(self, where: str, node: schema.Condition) -> None:
        """Every value set, analyte, unit and journal item the tree's specs name exists."""
        for item in iter_conditions(node):
            if not isinstance(item, schema.LeafCond):
                continue
            operator, spec = item.operator, item.spec
            analyte = ""
            for kind, name in spec.references:
                value = getattr(spec, name)
                if kind == "valueset" and value:
                    self.valueset(f"{where} field '{operator}.{name}'", value)
                elif kind == "analyte":
                    self.analyte(where, value)
                    analyte = value
                elif kind == "unit" and value not in self.analytes[analyte].conversions:
                    conversions = self.analytes[analyte].conversions
                    raise KnowledgeError(
                        f"{where} field '{operator}.unit': {value!r} is not a known unit of "
                        f"{analyte} ({', '.join(conversions)})"
                    )
                elif kind == "journal_item" and value not in self.journal_items:
                    raise KnowledgeError(
                        f"{where} field '{operator}.item': {value!r} is not an item of the "
                        "sleep-journal Questionnaire"
                    )

    def analyte(self, where: str, name: str) -> None:
        if name not in self.analytes:
            raise KnowledgeError(f"{where} field 'analyte': unknown analyte {name!r}")


def _check_templates(path: Path, rule: schema.Rule, bindings: dict[str, str]) -> None:
    env = environment()
    allowed = set(bindings) | set(TEMPLATE_GLOBALS)
    for name, text in (("card.summary", rule.card.summary), ("card.detail", rule.card.detail)):
        try:
            parsed = env.parse(text)
        except Exception as exc:
            raise KnowledgeError(f"{path}: field '{name}': template error: {exc}") from exc
        unknown = meta.find_undeclared_variables(parsed) - allowed
        if unknown:
            raise KnowledgeError(
                f"{path}: field '{name}': unknown template variables {sorted(unknown)}; "
                f"bind them with 'as:' in 'when'"
            )


def _check_rule(path: Path, rule: schema.Rule, checker: _Checker, kb: dict[str, Any]) -> None:
    if path.stem != rule.id:
        raise KnowledgeError(f"{path}: field 'id': must equal the file name ({path.stem})")
    topics = {t.code for t in kb["policy"].topics}
    if rule.topic not in topics:
        raise KnowledgeError(f"{path}: field 'topic': {rule.topic!r} is not a card topic")
    checker.condition(f"{path}: field 'when'", rule.when)
    for i, esc in enumerate(rule.card.escalate):
        checker.condition(f"{path}: field 'card.escalate.{i}.when'", esc.when)
    bindings = _bindings(rule.when)
    for i, extra in enumerate(rule.card.context):
        checker.condition(f"{path}: field 'card.context.{i}'", extra)
        bindings.update(_bindings(extra))
    _check_templates(path, rule, bindings)
    for i, sug in enumerate(rule.suggestions):
        for order in sug.orders:
            if order not in kb["orders"]:
                raise KnowledgeError(f"{path}: field 'suggestions.{i}.orders': unknown {order!r}")
        for analyte in sug.missing_labs:
            checker.analyte(f"{path}: suggestions.{i}.missing_labs", analyte)
            if kb["analytes"][analyte].order is None:
                raise KnowledgeError(
                    f"{path}: field 'suggestions.{i}.missing_labs': {analyte} has no order code"
                )
        if sug.remove_draft and bindings.get(sug.remove_draft) != "draft_order":
            raise KnowledgeError(
                f"{path}: field 'suggestions.{i}.remove_draft': {sug.remove_draft!r} must name "
                "a draft_order binding"
            )
    if rule.population != "all" and not rule.population_note:
        raise KnowledgeError(
            f"{path}: field 'population_note': a rule for {rule.population} only must say why"
        )
    for name in rule.exclude_populations:
        if name not in kb["policy"].populations:
            raise KnowledgeError(
                f"{path}: field 'exclude_populations': {name!r} is not in policy.yaml populations"
            )
    if (
        rule.population != "all"
        and not any(isinstance(item, schema.AgeCond) for item in iter_conditions(rule.when))
        and rule.population == "pediatric"
    ):
        raise KnowledgeError(f"{path}: field 'population': paediatric rules need an age condition")


def _journal_items(
    artifacts: dict[str, dict[str, Any]],
) -> tuple[dict[str, tuple[str, str]], dict[str, dict[str, str]]]:
    """(linkId → (item type, label), linkId → answer code → display) of the sleep journal."""
    questionnaire = artifacts.get(JOURNAL_URL)
    if questionnaire is None:
        raise KnowledgeError(f"fhir_profiles: Questionnaire {JOURNAL_URL} is missing")
    items: dict[str, tuple[str, str]] = {}
    options: dict[str, dict[str, str]] = {}
    stack = list(questionnaire.get("item") or [])
    while stack:
        item = stack.pop()
        codes = item.get("code") or [{}]
        label = codes[0].get("display") or item.get("text") or item["linkId"]
        link_id = str(item["linkId"])
        items[link_id] = (str(item.get("type")), str(label))
        for option in item.get("answerOption") or []:
            coding = option.get("valueCoding") or {}
            if isinstance(coding.get("code"), str):
                options.setdefault(link_id, {})[coding["code"]] = str(
                    coding.get("display") or coding["code"]
                )
        stack.extend(item.get("item") or [])
    return items, options


def load_knowledge(profiles_dir: Path, knowledge_dir: Path) -> KnowledgeBase:
    """Load and cross-check everything; raise ``KnowledgeError`` on the first problem."""
    artifacts = load_profiles(profiles_dir)
    journal, journal_options = _journal_items(artifacts)
    valuesets = index_valuesets(artifacts)
    analyte_file = _load_yaml(knowledge_dir / "analytes.yaml", schema.AnalyteFile)
    orders_file = knowledge_dir / "orders.yaml"
    orders = _load_yaml(orders_file, _OrderFile).orders
    policy = _load_yaml(knowledge_dir / "policy.yaml", schema.Policy)
    parts: dict[str, Any] = {
        "valuesets": valuesets,
        "analytes": analyte_file.analytes,
        "unit_aliases": analyte_file.unit_aliases,
        "journal_items": {k: t for k, (t, _) in journal.items()},
        "orders": orders,
        "policy": policy,
    }
    checker = _Checker(parts)
    analyte_by_code = _analyte_by_code(analyte_file, valuesets, checker)
    _check_derived(analyte_file, checker)
    checker.condition("policy.yaml: field 'complaint'", policy.complaint)
    for name, population in policy.populations.items():
        checker.condition(f"policy.yaml: field 'populations.{name}.when'", population.when)
    validate_order_templates(orders_file, orders)

    rules, files = _load_rules(knowledge_dir / "rules", checker, parts)
    return KnowledgeBase(
        rules=tuple(rules),
        rule_files=files,
        valuesets=valuesets,
        analytes=analyte_file.analytes,
        unit_aliases=analyte_file.unit_aliases,
        lab_order_category=analyte_file.lab_order_category,
        orders=orders,
        policy=policy,
        journal_url=JOURNAL_URL,
        journal_items=parts["journal_items"],
        journal_labels={k: label for k, (_, label) in journal.items()},
        analyte_by_code=analyte_by_code,
        not_about_patient=phrase_pattern(policy.not_about_patient_phrases),
        negation_after=phrase_pattern(policy.negation_after_phrases),
        negation_breaks=phrase_pattern(policy.negation_scope_breaks),
        journal_options=journal_options,
        unit_display=analyte_file.unit_display,
    )


def _analyte_by_code(
    analyte_file: schema.AnalyteFile, valuesets: dict[str, Any], checker: _Checker
) -> dict[tuple[str, str], str]:
    """(system, code) → analyte name; each analyte's ValueSet exists and no code is in two."""
    analyte_by_code: dict[tuple[str, str], str] = {}
    for name, analyte in analyte_file.analytes.items():
        checker.valueset(f"analytes.yaml: field 'analytes.{name}.valueset'", analyte.valueset)
        for key in valuesets[analyte.valueset].codes:
            if key in analyte_by_code:
                raise KnowledgeError(
                    f"analytes.yaml: field 'analytes.{name}.valueset': code {key[1]} is also in "
                    f"{analyte_by_code[key]}"
                )
            analyte_by_code[key] = name
    return analyte_by_code


def _check_derived(analyte_file: schema.AnalyteFile, checker: _Checker) -> None:
    """A derived analyte (a ratio) names known analytes measured in one unit."""
    for name, analyte in analyte_file.analytes.items():
        if analyte.derived is None:
            continue
        where = f"analytes.yaml: field 'analytes.{name}.derived'"
        for part in (analyte.derived.numerator, analyte.derived.denominator):
            checker.analyte(where, part)
        units = {
            analyte_file.analytes[p].unit
            for p in (analyte.derived.numerator, analyte.derived.denominator)
        }
        if len(units) != 1:
            raise KnowledgeError(f"{where}: numerator and denominator need the same unit")


def _load_rules(
    folder: Path, checker: _Checker, parts: dict[str, Any]
) -> tuple[list[schema.Rule], dict[str, Path]]:
    """Every ``rules/*.yaml`` in name order, checked; the rules and the file of each rule id."""
    rules: list[schema.Rule] = []
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        rule = _load_yaml(path, schema.Rule)
        if rule.id in files:
            raise KnowledgeError(f"{path}: field 'id': duplicate rule id {rule.id}")
        _check_rule(path, rule, checker, parts)
        rules.append(rule)
        files[rule.id] = path
    if not rules:
        raise KnowledgeError(f"{folder}: no rule files")
    return rules, files


class _OrderFile(BaseModel):
    model_config = schema._Strict.model_config
    orders: dict[str, schema.OrderSpec]
