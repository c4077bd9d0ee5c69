"""Prefetch: templates derived from the rules, and what the EHR's prefetch values mean.

Each key is one FHIR query the rules need. Templates use only CDS Hooks 2.0 tokens. The knowledge
base decides which keys a hook needs (a hook whose rules read no labs asks for no labs) and which
lab codes the Observation query names, so templates are never written twice.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from service.engine.conditions import OPERATORS
from service.engine.fhir_json import UNSET, Entry, Resource, resource_of
from service.knowledge import schema
from service.knowledge.base import KnowledgeBase, iter_conditions
from service.outcome import is_failed_outcome, is_operation_outcome

PATIENT = "{{context.patientId}}"

# key → (data category, template without lab codes)
_KEYS: dict[str, tuple[str, str]] = {
    "patient": ("patient", f"Patient/{PATIENT}"),
    "conditions": (
        "conditions",
        f"Condition?patient={PATIENT}&clinical-status=active,recurrence,relapse",
    ),
    "observations": ("observations", f"Observation?patient={PATIENT}&code="),
    # social-history: US Core's pregnancy-status Observation (LOINC 82810-3) is filed there.
    "symptoms": ("symptoms", f"Observation?patient={PATIENT}&category=survey,exam,social-history"),
    "medicationRequests": (
        "medications",
        f"MedicationRequest?patient={PATIENT}&status=active,on-hold",
    ),
    "medicationStatements": (
        "medications",
        f"MedicationStatement?patient={PATIENT}&status=active,intended",
    ),
    "journal": ("journal", f"QuestionnaireResponse?patient={PATIENT}&questionnaire="),
    # Procedures and studies the rules ask about (a sleep study already ordered or done), by the
    # codes of the ValueSets they name.
    "serviceRequests": (
        "procedures",
        f"ServiceRequest?patient={PATIENT}&status=active,on-hold,completed&code=",
    ),
    "procedures": (
        "procedures",
        f"Procedure?patient={PATIENT}&status=preparation,in-progress,on-hold,completed&code=",
    ),
    "diagnosticReports": (
        "procedures",
        f"DiagnosticReport?patient={PATIENT}"
        "&status=partial,preliminary,final,amended,corrected,appended&code=",
    ),
}

KEY_CATEGORY = {key: category for key, (category, _) in _KEYS.items()}
# A drug coded only in a referenced Medication arrives in the same Bundle, so a prefetch without
# fhirServer can still name it (appended last: the status list above may still grow).
_INCLUDES = {
    "medicationRequests": "&_include=MedicationRequest:medication",
    "medicationStatements": "&_include=MedicationStatement:medication",
}
OPTIONAL_CATEGORIES = frozenset({"procedures"})
"""Data a rule reads only to hold back a recommendation (a study already done). When such a key
is absent and there is no fhirServer to fetch it from, the call goes on with the data marked
unavailable (the card says so) instead of failing with 412: an EHR configured before the key
existed still gets every card."""

_TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")


def fill_template(template: str, values: Mapping[str, str]) -> str:
    """The query a template asks for, each token's value percent-encoded as one URL component.

    Ids are validated on the way in; encoding as well means a value can never add a path segment,
    a query parameter or a second search value (``/``, ``?``, ``&``, ``,``, ``#`` are all encoded).
    A token with no value is a ``KeyError``: templates come from the knowledge base, not callers.
    """
    return _TOKEN.sub(lambda m: quote(values[m.group(1)], safe=""), template)


def needs(node: schema.Condition) -> tuple[set[str], set[str], set[str]]:
    """(data categories, analytes, procedure ValueSets) a condition tree reads."""
    categories: set[str] = set()
    analytes: set[str] = set()
    procedures: set[str] = set()
    for item in iter_conditions(node):
        needed, used, valuesets = OPERATORS[type(item)].reads(item)
        categories |= needed
        analytes |= used
        procedures |= valuesets
    return categories, analytes, procedures


def _reads_completed(trees: list[schema.Condition]) -> bool:
    return any(
        isinstance(item, schema.MedicationCond) and item.medication.recent_days is not None
        for tree in trees
        for item in iter_conditions(tree)
    )


def templates_for(kb: KnowledgeBase, hook: str) -> dict[str, str]:
    """The prefetch templates a hook's rules need, and no more."""
    rules = kb.rules_for(hook)
    categories = {"patient"}  # age decides adult vs paediatric rules
    analytes: set[str] = set()
    trees: list[schema.Condition] = []
    for rule in rules:
        trees.append(rule.when)
        trees.extend(e.when for e in rule.card.escalate)
        trees.extend(rule.card.context)
        trees.extend(kb.policy.populations[name].when for name in rule.exclude_populations)
    if any(r.requires_complaint for r in rules):
        trees.append(kb.policy.complaint)
    studies: set[str] = set()
    for tree in trees:
        needed, used, valuesets = needs(tree)
        categories |= needed
        analytes |= used
        studies |= valuesets
    for rule in rules:
        for suggestion in rule.suggestions:
            analytes.update(suggestion.missing_labs)
    templates: dict[str, str] = {}
    for key, (category, template) in _KEYS.items():
        if category not in categories:
            continue
        if key == "observations":
            codes = sorted(
                f"{system}|{code}"
                for name in analytes
                for system, code in kb.valuesets[kb.analytes[name].valueset].codes
            )
            template += ",".join(codes)
        elif key == "journal":
            template += kb.journal_url
        elif category == "medications" and _reads_completed(trees):
            template += ",completed"  # "given in the last N days" reads completed courses
        elif category == "procedures":
            template += ",".join(
                sorted(
                    f"{system}|{code}"
                    for url in studies
                    for system, code in kb.valuesets[url].codes
                )
            )
        template += _INCLUDES.get(key, "")
        templates[key] = template
    return templates


@dataclass
class PrefetchRead:
    """What the request's prefetch gave: resources, and the keys still to fetch."""

    resources: list[Any] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    paged: list[str] = field(default_factory=list)


def read_prefetch(keys: Iterable[str], prefetch: dict[str, Any] | None) -> PrefetchRead:
    """Apply the spec's prefetch semantics to each key the service asked for.

    Absent → fetch it; ``null`` → searched, nothing found; an OperationOutcome alone, or one
    inside a Bundle that reports an error (``service.outcome``) → the client failed, fetch it; a
    searchset Bundle → its entries (warning/information outcomes dropped, as the FHIR client
    does); a resource → itself. Anything else (a bare string, a list) is not what the template
    asks for: fetch it.
    """
    read = PrefetchRead()
    given = prefetch or {}
    for key in keys:
        if key not in given:
            read.missing.append(key)
            continue
        value = given[key]
        if value.__class__ is dict:
            value = resource_of(value)  # a prefetch read as plain JSON (the journal page)
        if value is None:
            continue
        if (
            not isinstance(value, Resource)
            or is_operation_outcome(value)
            or value.resourceType is UNSET
        ):
            read.missing.append(key)
            continue
        if value.resourceType != "Bundle":
            read.resources.append(value)
            continue
        entries = value.entry
        resources = [
            entry.resource
            for entry in (entries if isinstance(entries, list) else [])
            if isinstance(entry, Entry)
        ]
        outcomes = [r for r in resources if is_operation_outcome(r)]
        if any(is_failed_outcome(r) for r in outcomes):
            read.missing.append(key)
            continue
        read.resources.extend(r for r in resources if not is_operation_outcome(r))
        links = value.link
        if isinstance(links, list) and any(
            isinstance(link, dict) and link.get("relation") == "next" for link in links
        ):
            read.paged.append(key)
    return read
