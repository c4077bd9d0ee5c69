"""Prefetch robustness: an EHR's prefetch is read three-valued and never silently.

- warning/information OperationOutcome entries (HAPI adds them) do not fail a key; error/fatal do,
  exactly as on the service's own FHIR query path;
- a ``medicationReference`` nobody can resolve makes medication rules not evaluable and says so
  in the card, instead of dropping the drug (and its warning card);
- the medication templates ask for the referenced Medication (``_include``).
"""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.engine.cards import MISSING_DATA_NOTE
from service.engine.prefetch import read_prefetch
from tests.conftest import FrozenClock
from tests.factories import PV, ferritin, patient_view, rls_condition, searchset

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"
MISSING = MISSING_DATA_NOTE.split(":**")[0]


def outcome(severity: str, code: str = "informational") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": "note"}],
    }


@pytest.mark.parametrize("severity", ["warning", "information"])
def test_warning_outcome_entries_do_not_fail_the_key(client: TestClient, severity: str) -> None:
    body = patient_view()
    bundle = body["prefetch"]["conditions"]
    bundle["entry"].append({"resource": outcome(severity), "search": {"mode": "outcome"}})
    response = client.post(PV, json=body)
    assert response.status_code == 200, response.text
    cards = response.json()["cards"]
    assert cards and not any(MISSING in c["detail"] for c in cards)
    read = read_prefetch(["conditions"], body["prefetch"])
    assert read.missing == [] and all(r.resourceType == "Condition" for r in read.resources)


@pytest.mark.parametrize(("severity", "code"), [("error", "processing"), ("fatal", "exception"),
                                                 ("warning", "not-supported")])  # fmt: skip
def test_failing_outcome_entries_fail_the_key(severity: str, code: str) -> None:
    prefetch = {"conditions": searchset(outcome(severity, code))}
    assert read_prefetch(["conditions"], prefetch).missing == ["conditions"]


def test_error_outcome_without_fhir_server_is_412(client: TestClient) -> None:
    body = patient_view()
    body["prefetch"]["conditions"]["entry"].append({"resource": outcome("error", "processing")})
    response = client.post(PV, json=body)
    assert response.status_code == 412, response.text
    assert "conditions" in response.json()["issue"][0]["diagnostics"]


def mirtazapine(without_medication: bool) -> tuple[dict[str, Any], datetime]:
    scenario = json.loads((SCENARIOS / "medication-reference-bundle-medication.json").read_text())
    prefetch = copy.deepcopy(scenario["prefetch"])
    if without_medication:
        bundle = prefetch["medicationRequests"]
        bundle["entry"] = [
            e for e in bundle["entry"] if e["resource"]["resourceType"] != "Medication"
        ]
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/u1", "patientId": scenario["patient_id"]},
        "prefetch": prefetch,
    }
    return body, datetime.fromisoformat(scenario["as_of"]).replace(hour=9, tzinfo=UTC)


def test_unresolvable_medication_reference_is_reported_not_dropped(
    app_factory: Callable[..., FastAPI], clock: FrozenClock
) -> None:
    body, clock.now = mirtazapine(without_medication=True)
    # RLS with a low ferritin as well: an iron card that must carry the "could not be read" note.
    pid = body["context"]["patientId"]
    body["prefetch"]["conditions"]["entry"].append({"resource": rls_condition(pid)})
    when = clock.now.date().replace(day=1).isoformat()
    body["prefetch"]["observations"]["entry"].append({"resource": ferritin(pid, 20, when=when)})
    with TestClient(app_factory(explain_enabled=True)) as client:
        explained = client.post(f"{PV}/explain", json=body).json()
        response = client.post(PV, json=body)
        resolved, _ = mirtazapine(without_medication=False)
        full = client.post(f"{PV}/explain", json=resolved).json()
    assert response.status_code == 200, response.text
    # "procedures" (optional sleep-study keys) is absent from the scenario's prefetch too.
    assert set(explained["unavailable"]) - {"procedures"} == {"medications"}
    # The rule that fires with the Medication present is not evaluable (never "false") without it.
    fired = {r["rule"] for r in full["rules"] if r["status"] == "fired"}
    statuses = {r["rule"]: r["status"] for r in explained["rules"]}
    medication_rules = {r for r in fired if "medication" in r or "drug" in r}
    assert medication_rules, fired
    assert {statuses[r] for r in medication_rules} == {"not-evaluable"}
    cards = response.json()["cards"]
    assert "medication-review" not in [c["source"]["topic"]["code"] for c in cards]
    assert cards
    for card in cards:
        assert f"{MISSING}:** medications" in card["detail"], card["detail"]


def test_medication_templates_include_the_referenced_medication(client: TestClient) -> None:
    services = client.get("/cds-services").json()["services"]
    for service in services:
        for key, template in (service.get("prefetch") or {}).items():
            if key == "medicationRequests":
                assert template.endswith("&_include=MedicationRequest:medication")
            if key == "medicationStatements":
                assert template.endswith("&_include=MedicationStatement:medication")
