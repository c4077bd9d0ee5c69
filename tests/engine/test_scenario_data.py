"""The scenario files themselves are honest data: valid FHIR R4 and internally consistent.

Every resource in ``tests/scenarios/*.json`` (prefetch values, searchset entries, contained
resources, draft orders) must validate with fhir.resources (R4B models, the R4-compatible
release), belong to the scenario's patient, carry no clinical date after the scenario's
``as_of``, and every sleep-journal QuestionnaireResponse must answer the project's Questionnaire
with the item's own answer type. A scenario that passes only because its data is malformed
proves nothing about the engine.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from fhir.resources.R4B import get_fhir_model_class

ROOT = Path(__file__).resolve().parents[2]
SCENARIO_DIR = ROOT / "tests" / "scenarios"
QUESTIONNAIRE = ROOT / "fhir_profiles" / "Questionnaire-sleep-journal.json"
POLICY = ROOT / "service" / "knowledge" / "policy.yaml"
HOOKS = ("patient-view", "order-select", "order-sign")
INDICATORS = ("info", "warning", "critical")
KNOWN_KEYS = {
    "description",
    "as_of",
    "hook",
    "patient_id",
    "user_id",
    "prefetch",
    "draftOrders",
    "selections",
    "expected",
    "expect_status",
    "expect_summary_contains",
    "expect_detail_contains",
    "expect_not_in_detail",
    "expect_suggestion_codes",
    "expect_delete",
    "other_patient_ids",
    "xfail",
}
# Elements holding the date a resource describes (not e.g. a batch expiry date).
CLINICAL_DATES = (
    "effectiveDateTime",
    "effectiveInstant",
    "issued",
    "onsetDateTime",
    "recordedDate",
    "abatementDateTime",
    "authoredOn",
    "authored",
    "dateAsserted",
)
# Questionnaire item type → the answer value[x] elements FHIR allows for it.
ANSWER_TYPES = {
    "boolean": {"valueBoolean"},
    "decimal": {"valueDecimal", "valueInteger"},
    "integer": {"valueInteger"},
    "date": {"valueDate"},
    "time": {"valueTime"},
    "string": {"valueString"},
    "text": {"valueString"},
    "choice": {"valueCoding"},
}

# fhir.resources checks structure and types, not required code bindings: these are checked here.
REQUIRED_CODES = {
    ("Observation", "status"): {
        "registered", "preliminary", "final", "amended", "corrected", "cancelled",
        "entered-in-error", "unknown",
    },
    ("MedicationRequest", "status"): {
        "active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft",
        "unknown",
    },
    ("MedicationRequest", "intent"): {
        "proposal", "plan", "order", "original-order", "reflex-order", "filler-order",
        "instance-order", "option",
    },
    ("MedicationStatement", "status"): {
        "active", "completed", "entered-in-error", "intended", "stopped", "on-hold", "unknown",
        "not-taken",
    },
    ("QuestionnaireResponse", "status"): {
        "in-progress", "completed", "amended", "entered-in-error", "stopped",
    },
    ("ServiceRequest", "status"): {
        "draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown",
    },
    ("ServiceRequest", "intent"): {
        "proposal", "plan", "directive", "order", "original-order", "reflex-order",
        "filler-order", "instance-order", "option",
    },
    ("Patient", "gender"): {"male", "female", "other", "unknown"},
}  # fmt: skip
CONDITION_CLINICAL = {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
CONDITION_VERIFICATION = {
    "unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error",
}  # fmt: skip

FILES = sorted(SCENARIO_DIR.glob("*.json"))


def _load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@cache
def _questionnaire() -> tuple[str, dict[str, dict[str, Any]]]:
    data = json.loads(QUESTIONNAIRE.read_text())
    items: dict[str, dict[str, Any]] = {}
    stack = list(data.get("item") or [])
    while stack:
        item = stack.pop()
        items[item["linkId"]] = item
        stack.extend(item.get("item") or [])
    return data["url"], items


@cache
def _topics() -> frozenset[str]:
    policy = yaml.safe_load(POLICY.read_text())
    return frozenset(t["code"] for t in policy["topics"])


def _top_level(scenario: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, resource) for every prefetch value, searchset entry and draft order."""
    for key, value in (scenario.get("prefetch") or {}).items():
        if value is None:
            continue
        yield f"prefetch.{key}", value
        if value.get("resourceType") == "Bundle":
            for i, entry in enumerate(value.get("entry") or []):
                yield f"prefetch.{key}.entry[{i}]", entry["resource"]
    drafts = scenario.get("draftOrders")
    if drafts is not None:
        yield "draftOrders", drafts
        for i, entry in enumerate(drafts.get("entry") or []):
            yield f"draftOrders.entry[{i}]", entry["resource"]


def _clinical(scenario: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Resources that describe the patient (not Bundles or OperationOutcomes)."""
    for where, resource in _top_level(scenario):
        if resource.get("resourceType") not in ("Bundle", "OperationOutcome"):
            yield where, resource


def _params() -> list[Any]:
    return [pytest.param(path, id=path.stem) for path in FILES]


def test_there_are_enough_scenarios() -> None:
    assert len(FILES) >= 32
    hooks = {_load(path)["hook"] for path in FILES}
    assert hooks == set(HOOKS)


@pytest.mark.parametrize("path", _params())
def test_scenario_shape(path: Path) -> None:
    scenario = _load(path)
    unknown = set(scenario) - KNOWN_KEYS
    assert not unknown, f"unknown keys {sorted(unknown)}"
    assert isinstance(scenario["description"], str) and len(scenario["description"]) >= 20
    date.fromisoformat(scenario["as_of"])
    assert scenario["hook"] in HOOKS
    assert isinstance(scenario["patient_id"], str) and scenario["patient_id"]
    assert isinstance(scenario["expected"], list)
    for card in scenario["expected"]:
        assert set(card) == {"topic", "indicator"}, card
        assert card["topic"] in _topics(), card
        assert card["indicator"] in INDICATORS, card
    if "expect_status" in scenario:
        assert scenario["expect_status"] != 200 and not scenario["expected"]
    else:
        assert isinstance(scenario.get("prefetch"), dict), "prefetch is required"
    if scenario["hook"] != "patient-view":
        assert scenario.get("draftOrders", {}).get("resourceType") == "Bundle"
    if scenario["hook"] == "order-select":
        drafts = {
            f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in scenario["draftOrders"].get("entry") or []
        }
        assert set(scenario["selections"]) <= drafts, "a selection names no draft order"
    if "xfail" in scenario:
        assert isinstance(scenario["xfail"], str) and len(scenario["xfail"]) >= 20
    expected_topics = {card["topic"] for card in scenario["expected"]}
    for key in ("expect_summary_contains", "expect_detail_contains", "expect_suggestion_codes"):
        assert set(scenario.get(key) or {}) <= expected_topics, f"{key} names an unexpected topic"


@pytest.mark.parametrize("path", _params())
def test_resources_are_valid_fhir_r4(path: Path) -> None:
    scenario = _load(path)
    for where, resource in _top_level(scenario):
        kind = resource.get("resourceType")
        try:
            get_fhir_model_class(kind).model_validate(resource)
        except Exception as exc:  # fhir.resources raises KeyError for unknown types
            pytest.fail(f"{where}: {kind} is not valid FHIR R4: {exc}")
        for i, contained in enumerate(resource.get("contained") or []):
            get_fhir_model_class(contained["resourceType"]).model_validate(contained)
            assert contained.get("id"), f"{where}.contained[{i}] has no id"


def _status(concept: dict[str, Any] | None) -> str | None:
    codings = (concept or {}).get("coding") or [{}]
    code: str | None = codings[0].get("code")
    return code


@pytest.mark.parametrize("path", _params())
def test_required_bindings_and_condition_invariants(path: Path) -> None:
    scenario = _load(path)
    resources = list(_clinical(scenario))
    resources += [
        (f"{where}.contained", contained)
        for where, resource in list(resources)
        for contained in resource.get("contained") or []
    ]
    for where, resource in resources:
        kind = resource["resourceType"]
        for (rtype, element), codes in REQUIRED_CODES.items():
            if rtype == kind and element in resource:
                assert resource[element] in codes, f"{where}.{element} = {resource[element]!r}"
        if kind != "Condition":
            continue
        clinical = _status(resource.get("clinicalStatus"))
        verification = _status(resource.get("verificationStatus"))
        assert clinical is None or clinical in CONDITION_CLINICAL, f"{where}: {clinical}"
        assert verification is None or verification in CONDITION_VERIFICATION, where
        if verification == "entered-in-error":  # con-5
            assert clinical is None, f"{where}: entered-in-error with a clinicalStatus"
        elif "problem-list-item" in {
            c.get("code") for cat in resource.get("category") or [] for c in cat.get("coding") or []
        }:  # con-3
            assert clinical is not None, f"{where}: problem-list Condition without clinicalStatus"
        if any(k.startswith("abatement") for k in resource):  # con-4
            assert clinical in ("inactive", "resolved", "remission"), where


@pytest.mark.parametrize("path", _params())
def test_prefetch_values_are_what_the_templates_ask_for(path: Path) -> None:
    """A key is null, the Patient resource, a searchset Bundle or an OperationOutcome."""
    scenario = _load(path)
    for key, value in (scenario.get("prefetch") or {}).items():
        if value is None:
            continue
        kind = value.get("resourceType")
        if key == "patient":
            assert kind in ("Patient", "OperationOutcome"), key
            if kind == "Patient":
                assert value["id"] == scenario["patient_id"]
            continue
        assert kind in ("Bundle", "OperationOutcome"), key
        if kind == "Bundle":
            assert value.get("type") == "searchset", key
            for entry in value.get("entry") or []:
                assert entry.get("resource", {}).get("id"), f"{key}: entry without a resource id"


@pytest.mark.parametrize("path", _params())
def test_resources_belong_to_the_patient(path: Path) -> None:
    scenario = _load(path)
    allowed = {scenario["patient_id"], *scenario.get("other_patient_ids", [])}
    seen: dict[str, dict[str, Any]] = {}
    for where, resource in _clinical(scenario):
        key = f"{resource['resourceType']}/{resource.get('id')}"
        if key in seen:
            assert seen[key] == resource, f"{where}: two different resources named {key}"
        seen[key] = resource
        for element in ("subject", "patient"):
            reference = (resource.get(element) or {}).get("reference", "")
            if reference.startswith("Patient/"):
                assert reference.split("/")[1] in allowed, f"{where}: {element} {reference}"


@pytest.mark.parametrize("path", _params())
def test_no_clinical_date_after_as_of(path: Path) -> None:
    scenario = _load(path)
    as_of = scenario["as_of"]
    for where, resource in _clinical(scenario):
        values = [(name, resource.get(name)) for name in CLINICAL_DATES]
        period = resource.get("effectivePeriod") or {}
        values.append(("effectivePeriod.start", period.get("start")))
        patient = resource.get("birthDate") if resource["resourceType"] == "Patient" else None
        values.append(("birthDate", patient))
        for name, value in values:
            if isinstance(value, str):
                assert value[:10] <= as_of, f"{where}.{name} {value} is after as_of {as_of}"


@pytest.mark.parametrize("path", _params())
def test_sleep_journal_answers_follow_the_questionnaire(path: Path) -> None:
    url, items = _questionnaire()
    scenario = _load(path)
    for where, resource in _clinical(scenario):
        if resource["resourceType"] != "QuestionnaireResponse":
            continue
        if resource.get("questionnaire", "").split("|")[0] != url:
            continue
        for answered in resource.get("item") or []:
            link_id = answered["linkId"]
            assert link_id in items, f"{where}: {link_id!r} is not a sleep-journal item"
            item = items[link_id]
            allowed = ANSWER_TYPES[item["type"]]
            for answer in answered.get("answer") or []:
                kinds = {k for k in answer if k.startswith("value")}
                assert kinds and kinds <= allowed, f"{where}: {link_id} answered with {kinds}"
                if item["type"] == "choice" and "answerOption" in item:
                    options = {o["valueCoding"]["code"] for o in item["answerOption"]}
                    assert answer["valueCoding"]["code"] in options, f"{where}: {link_id}"
