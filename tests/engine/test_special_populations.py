"""Iron advice is safe for the patient in front of it: dialysis, pregnancy, iron overload and
patients already on iron each get one iron answer, never two that contradict each other."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.config import Settings
from service.engine.prefetch import templates_for
from service.engine.reader import RecordReader
from service.engine.record import PatientRecord
from service.engine.rules import RuleEngine, RuleOutcome
from service.errors import KnowledgeError
from service.knowledge.base import load_knowledge
from tests.factories import medication_request

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
READER = RecordReader(KB)
ENGINE = RuleEngine(KB)
AS_OF = date(2026, 11, 25)
ICD = "http://hl7.org/fhir/sid/icd-10-cm"

# Rules that advise giving iron, each for its own population.
IRON_ADVICE = {
    "rls-iron-repletion",
    "rls-iv-iron-range",
    "rls-esrd-iron",
    "pregnancy-rls-iron",
    "pediatric-rls-iron",
    "rls-iron-on-therapy",
}


def _day(days_ago: int) -> str:
    return (AS_OF - timedelta(days=days_ago)).isoformat()


def condition(cid: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {"coding": [{"code": "active"}]},
        "code": {"coding": [{"system": ICD, "code": code}]},
        "subject": {"reference": "Patient/p1"},
        "recordedDate": _day(60),
    }


def lab(oid: str, loinc: str, value: float, unit: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
        "effectiveDateTime": _day(10),
        "valueQuantity": {"value": value, "unit": unit},
    }


def medication(
    mid: str, text: str, status: str, started: int, ended: int | None = None
) -> dict[str, Any]:
    period = {"start": _day(started)} | ({"end": _day(ended)} if ended is not None else {})
    return {
        "resourceType": "MedicationStatement",
        "id": mid,
        "status": status,
        "medicationCodeableConcept": {"text": text},
        "subject": {"reference": "Patient/p1"},
        "effectivePeriod": period,
    }


def record(
    *resources: dict[str, Any], age: int = 40, unavailable: tuple[str, ...] = ()
) -> PatientRecord:
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": f"{AS_OF.year - age}-01-01"}
    rls = condition("rls", "G25.81")
    return READER.read("p1", AS_OF, [patient, rls, *resources], unavailable=unavailable)


def fired(rec: PatientRecord) -> dict[str, RuleOutcome]:
    return {o.rule.id: o for o in ENGINE.run("patient-view", rec) if o.status == "fired"}


def test_completed_course_is_never_an_active_medicine() -> None:
    rec = record(medication("iv", "Ferric carboxymaltose 750 mg IV", "completed", 50, 42))
    assert rec.medications == []
    assert [m.last for m in rec.completed_medications] == [AS_OF - timedelta(days=42)]


@pytest.mark.parametrize(("ended", "caution"), [(42, True), (84, True), (100, False)])
def test_iv_iron_counts_for_twelve_weeks_after_the_last_dose(ended: int, caution: bool) -> None:
    rec = record(
        medication("iv", "Iron sucrose 200 mg IV", "completed", ended + 7, ended),
        lab("f", "2276-4", 50, "ng/mL"),
    )
    rules = fired(rec)
    assert ("rls-iron-overload-caution" in rules) is caution
    assert ("rls-iron-repletion" in rules) is not caution


def test_a_population_that_cannot_be_told_gives_no_advice_on_a_guess() -> None:
    # The medication query failed: whether the patient already takes iron is unknown.
    rec = record(lab("f", "2276-4", 40, "ng/mL"), unavailable=("medications",))
    outcome = {o.rule.id: o for o in ENGINE.run("patient-view", rec)}["rls-iron-repletion"]
    assert outcome.status == "not-evaluable"
    assert "on-iron" in outcome.reason


POPULATIONS = {
    "esrd": [condition("esrd", "N18.6")],
    "pregnant": [condition("preg", "Z34.83")],
    "overload": [condition("hh", "E83.110")],
    "on-iron": [medication("fe", "ferrous sulfate 325 mg tablet", "active", 30)],
    "child": [],
}


@pytest.mark.parametrize("ferritin", [30, 60, 90, 150])
@pytest.mark.parametrize("tsat", [12, 30, 50])
@pytest.mark.parametrize(
    "groups",
    [combo for size in range(3) for combo in itertools.combinations(sorted(POPULATIONS), size)],
)
def test_at_most_one_iron_answer(ferritin: int, tsat: int, groups: tuple[str, ...]) -> None:
    resources = [r for g in groups for r in POPULATIONS[g]]
    rec = record(
        *resources,
        lab("f", "2276-4", ferritin, "ng/mL"),
        lab("t", "2502-3", tsat, "%"),
        age=12 if "child" in groups else 40,
    )
    rules = fired(rec)
    advice = IRON_ADVICE & set(rules)
    assert len(advice) <= 1, (groups, sorted(advice))
    if "rls-iron-overload-caution" in rules:
        assert not advice, (groups, sorted(advice))
    if tsat >= 45 or "overload" in groups:
        assert not advice and "rls-iron-overload-caution" in rules
    if "esrd" in groups:
        assert advice <= {"rls-esrd-iron"}
    if "pregnant" in groups:
        # No IV-iron advice in pregnancy; with dialysis as well, no iron advice at all.
        assert advice <= ({"pregnancy-rls-iron"} if "esrd" not in groups else set())
        assert "pediatric-rls-iron" not in rules


def test_reading_completed_courses_widens_only_the_medication_queries() -> None:
    templates = templates_for(KB, "patient-view")
    assert "status=active,on-hold,completed" in templates["medicationRequests"]
    assert "status=active,intended,completed" in templates["medicationStatements"]


def test_an_unknown_population_name_stops_the_service(tmp_path: Path) -> None:
    import shutil

    import yaml

    target = tmp_path / "knowledge"
    shutil.copytree(SETTINGS.knowledge_dir, target)
    path = target / "rules" / "rls-iron-repletion.yaml"
    data = yaml.safe_load(path.read_text())
    data["exclude_populations"] = ["martians"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(KnowledgeError, match=r"exclude_populations.*martians"):
        load_knowledge(SETTINGS.fhir_profiles_dir, target)


def test_an_unconvertible_unit_is_reported_not_treated_as_missing() -> None:
    rec = record(lab("f", "2276-4", 90, "pmol/L"))
    assert "ferritin" not in rec.labs
    assert [(i.raw_value, i.raw_unit) for i in rec.ignored_labs["ferritin"]] == [(90, "pmol/L")]
    studies = fired(rec)["rls-iron-studies"]
    texts = [e.text for e in studies.evidence]
    assert any("ignored because its unit (pmol/L) cannot be converted" in t for t in texts), texts
    assert not any("No Ferritin result on file" in t for t in texts)


def _dosage(value: float, unit: str, **timing: Any) -> dict[str, Any]:
    return {"timing": timing, "doseAndRate": [{"doseQuantity": {"value": value, "code": unit}}]}


@pytest.mark.parametrize(
    ("dosages", "expected"),
    [
        ([_dosage(600, "mg", repeat={"frequency": 3, "period": 1, "periodUnit": "d"})], 1800),
        ([_dosage(2, "{capsule}", repeat={"frequency": 1, "period": 12, "periodUnit": "h"})], 1200),
        ([_dosage(0.3, "g", code={"coding": [{"code": "TID"}]})], 900),
        ([_dosage(300, "mg", repeat={"when": ["HS"]})], 300),
        ([_dosage(150, "mg", repeat={"timeOfDay": ["08:00:00", "20:00:00"]})], 300),
        (
            [
                _dosage(300, "mg", repeat={"frequency": 1, "period": 1, "periodUnit": "d"}),
                _dosage(600, "mg", repeat={"frequency": 1, "period": 1, "periodUnit": "d"}),
            ],
            900,
        ),
        ([{"text": "take as directed"}], None),
        (
            [
                _dosage(
                    300,
                    "mg",
                    repeat={"frequency": 1, "frequencyMax": 3, "period": 1, "periodUnit": "d"},
                )
            ],
            None,
        ),
        (
            [
                _dosage(300, "mg", repeat={"frequency": 3, "period": 1, "periodUnit": "d"})
                | {"asNeededBoolean": True}
            ],
            None,
        ),
        ([_dosage(5, "mL", repeat={"frequency": 3, "period": 1, "periodUnit": "d"})], None),
    ],
)
def test_daily_dose_is_read_only_when_every_part_is_exact(
    dosages: list[dict[str, Any]], expected: float | None
) -> None:
    resource = medication_request(
        "g",
        medicationCodeableConcept={"text": "gabapentin 300 MG Oral Capsule"},
        dosageInstruction=dosages,
    )
    (med,) = record(resource).medications
    assert med.daily_mg == expected


@pytest.mark.parametrize(
    ("egfr", "daily", "indicator", "words"),
    [
        (25, 1800, "warning", "1800 mg/day is above the renal limit of 700 mg/day"),
        (25, 600, "info", "600 mg/day is within the renal limit of 700 mg/day"),
        (10, 600, "warning", "above the renal limit of 300 mg/day"),
        (70, 3000, "info", "within the renal limit of 3600 mg/day"),
        (40, None, "info", "dose not on record; the renal limit of 1400 mg/day"),
    ],
)
def test_gabapentin_dose_is_compared_with_the_band_of_the_newest_egfr(
    egfr: float, daily: float | None, indicator: str, words: str
) -> None:
    dosage = (
        [_dosage(daily, "mg", repeat={"frequency": 1, "period": 1, "periodUnit": "d"})]
        if daily
        else [{"text": "as directed"}]
    )
    resource = {
        "resourceType": "MedicationStatement",
        "id": "g",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "Neurontin (gabapentin)"},
        "dosage": dosage,
    }
    rec = record(resource, condition("ckd", "N18.4"), lab("e", "98979-8", egfr, "mL/min/{1.73_m2}"))
    outcome = fired(rec)["ckd-rls"]
    assert outcome.indicator == indicator
    assert any(words in e.text for e in outcome.evidence), [e.text for e in outcome.evidence]


def test_an_adult_only_rule_must_say_why(tmp_path: Path) -> None:
    import shutil

    import yaml

    target = tmp_path / "knowledge"
    shutil.copytree(SETTINGS.knowledge_dir, target)
    path = target / "rules" / "low-magnesium.yaml"
    data = yaml.safe_load(path.read_text())
    del data["population_note"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(KnowledgeError, match="population_note"):
        load_knowledge(SETTINGS.fhir_profiles_dir, target)


def test_an_ongoing_iv_iron_course_counts_whenever_it_started() -> None:
    rec = record(
        medication("iv", "Venofer (iron sucrose) 200 mg IV monthly", "active", 400),
        lab("f", "2276-4", 50, "ng/mL"),
    )
    rules = fired(rec)
    assert "rls-iron-overload-caution" in rules
    assert not IRON_ADVICE & set(rules)


@pytest.mark.parametrize(
    ("age", "ferritin", "words"),
    [
        (40, 60, "iron still low after 12 weeks - consider IV iron"),
        (12, 60, "recheck ferritin and TSAT about 12 weeks after starting"),
        (12, 40, "consider IV iron with paediatrics"),
    ],
)
def test_oral_iron_failure_uses_the_threshold_for_the_age(
    age: int, ferritin: float, words: str
) -> None:
    from service.engine.cards import CardComposer

    rec = record(
        medication("fe", "ferrous sulfate 325 mg tablet", "active", 120),
        lab("f", "2276-4", ferritin, "ng/mL"),
        lab("t", "2502-3", 25, "%"),
        age=age,
    )
    cards, _ = CardComposer(KB).compose(rec, ENGINE.run("patient-view", rec))
    assert any(words in c["summary"] for c in cards), [c["summary"] for c in cards]
