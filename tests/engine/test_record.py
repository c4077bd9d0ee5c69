"""Reading the record the way a clinician would: statuses, units, derived values, other patients."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from service.config import Settings
from service.engine.reader import RecordReader
from service.knowledge.base import load_knowledge
from service.knowledge.valuesets import ValueSetMatcher
from tests.factories import medication_request

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
READER = RecordReader(KB)
AS_OF = date(2026, 11, 25)


def obs(
    oid: str,
    loinc: str,
    value: float,
    unit: str,
    *,
    status: str = "final",
    when: str = "2026-11-01",
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit},
    }
    resource.update(extra)
    return resource


@pytest.mark.parametrize(
    ("loinc", "value", "unit", "analyte", "canonical"),
    [
        ("19123-9", 1.8, "mg/dL", "magnesium", 1.8),
        ("2601-3", 0.7, "mmol/L", "magnesium", 1.70135),
        ("2601-3", 1.4, "mEq/L", "magnesium", 1.70135),
        ("62292-8", 50, "nmol/L", "vitamin-d", 20.03),
        ("2276-4", 40, "ug/L", "ferritin", 40),
        ("2823-3", 3.1, "mEq/L", "potassium", 3.1),
        ("17861-6", 2.0, "mmol/L", "calcium-total", 8.016),
    ],
)
def test_units_are_normalised(
    loinc: str, value: float, unit: str, analyte: str, canonical: float
) -> None:
    record = READER.read("p1", AS_OF, [obs("o", loinc, value, unit)])
    assert record.labs[analyte][0].value == pytest.approx(canonical, rel=1e-3)


def test_an_unknown_unit_is_never_guessed() -> None:
    record = READER.read("p1", AS_OF, [obs("o", "2276-4", 40, "mg")])
    assert "ferritin" not in record.labs
    assert record.unusable_labs == 1


@pytest.mark.parametrize("status", ["preliminary", "registered", "cancelled", "entered-in-error"])
def test_only_final_amended_corrected_lab_values_count(status: str) -> None:
    record = READER.read("p1", AS_OF, [obs("o", "2276-4", 40, "ng/mL", status=status)])
    assert "ferritin" not in record.labs


def test_newest_value_first_and_reported_bounds_kept_as_bounds() -> None:
    old = obs("a", "2276-4", 20, "ng/mL", when="2026-01-01")
    new = obs("b", "2276-4", 90, "ng/mL", status="amended", when="2026-10-01")
    less_than = obs("c", "2276-4", 5, "ng/mL", when="2026-11-20")
    less_than["valueQuantity"]["comparator"] = "<"
    record = READER.read("p1", AS_OF, [old, new, less_than])
    assert [(lab.comparator, lab.value) for lab in record.labs["ferritin"]] == [
        ("<", 5),
        (None, 90),
        (None, 20),
    ]


def test_tsat_is_calculated_from_same_day_iron_and_tibc() -> None:
    iron = obs("fe", "2498-4", 50, "ug/dL")
    tibc = obs("tibc", "2500-7", 400, "ug/dL")
    record = READER.read("p1", AS_OF, [iron, tibc])
    assert record.labs["tsat"][0].value == pytest.approx(12.5)
    reported = obs("ts", "2502-3", 30, "%")
    record = READER.read("p1", AS_OF, [iron, tibc, reported])
    assert [lab.value for lab in record.labs["tsat"]] == [30]


def condition(cid: str, clinical: str | None, verification: str | None = None) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "32914008"}]},
        "recordedDate": "2026-11-01",
    }
    if clinical:
        resource["clinicalStatus"] = {"coding": [{"code": clinical}]}
    if verification:
        resource["verificationStatus"] = {"coding": [{"code": verification}]}
    return resource


@pytest.mark.parametrize(
    ("clinical", "verification", "counts"),
    [
        ("active", None, True),
        ("recurrence", "confirmed", True),
        ("relapse", "provisional", True),
        ("resolved", None, False),
        ("inactive", None, False),
        ("active", "refuted", False),
        ("active", "entered-in-error", False),
        (None, None, True),  # recent encounter diagnosis without clinicalStatus
    ],
)
def test_condition_status(clinical: str | None, verification: str | None, counts: bool) -> None:
    record = READER.read("p1", AS_OF, [condition("c", clinical, verification)])
    assert bool(record.findings) is counts


def test_another_patients_resources_are_dropped() -> None:
    foreign = obs("x", "2276-4", 10, "ng/mL", subject={"reference": "Patient/p2"})
    record = READER.read("p1", AS_OF, [foreign, obs("y", "2276-4", 80, "ng/mL")])
    assert [lab.value for lab in record.labs["ferritin"]] == [80]
    assert record.skipped == 1


def test_medication_reference_to_contained_and_bundled_medication() -> None:
    contained = {
        "resourceType": "MedicationStatement",
        "id": "ms",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "contained": [
            {
                "resourceType": "Medication",
                "id": "m0",
                "code": {"text": "Tylenol PM"},
                "ingredient": [
                    {
                        "itemCodeableConcept": {
                            "coding": [
                                {
                                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                    "code": "901813",
                                    "display": "Diphenhydramine Hydrochloride 25 mg",
                                }
                            ]
                        }
                    }
                ],
            }
        ],
        "medicationReference": {"reference": "#m0"},
    }
    referenced = medication_request("mr", medicationReference={"reference": "Medication/m1"})
    medication = {
        "resourceType": "Medication",
        "id": "m1",
        "code": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "15996",
                    "display": "mirtazapine",
                }
            ]
        },
    }
    record = READER.read("p1", AS_OF, [contained, referenced, medication])
    texts = sorted(m.concept.text for m in record.medications)
    assert any("diphenhydramine" in t for t in texts) and any("mirtazapine" in t for t in texts)
    sedating = "https://sleep-cds.example.org/fhir/ValueSet/med-sedating-antihistamine"
    matcher = ValueSetMatcher(KB.valuesets)
    assert any(
        matcher.matches(sedating, m.concept.codings, m.concept.text) for m in record.medications
    )


def test_garbage_is_skipped_and_counted_not_raised() -> None:
    junk: list[Any] = [
        None,
        3,
        "x",
        [],
        {"resourceType": "Observation", "code": 5},
        {"resourceType": "Condition", "code": {"coding": "nope"}},
    ]
    record = READER.read("p1", AS_OF, [*junk, obs("ok", "2276-4", 40, "ng/mL")])
    assert record.labs["ferritin"][0].value == 40
    assert record.skipped >= 4


def test_indication_of_an_active_medicine_is_a_finding() -> None:
    statement = {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "Tylenol PM"},
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "32914008"}]}],
        "effectiveDateTime": "2026-10-01",
    }
    stopped = {**statement, "id": "ms2", "status": "stopped"}
    record = READER.read("p1", AS_OF, [statement, stopped])
    rls = "https://sleep-cds.example.org/fhir/ValueSet/restless-legs"
    matcher = ValueSetMatcher(KB.valuesets)
    matches = [
        f for f in record.findings if matcher.matches(rls, f.concept.codings, f.concept.text)
    ]
    assert [(f.kind, f.ref) for f in matches] == [("condition", "MedicationStatement/ms1")]


def test_summary_is_plain_text_and_detail_escapes_data() -> None:
    from service.engine.cards import CardComposer
    from service.engine.rules import RuleEngine

    condition = {
        "resourceType": "Condition",
        "id": "c",
        "subject": {"reference": "Patient/p1"},
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "32914008"}]},
    }
    drug = medication_request(medicationCodeableConcept={"text": "sertraline <b>*50*</b>"})
    record = READER.read("p1", AS_OF, [condition, drug])
    cards, _ = CardComposer(KB).compose(record, RuleEngine(KB).run("patient-view", record))
    card = next(c for c in cards if c["source"]["topic"]["code"] == "medication-review")
    # The summary names the ingredient, never the record's raw text; the detail quotes the
    # record's wording with its Markdown escaped.
    assert card["summary"].startswith("Review sertraline:")
    assert "<b>" not in card["summary"] and "\\" not in card["summary"]
    assert "recorded as sertraline \\<b\\>\\*50\\*\\</b\\>" in card["detail"]
