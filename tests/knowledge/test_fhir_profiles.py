"""Consistency checks for the FHIR R4 knowledge artifacts in ``fhir_profiles/``.

The conventions are in ``docs/knowledge-format.md``. Every check here reads the JSON as data, so
a wrong code, a missing member or a broken union makes a test fail.
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
BASE = "https://sleep-cds.example.org/fhir/"
CS_URL = BASE + "CodeSystem/sleep-cds"
SYNONYM_URL = BASE + "StructureDefinition/text-synonym"
EVIDENCE_URL = BASE + "StructureDefinition/code-evidence"
SYNONYM_INGREDIENT_URL = BASE + "StructureDefinition/synonym-ingredient"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
LOINC = "http://loinc.org"

FILE_NAMES = sorted(p.name for p in PROFILES.glob("*.json"))

REQUIRED_VALUESETS = {
    # symptoms and diagnoses
    "hypnic-jerks",
    "restless-legs",
    "plmd",
    "leg-cramps",
    "myoclonus",
    "other-sleep-movement",
    "sleep-movement-complaint",
    "insomnia",
    "daytime-sleepiness",
    "fatigue",
    "paresthesia",
    "numbness",
    "muscle-weakness",
    "balance-disorder",
    "focal-neuro-signs",
    "seizure",
    "osa",
    "ckd",
    "esrd",
    "pregnancy",
    "iron-overload",
    "iron-deficiency",
    "hypothyroidism",
    "hypomagnesemia",
    "hypokalemia",
    "hypocalcemia",
    "vitamin-d-deficiency",
    # labs
    "lab-magnesium",
    "lab-potassium",
    "lab-calcium-total",
    "lab-calcium-corrected",
    "lab-calcium-ionized",
    "lab-vitamin-d-25oh",
    "lab-ferritin",
    "lab-iron",
    "lab-tibc",
    "lab-tsat",
    "lab-tsh",
    "lab-creatinine",
    "lab-egfr",
    "lab-hba1c",
    "lab-glucose-fasting",
    "lab-glucose",
    "lab-vitamin-b12",
    "lab-albumin",
    # scores
    "score-epworth",
    "score-stop-bang",
    "score-irls",
    # drug classes
    "med-ssri",
    "med-snri",
    "med-mirtazapine",
    "med-tca",
    "med-antipsychotic-d2",
    "med-antiemetic-d2",
    "med-sedating-antihistamine",
    "med-lithium",
    "med-beta2-agonist",
    "med-methylxanthine",
    "med-stimulant",
    "med-decongestant",
    "med-caffeine",
    "med-tramadol",
    "med-dopaminergic-rls",
    "med-alpha2delta",
    "med-iron",
    "med-iv-iron",
    "med-ppi",
    "med-diuretic",
    "med-rls-neutral-antidepressants",
    "med-rls-aggravating",
    "med-rls-high-risk",
    "med-bronchodilator-stimulant",
    # orders
    "order-polysomnography",
    "order-home-sleep-test",
    "order-iron-studies",
}

EXPECTED_UNIONS = {
    "sleep-movement-complaint": {
        "hypnic-jerks",
        "restless-legs",
        "plmd",
        "leg-cramps",
        "myoclonus",
        "other-sleep-movement",
    },
    "focal-neuro-signs": {"numbness", "muscle-weakness", "balance-disorder"},
    "med-rls-aggravating": {
        "med-ssri",
        "med-snri",
        "med-mirtazapine",
        "med-tca",
        "med-antipsychotic-d2",
        "med-antiemetic-d2",
        "med-sedating-antihistamine",
        "med-lithium",
        "med-stimulant",
        "med-decongestant",
        "med-caffeine",
        "med-tramadol",
    },
    "med-bronchodilator-stimulant": {"med-beta2-agonist", "med-methylxanthine"},
    "med-rls-high-risk": {
        "med-mirtazapine",
        "med-sedating-antihistamine",
        "med-antipsychotic-d2",
        "med-antiemetic-d2",
    },
    "order-iron-studies": {"lab-ferritin", "lab-iron", "lab-tibc", "lab-tsat"},
}

JOURNAL_ITEM_TYPES = {
    "night-date": "date",
    "bedtime": "time",
    "sleep-onset-latency-min": "integer",
    "total-sleep-h": "decimal",
    "jerk-count": "integer",
    "jerk-awakenings": "integer",
    "jerk-timing": "choice",
    "seizure-features": "boolean",
    "urge-to-move": "boolean",
    "worse-at-rest": "boolean",
    "relieved-by-movement": "boolean",
    "evening-worse": "boolean",
    "cramp-pain": "boolean",
    "tingling-numbness": "boolean",
    "weakness-balance": "boolean",
    "partner-observed-kicks": "choice",
    "caffeine-after-14": "boolean",
    "late-exercise": "boolean",
    "stress-level": "integer",
    "alcohol-drinks": "integer",
    "nicotine-evening": "boolean",
    "screens-in-bed": "boolean",
    "daytime-exhaustion": "integer",
    "dozed-off": "boolean",
    "new-medicines": "string",
}

# RxCUIs / ATC codes of the documented exceptions: bupropion, trazodone, doxepin.
NEUTRAL_RXCUIS = {"42347", "10737", "3638"}
NEUTRAL_ATC = {"N06AX12", "N06AX05", "N06AA12"}
NEUTRAL_NAMES = ("bupropion", "trazodone", "doxepin")


@cache
def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PROFILES / name).read_text(encoding="utf-8"))
    return data


def resources() -> list[dict[str, Any]]:
    return [load(n) for n in FILE_NAMES]


def valuesets() -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in resources() if r["resourceType"] == "ValueSet"}


def valueset(id_: str) -> dict[str, Any]:
    return load(f"ValueSet-{id_}.json")


def codesystem() -> dict[str, Any]:
    return load("CodeSystem-sleep-cds.json")


def questionnaire() -> dict[str, Any]:
    return load("Questionnaire-sleep-journal.json")


def is_union(vs: dict[str, Any]) -> bool:
    return any("valueSet" in inc for inc in vs["compose"]["include"])


def expansion_keys(vs: dict[str, Any]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for c in vs["expansion"]["contains"]}


def synonyms(vs: dict[str, Any]) -> list[str]:
    return [e["valueString"] for e in vs.get("extension", []) if e["url"] == SYNONYM_URL]


def flat_concepts(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for c in concepts:
        out.append(c)
        out.extend(flat_concepts(c.get("concept", [])))
    return out


def cs_displays() -> dict[str, str]:
    return {c["code"]: c["display"] for c in flat_concepts(codesystem()["concept"])}


def cs_children(parent: str) -> dict[str, str]:
    top = {c["code"]: c for c in codesystem()["concept"]}
    return {c["code"]: c["display"] for c in top[parent].get("concept", [])}


def phrase_in(phrase: str, text: str) -> bool:
    """Case-insensitive, word-bounded phrase match (the documented matching rule)."""
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


VALUESET_IDS = sorted(valuesets())
UNION_IDS = [i for i in VALUESET_IDS if is_union(valueset(i))]
PLAIN_IDS = [i for i in VALUESET_IDS if not is_union(valueset(i))]


# --------------------------------------------------------------------------- files


def test_expected_artifacts_exist() -> None:
    assert "CodeSystem-sleep-cds.json" in FILE_NAMES
    assert "Questionnaire-sleep-journal.json" in FILE_NAMES
    assert "StructureDefinition-text-synonym.json" in FILE_NAMES
    assert "StructureDefinition-code-evidence.json" in FILE_NAMES
    missing = REQUIRED_VALUESETS - set(VALUESET_IDS)
    assert not missing, f"missing ValueSets: {sorted(missing)}"
    assert set(UNION_IDS) == set(EXPECTED_UNIONS)


@pytest.mark.parametrize("name", FILE_NAMES)
def test_parses_as_fhir_r4b(name: str) -> None:
    data = load(name)
    model = get_fhir_model_class(data["resourceType"]).model_validate(data)
    assert model.get_resource_type() == data["resourceType"]


@pytest.mark.parametrize("name", FILE_NAMES)
def test_json_is_two_space_indented_with_trailing_newline(name: str) -> None:
    text = (PROFILES / name).read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, ensure_ascii=False) + "\n"


@pytest.mark.parametrize("name", FILE_NAMES)
def test_file_name_and_canonical_url(name: str) -> None:
    data = load(name)
    rtype, id_ = data["resourceType"], data["id"]
    assert name == f"{rtype}-{id_}.json"
    assert data["url"].startswith(BASE)
    assert data["url"] == f"{BASE}{rtype}/{id_}"
    assert data["version"] == "1.0.0"
    assert data["status"] == "active"


def test_canonical_urls_are_unique() -> None:
    urls = [r["url"] for r in resources()]
    assert len(urls) == len(set(urls))


# --------------------------------------------------------------------------- ValueSets


@pytest.mark.parametrize("vs_id", VALUESET_IDS)
def test_valueset_metadata(vs_id: str) -> None:
    vs = valueset(vs_id)
    assert vs["experimental"] is False
    assert vs["publisher"] == "Sleep Movement CDS"
    assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", vs["name"])
    assert vs["title"].strip()
    assert len(vs["description"]) > 40


@pytest.mark.parametrize("vs_id", VALUESET_IDS)
def test_expansion_is_nonempty_and_evidence_marked(vs_id: str) -> None:
    expansion = valueset(vs_id)["expansion"]
    contains = expansion["contains"]
    assert contains
    assert expansion["timestamp"]
    assert expansion["total"] == len(contains)
    keys = [(c["system"], c["code"]) for c in contains]
    assert len(keys) == len(set(keys)), "duplicate codes in expansion"
    for entry in contains:
        marks = [e for e in entry.get("extension", []) if e["url"] == EVIDENCE_URL]
        assert len(marks) == 1, entry
        assert marks[0]["valueCode"] in {"V", "C"}, entry
        assert entry["display"].strip()


@pytest.mark.parametrize("vs_id", PLAIN_IDS)
def test_plain_compose_equals_expansion(vs_id: str) -> None:
    vs = valueset(vs_id)
    composed = {
        (inc["system"], c["code"]): c["display"]
        for inc in vs["compose"]["include"]
        for c in inc["concept"]
    }
    expanded = {(c["system"], c["code"]): c["display"] for c in vs["expansion"]["contains"]}
    assert composed == expanded


@pytest.mark.parametrize("vs_id", UNION_IDS)
def test_union_expansion_equals_member_union(vs_id: str) -> None:
    vs = valueset(vs_id)
    includes = vs["compose"]["include"]
    # one member per include: several valueSets in one include would mean intersection
    assert all(set(inc) == {"valueSet"} and len(inc["valueSet"]) == 1 for inc in includes)
    members = [inc["valueSet"][0].removeprefix(BASE + "ValueSet/") for inc in includes]
    assert set(members) == EXPECTED_UNIONS[vs_id]
    expected_keys: set[tuple[str, str]] = set()
    expected_synonyms: set[str] = set()
    for member in members:
        expected_keys |= expansion_keys(valueset(member))
        expected_synonyms |= set(synonyms(valueset(member)))
    assert expansion_keys(vs) == expected_keys
    assert set(synonyms(vs)) == expected_synonyms
    expected_products: set[tuple[str, tuple[str, ...]]] = set()
    for member in members:
        expected_products |= products(valueset(member))
    assert products(vs) == expected_products


def products(vs: dict[str, Any]) -> set[tuple[str, tuple[str, ...]]]:
    """The synonym-ingredient marks: (brand or combination synonym, its ingredients)."""
    found = set()
    for ext in vs.get("extension", []):
        if ext["url"] == SYNONYM_INGREDIENT_URL:
            parts = ext["extension"]
            (name,) = [p["valueString"] for p in parts if p["url"] == "synonym"]
            found.add((name, tuple(p["valueString"] for p in parts if p["url"] == "ingredient")))
    return found


@pytest.mark.parametrize("vs_id", VALUESET_IDS)
def test_brand_marks_name_synonyms_and_ingredients(vs_id: str) -> None:
    """A brand or combination synonym is a text synonym, and stands for ingredient synonyms."""
    vs = valueset(vs_id)
    phrases = set(synonyms(vs))
    marked = products(vs)
    brands = {name for name, _ in marked}
    assert len(brands) == len(marked), "a synonym with two ingredient lists"
    for name, ingredients in marked:
        assert name in phrases, name
        assert set(ingredients) <= phrases - brands, (name, ingredients)


@pytest.mark.parametrize("vs_id", VALUESET_IDS)
def test_text_synonyms_are_clean(vs_id: str) -> None:
    phrases = synonyms(valueset(vs_id))
    assert len(phrases) == len(set(phrases))
    for phrase in phrases:
        assert phrase == phrase.lower() == phrase.strip()
        assert phrase


def test_notable_synonyms_present() -> None:
    assert {"hypnic jerks", "sleep starts"} <= set(synonyms(valueset("hypnic-jerks")))
    assert {"restless legs", "rls"} <= set(synonyms(valueset("restless-legs")))
    assert "tylenol pm" in synonyms(valueset("med-sedating-antihistamine"))
    assert "sleep study" in synonyms(valueset("order-polysomnography"))


def test_lab_valuesets_are_loinc_only() -> None:
    for vs_id in VALUESET_IDS:
        if vs_id.startswith("lab-"):
            assert {s for s, _ in expansion_keys(valueset(vs_id))} == {LOINC}, vs_id
    assert (LOINC, "29265-6") not in expansion_keys(valueset("lab-calcium-total"))
    assert expansion_keys(valueset("lab-calcium-corrected")) == {(LOINC, "29265-6")}
    assert (LOINC, "1558-6") not in expansion_keys(valueset("lab-glucose"))
    assert expansion_keys(valueset("lab-glucose-fasting")) == {
        (LOINC, "1558-6"),
        (LOINC, "14771-0"),
    }


# --------------------------------------------------------------------------- drug classes


def test_rls_neutral_antidepressants_are_not_flagged() -> None:
    neutral = expansion_keys(valueset("med-rls-neutral-antidepressants"))
    assert {(RXNORM, c) for c in NEUTRAL_RXCUIS} <= neutral
    assert {(ATC, c) for c in NEUTRAL_ATC} <= neutral
    flagged_ids = ["med-rls-aggravating", "med-rls-high-risk"]
    flagged_ids += sorted(EXPECTED_UNIONS["med-rls-aggravating"])
    for flagged_id in flagged_ids:
        flagged = expansion_keys(valueset(flagged_id))
        assert not {(RXNORM, c) for c in NEUTRAL_RXCUIS} & flagged, flagged_id
        assert not {(ATC, c) for c in NEUTRAL_ATC} & flagged, flagged_id
        assert not neutral & flagged, flagged_id


def test_flagged_text_never_matches_the_exceptions() -> None:
    neutral_phrases = synonyms(valueset("med-rls-neutral-antidepressants"))
    assert set(NEUTRAL_NAMES) <= set(neutral_phrases)
    flagged = valueset("med-rls-aggravating")
    flagged_phrases = synonyms(flagged)
    for phrase in flagged_phrases:
        for name in NEUTRAL_NAMES:
            assert name not in phrase
        for neutral in neutral_phrases:
            assert not phrase_in(phrase, neutral), (phrase, neutral)
            assert not phrase_in(neutral, phrase), (neutral, phrase)
    for entry in flagged["expansion"]["contains"]:
        for name in NEUTRAL_NAMES:
            assert name not in entry["display"].lower(), entry


def test_fhir_example_diphenhydramine_is_flagged() -> None:
    for vs_id in ("med-sedating-antihistamine", "med-rls-aggravating", "med-rls-high-risk"):
        vs = valueset(vs_id)
        assert (RXNORM, "3498") in expansion_keys(vs), vs_id
        assert (ATC, "R06AA02") in expansion_keys(vs), vs_id
        assert any(phrase_in(p, "Tylenol PM Extra Strength") for p in synonyms(vs)), vs_id
        assert "diphenhydramine" in synonyms(vs), vs_id


def test_high_risk_is_subset_of_aggravating() -> None:
    high = valueset("med-rls-high-risk")
    aggravating = valueset("med-rls-aggravating")
    assert expansion_keys(high) < expansion_keys(aggravating)
    assert set(synonyms(high)) < set(synonyms(aggravating))


def test_context_drugs_are_not_in_aggravating() -> None:
    aggravating = expansion_keys(valueset("med-rls-aggravating"))
    for vs_id in (
        "med-dopaminergic-rls",
        "med-alpha2delta",
        "med-iron",
        "med-iv-iron",
        "med-ppi",
        "med-diuretic",
    ):
        assert not expansion_keys(valueset(vs_id)) & aggravating, vs_id


# --------------------------------------------------------------------------- CodeSystem


def test_codesystem_codes_are_unique_and_defined() -> None:
    cs = codesystem()
    assert cs["url"] == CS_URL
    assert cs["content"] == "complete"
    assert cs["hierarchyMeaning"] == "is-a"
    assert cs["caseSensitive"] is True
    concepts = flat_concepts(cs["concept"])
    codes = [c["code"] for c in concepts]
    assert len(codes) == len(set(codes))
    assert cs["count"] == len(codes)
    for c in concepts:
        assert c["display"].strip() and c["definition"].strip(), c["code"]


def test_codesystem_groupings() -> None:
    top = {c["code"] for c in codesystem()["concept"]}
    assert top == {
        "finding",
        "card-topic",
        "override-reason",
        "journal-item",
        "journal-answer",
        "score",
    }
    assert set(cs_children("finding")) == {"hypnic-jerk"}
    assert set(cs_children("card-topic")) == {
        "lifestyle",
        "lab-check",
        "medication-review",
        "sleep-study-referral",
        "neurology-referral",
    }
    assert cs_children("override-reason") == {
        "already-addressed": "Already addressed",
        "patient-declined": "Patient declined",
        "not-clinically-relevant": "Not clinically relevant",
        "will-reassess": "Will reassess later",
    }
    assert set(cs_children("score")) == {"stop-bang-score", "irls-score", "epworth-score"}
    assert set(cs_children("journal-item")) == set(JOURNAL_ITEM_TYPES)


def local_codings() -> list[tuple[str, dict[str, Any]]]:
    """Every (where, coding) pair that uses the local CodeSystem."""
    found: list[tuple[str, dict[str, Any]]] = []
    for vs_id in VALUESET_IDS:
        vs = valueset(vs_id)
        for inc in vs["compose"]["include"]:
            if inc.get("system") == CS_URL:
                found += [(f"{vs_id} compose", c) for c in inc["concept"]]
        found += [
            (f"{vs_id} expansion", c) for c in vs["expansion"]["contains"] if c["system"] == CS_URL
        ]
    for item in questionnaire()["item"]:
        found += [(item["linkId"], c) for c in item["code"] if c["system"] == CS_URL]
        found += [
            (f"{item['linkId']} answer", o["valueCoding"])
            for o in item.get("answerOption", [])
            if o["valueCoding"]["system"] == CS_URL
        ]
    return found


def test_local_codes_exist_in_codesystem() -> None:
    displays = cs_displays()
    usages = local_codings()
    assert len(usages) > len(JOURNAL_ITEM_TYPES)
    for where, coding in usages:
        assert coding["code"] in displays, (where, coding["code"])
        assert coding["display"] == displays[coding["code"]], (where, coding["code"])


# --------------------------------------------------------------------------- Questionnaire


def test_questionnaire_items() -> None:
    q = questionnaire()
    assert q["subjectType"] == ["Patient"]
    assert q["title"] == "Sleep journal (one night)"
    items = q["item"]
    link_ids = [i["linkId"] for i in items]
    assert len(link_ids) == len(set(link_ids))
    assert {i["linkId"]: i["type"] for i in items} == JOURNAL_ITEM_TYPES
    for item in items:
        first = item["code"][0]
        assert (first["system"], first["code"]) == (CS_URL, item["linkId"])
    required = {i["linkId"] for i in items if i.get("required")}
    assert required == {"night-date"}


def test_questionnaire_details() -> None:
    items = {i["linkId"]: i for i in questionnaire()["item"]}
    sleep_codes = {(c["system"], c["code"]) for c in items["total-sleep-h"]["code"]}
    assert (LOINC, "93832-4") in sleep_codes
    for link_id in ("stress-level", "daytime-exhaustion"):
        ext = {e["url"].rsplit("/", 1)[-1]: e for e in items[link_id]["extension"]}
        assert ext["minValue"]["valueInteger"] == 0
        assert ext["maxValue"]["valueInteger"] == 10
    answers = cs_children("journal-answer")
    expected_options = {
        "jerk-timing": {"falling-asleep", "during-night", "awake-daytime"},
        "partner-observed-kicks": {"yes", "no", "no-partner"},
    }
    for link_id, codes in expected_options.items():
        options = {o["valueCoding"]["code"] for o in items[link_id]["answerOption"]}
        assert options == codes
        assert options <= set(answers)
    assert not any("answerOption" in i for i in items.values() if i["type"] != "choice")


# --------------------------------------------------------------------------- extensions


@pytest.mark.parametrize(
    ("sd_id", "context", "value_type"),
    [
        ("text-synonym", "ValueSet", "string"),
        ("code-evidence", "ValueSet.expansion.contains", "code"),
    ],
)
def test_extension_definitions(sd_id: str, context: str, value_type: str) -> None:
    sd = load(f"StructureDefinition-{sd_id}.json")
    assert sd["kind"] == "complex-type"
    assert sd["type"] == "Extension"
    assert sd["derivation"] == "constraint"
    assert sd["baseDefinition"] == "http://hl7.org/fhir/StructureDefinition/Extension"
    assert sd["context"] == [{"type": "element", "expression": context}]
    elements = {e["path"]: e for e in sd["differential"]["element"]}
    assert elements["Extension.url"]["fixedUri"] == sd["url"]
    assert elements["Extension.value[x]"]["type"] == [{"code": value_type}]
