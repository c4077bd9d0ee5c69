"""Every drug class the rules use is complete against a clinician-reviewable reference list.

``drug_classes.yaml`` names each ingredient of each class with an RxNorm clinical-drug (SCD)
name and, where the ValueSet lists one, its ATC code. An EHR may send any of three things: an
SCD the service does not list (only its display says what it is), free text, or an ATC code. For
each, a MedicationRequest is read the way the service reads one and must land in the class, and
the card must name the ingredient in plain words. A drug missing from a ValueSet fails loudly here.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.engine.reader import RecordReader
from service.knowledge.base import load_knowledge
from service.knowledge.valuesets import ValueSetIndex, ValueSetMatcher
from tests.factories import medication_request
from tests.knowledge.test_fhir_profiles import UNION_IDS, union_members
from tests.knowledge.test_fhir_profiles import valueset as valueset_json

SETTINGS = Settings()
KB = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
READER = RecordReader(KB)
MATCHER = ValueSetMatcher(KB.valuesets)
AS_OF = date(2026, 6, 1)
BASE = "https://sleep-cds.example.org/fhir/ValueSet/"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
UNLISTED_RXCUI = "0"  # no RxCUI is 0: stands for an SCD code the service does not list
REFERENCE: dict[str, Any] = yaml.safe_load(
    (Path(__file__).with_name("drug_classes.yaml")).read_text(encoding="utf-8")
)
NEGATIVE = REFERENCE.pop("not-rls-aggravating")
# Each union ValueSet (med-rls-aggravating, ...) and its member classes, from fhir_profiles.
UNIONS = {vs_id: union_members(valueset_json(vs_id)) for vs_id in UNION_IDS}

CASES = [
    pytest.param(vs_id, entry, id=f"{vs_id}:{entry['ingredient']}")
    for vs_id, entries in REFERENCE.items()
    for entry in entries
]


def valueset(vs_id: str) -> ValueSetIndex:
    return KB.valuesets[BASE + vs_id]


def medication(concept: dict[str, Any]) -> tuple[tuple[tuple[str, str], ...], str, str]:
    """The concept of a MedicationRequest as the record reader builds it."""
    request = medication_request(
        patient_id="p", authoredOn="2026-01-01", medicationCodeableConcept=concept
    )
    record = READER.read("p", AS_OF, [request])
    (use,) = record.medications
    return use.concept.codings, use.concept.text, use.concept.label


def variants(entry: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(how it was coded, medicationCodeableConcept, the name the card must show)."""
    name = entry["ingredient"]
    found = [
        (
            "unlisted SCD code with its display",
            {"coding": [{"system": RXNORM, "code": UNLISTED_RXCUI, "display": entry["scd"]}]},
            name,
        ),
        ("ingredient name as free text", {"text": name.capitalize()}, name),
    ]
    if "atc" in entry:
        atc_only = {"coding": [{"system": ATC, "code": entry["atc"]}]}
        found.append(("ATC code only", atc_only, name))
    return found


@pytest.mark.parametrize(("vs_id", "entry"), CASES)
def test_each_ingredient_is_matched_and_named(vs_id: str, entry: dict[str, Any]) -> None:
    classes = [vs_id] + [union for union, members in UNIONS.items() if vs_id in members]
    for how, concept, expected_name in variants(entry):
        codings, text, label = medication(concept)
        for class_id in classes:
            index = valueset(class_id)
            assert MATCHER.matches(index.url, codings, text), (
                f"{entry['ingredient']} ({how}) not in {class_id}"
            )
            names = index.drug_names(codings, text, label)
            assert names == (expected_name,), f"{class_id} names {how} as {names}"


@pytest.mark.parametrize(("vs_id", "entry"), CASES)
def test_atc_code_of_the_reference_is_in_the_valueset(vs_id: str, entry: dict[str, Any]) -> None:
    if "atc" in entry:
        assert (ATC, entry["atc"]) in valueset(vs_id).codes


@pytest.mark.parametrize("vs_id", sorted(REFERENCE))
def test_every_ingredient_the_valueset_names_is_on_the_reference_list(vs_id: str) -> None:
    """The other direction: a drug added to a ValueSet is added to the reviewed list too."""
    index = valueset(vs_id)
    named = set(index.synonyms) - set(index.products)
    entries = REFERENCE[vs_id]
    listed = {e["ingredient"] for e in entries}
    assert named <= listed, f"{vs_id}: not on the reference list: {sorted(named - listed)}"


@pytest.mark.parametrize(("vs_id", "entry"), CASES)
def test_brands_name_their_ingredients(vs_id: str, entry: dict[str, Any]) -> None:
    """A brand in free text is named by its ingredient ("Zoloft 50mg" -> sertraline)."""
    index = valueset(vs_id)
    for brand, ingredients in index.products.items():
        if ingredients == (entry["ingredient"],):
            codings, text, label = medication({"text": f"{brand.title()} 10 mg"})
            assert index.drug_names(codings, text, label) == ingredients, brand


@pytest.mark.parametrize("scd", NEGATIVE)
def test_rls_treatments_bronchodilators_and_opioids_are_not_rls_aggravators(scd: str) -> None:
    unlisted = {"system": RXNORM, "code": UNLISTED_RXCUI, "display": scd}
    codings, text, _ = medication({"coding": [unlisted]})
    for class_id in ("med-rls-aggravating", "med-rls-high-risk"):
        assert not MATCHER.matches(BASE + class_id, codings, text), (scd, class_id)


def test_tramadol_is_the_opioid_that_is_flagged() -> None:
    codings, text, _ = medication({"text": "Tramadol 50 mg tablet"})
    assert MATCHER.matches(BASE + "med-rls-aggravating", codings, text)


@pytest.mark.parametrize(("vs_id", "entry"), CASES)
def test_an_ingredient_matches_no_other_class(vs_id: str, entry: dict[str, Any]) -> None:
    """A synonym of one class never catches another class's drug ("orap" is not "orapred")."""
    codings, text, _ = medication({"text": entry["ingredient"]})
    for other in REFERENCE:
        if other != vs_id:
            assert not MATCHER.matches(BASE + other, codings, text), (entry["ingredient"], other)


def test_a_brand_mark_for_an_unknown_synonym_is_refused() -> None:
    """A brand mark that names no synonym, or an ingredient the class lacks, stops start-up."""
    from service.errors import KnowledgeError
    from service.knowledge.valuesets import SYNONYM_INGREDIENT_URL, TEXT_SYNONYM_URL, index_valueset

    def with_mark(synonym: str, ingredient: str) -> dict[str, Any]:
        return {
            "url": BASE + "med-test",
            "extension": [
                {"url": TEXT_SYNONYM_URL, "valueString": "sertraline"},
                {"url": TEXT_SYNONYM_URL, "valueString": "zoloft"},
                {
                    "url": SYNONYM_INGREDIENT_URL,
                    "extension": [
                        {"url": "synonym", "valueString": synonym},
                        {"url": "ingredient", "valueString": ingredient},
                    ],
                },
            ],
        }

    assert index_valueset(with_mark("zoloft", "sertraline")).products == {"zoloft": ("sertraline",)}
    with pytest.raises(KnowledgeError, match="names no text synonym"):
        index_valueset(with_mark("paxil", "sertraline"))
    with pytest.raises(KnowledgeError, match="unknown ingredients"):
        index_valueset(with_mark("zoloft", "paroxetine"))
