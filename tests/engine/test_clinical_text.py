"""Text a clinician can trust (issue 13 section 6) and sleep studies on the record (section 4).

Negation is scoped to the finding (NegEx-style), molar lab codes are read, evidence lines read
like a clinician writes them, and ordered or done sleep studies are read from ServiceRequest,
Procedure and DiagnosticReport.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from service.config import Settings
from service.engine.evaluator import Evaluator
from service.engine.prefetch import OPTIONAL_CATEGORIES, templates_for
from service.engine.reader import RecordReader
from service.engine.record import PatientRecord
from service.engine.rules import RuleEngine
from service.knowledge import schema
from service.knowledge.base import load_knowledge

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
READER = RecordReader(KB)
AS_OF = date(2026, 11, 25)
VS = "https://sleep-cds.example.org/fhir/ValueSet/"


def condition(text: str, cid: str = "c1") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "subject": {"reference": "Patient/p1"},
        "code": {"text": text},
        "onsetDateTime": "2026-10-01",
    }


def finding(record: PatientRecord, valueset: str) -> bool | None:
    spec = schema.FindingCond.model_validate({"finding": {"valueset": VS + valueset}})
    return Evaluator(KB, record, explain=False).evaluate(spec).value


# --- negation ----------------------------------------------------------------------------------

ASSERTED_RLS = [
    "Restless legs not controlled on gabapentin",
    "restless legs syndrome, not yet treated",
    "RLS - not improving",
    "Restless legs syndrome; denies seizures",
    "No seizures but restless legs every evening",
    "Restless legs syndrome (worse at night), no augmentation",
    "RLS, negative for neuropathy",
    "Restless legs not responding to iron",
]
NEGATED_RLS = [
    "No restless legs",
    "no RLS",
    "Denies RLS",
    "Patient denies restless legs",
    "Family history of RLS",
    "FH of restless legs syndrome",
    "Restless legs ruled out",
    "RLS was ruled out",
    "Ruled out restless legs syndrome",
    "Negative for restless legs",
    "Without restless legs",
    "Patient does not have restless legs syndrome",
    "Restless legs unlikely",
    "Never had restless legs",
]


@pytest.mark.parametrize("text", ASSERTED_RLS)
def test_a_negation_after_the_term_or_about_something_else_keeps_the_finding(text: str) -> None:
    record = READER.read("p1", AS_OF, [condition(text)])
    assert finding(record, "restless-legs") is True, text


@pytest.mark.parametrize("text", NEGATED_RLS)
def test_a_negation_before_the_term_or_a_post_negation_removes_it(text: str) -> None:
    record = READER.read("p1", AS_OF, [condition(text)])
    assert finding(record, "restless-legs") is False, text


@pytest.mark.parametrize(
    ("text", "seizure"),
    [
        ("Hypnic jerks - no seizures", False),
        ("Family history of epilepsy", False),
        ("Epilepsy ruled out; hypnic jerks", False),
        ("Epilepsy, well controlled", True),
        ("Seizure disorder not on treatment", True),
    ],
)
def test_negation_is_scoped_to_its_own_finding(text: str, seizure: bool) -> None:
    record = READER.read("p1", AS_OF, [condition(text)])
    assert finding(record, "seizure") is seizure, text


def test_codes_are_never_negated_by_text() -> None:
    resource = condition("No restless legs")
    resource["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "32914008"}]
    record = READER.read("p1", AS_OF, [resource])
    assert finding(record, "restless-legs") is True


# --- molar units -------------------------------------------------------------------------------


def lab(loinc: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": f"o-{loinc}",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": "2026-11-01",
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org"}
        | {"code": unit},
    }
    resource.update(extra)
    return resource


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "analyte", "canonical"),
    [
        ("14685-2", 148, "pmol/L", "vitamin-b12", 200.5),  # B12 molar, 148 pmol/L = 200 pg/mL
        ("14732-2", 10, "nmol/L", "folate", 4.414),
        ("14771-0", 7.0, "mmol/L", "glucose-fasting", 126.1),
        ("14800-7", 60, "umol/L", "tibc", 335.2),
    ],
)
def test_molar_codes_are_read_and_converted(
    loinc: str, value: float, unit: str, analyte: str, canonical: float
) -> None:
    record = READER.read("p1", AS_OF, [lab(loinc, value, unit)])
    assert record.labs[analyte][0].value == pytest.approx(canonical, rel=1e-3)


def test_the_observation_prefetch_asks_for_the_molar_b12_code() -> None:
    query = templates_for(KB, "patient-view")["observations"]
    assert "http://loinc.org|14685-2" in query and "http://loinc.org|2132-9" in query


# --- evidence lines ----------------------------------------------------------------------------


def evidence_of(record: PatientRecord, rule_id: str) -> list[str]:
    outcomes = RuleEngine(KB).run("patient-view", record)
    fired = next(o for o in outcomes if o.rule.id == rule_id)
    assert fired.status == "fired", (fired.status, fired.reason)
    return [e.text for e in fired.evidence]


def rls(*resources: dict[str, Any]) -> PatientRecord:
    resource = condition("Restless legs syndrome")
    resource["code"]["coding"] = [{"system": "http://snomed.info/sct", "code": "32914008"}]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-01-01"}
    return READER.read("p1", AS_OF, [patient, resource, *resources])


def test_open_ended_ranges_and_ucum_annotations_read_as_clinicians_write_them() -> None:
    egfr = lab(
        "98979-8",
        38,
        "mL/min/{1.73_m2}",
        referenceRange=[{"low": {"value": 60, "unit": "mL/min/{1.73_m2}"}}],
    )
    [line] = [t for t in evidence_of(rls(egfr), "ckd-rls") if "eGFR" in t]
    assert "eGFR 38 mL/min/1.73 m²" in line
    assert "reference > 60 mL/min/1.73 m²" in line
    assert "60 to" not in line and "{" not in line and "1.73\\_m2" not in line


def test_an_upper_bound_only_range_reads_less_than() -> None:
    hba1c = lab(
        "4548-4",
        7.9,
        "%",
        referenceRange=[{"high": {"value": 5.7, "unit": "%"}}],
        interpretation=[{"coding": [{"code": "H"}]}],
    )
    paresthesia = condition("Tingling in both feet", "c2")
    text = " ".join(evidence_of(rls(hba1c, paresthesia), "neuropathy-mimic"))
    assert "reference < 5.7 %" in text and " to 5.7" not in text


def test_one_result_read_by_two_conditions_is_listed_once() -> None:
    record = rls(lab("2276-4", 85, "ng/mL"))
    both = schema.AllCond.model_validate(
        {
            "all": [
                {
                    "lab": {"analyte": "ferritin", "op": ">", "value": 75, "unit": "ng/mL"}
                    | {"within_days": 180}
                },
                {
                    "lab": {"analyte": "ferritin", "op": "<=", "value": 100, "unit": "ng/mL"}
                    | {"within_days": 180}
                },
            ]
        }
    )
    result = Evaluator(KB, record, explain=False).evaluate(both)
    assert result.value is True
    assert [e.text for e in result.evidence] == ["Ferritin 85 ng/mL on 2026-11-01"]


def test_journal_evidence_is_a_sentence() -> None:
    nights = [
        {
            "resourceType": "QuestionnaireResponse",
            "id": f"n{day}",
            "questionnaire": KB.journal_url,
            "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "item": [
                {"linkId": "night-date", "answer": [{"valueDate": f"2026-11-{day:02d}"}]},
                {"linkId": "jerk-count", "answer": [{"valueInteger": 3}]},
                {"linkId": "caffeine-after-14", "answer": [{"valueBoolean": True}]},
            ],
        }
        for day in range(11, 25)
    ]
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "1990-01-01"}
    record = READER.read("p1", AS_OF, [patient, *nights])
    lines = [line.replace("\\", "") for line in evidence_of(record, "hypnic-jerk-lifestyle")]
    assert "Sleep journal: caffeine after 2 pm on 14 of 14 nights (last 14 days)" in lines
    assert not any(">=" in line or "==" in line or "True" in line for line in lines), lines


# --- sleep studies on the record ---------------------------------------------------------------

PSG = {"coding": [{"system": "http://snomed.info/sct", "code": "60554003"}], "text": "PSG"}


@pytest.mark.parametrize(
    ("resource", "state"),
    [
        ({"resourceType": "ServiceRequest", "status": "active", "intent": "order"}, "ordered"),
        ({"resourceType": "ServiceRequest", "status": "completed", "intent": "order"}, "done"),
        ({"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"}, None),
        ({"resourceType": "ServiceRequest", "status": "revoked", "intent": "order"}, None),
        ({"resourceType": "ServiceRequest", "status": "active", "intent": "proposal"}, None),
        ({"resourceType": "Procedure", "status": "completed"}, "done"),
        ({"resourceType": "Procedure", "status": "in-progress"}, "ordered"),
        ({"resourceType": "Procedure", "status": "entered-in-error"}, None),
        ({"resourceType": "DiagnosticReport", "status": "final"}, "done"),
        ({"resourceType": "DiagnosticReport", "status": "cancelled"}, None),
    ],
)
def test_sleep_studies_are_read_by_status(resource: dict[str, Any], state: str | None) -> None:
    full = resource | {"id": "s1", "code": PSG, "subject": {"reference": "Patient/p1"}}
    full |= {"authoredOn": "2026-11-01", "performedDateTime": "2026-11-01"}
    record = READER.read("p1", AS_OF, [full])
    assert [p.state for p in record.procedures] == ([state] if state else [])


def test_sleep_study_queries_name_the_study_codes_and_are_optional() -> None:
    templates = templates_for(KB, "patient-view")
    for key in ("serviceRequests", "procedures", "diagnosticReports"):
        assert "http://snomed.info/sct|60554003" in templates[key], key
        assert templates[key].startswith(
            {"serviceRequests": "ServiceRequest?", "procedures": "Procedure?"}.get(
                key, "DiagnosticReport?"
            )
        )
    assert {"procedures"} == OPTIONAL_CATEGORIES
    # The order hooks judge draft orders; they do not need the study queries.
    assert "serviceRequests" not in templates_for(KB, "order-sign")
