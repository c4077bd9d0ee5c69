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
import yaml
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

KNOWLEDGE = Path(__file__).resolve().parents[2] / "service" / "knowledge"
# The Questionnaire item types the journal reader takes an answer of (value[x] it reads).
JOURNAL_TYPES = {"date", "time", "integer", "decimal", "choice", "boolean", "string"}

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


def union_members(vs: dict[str, Any]) -> list[str]:
    return [
        v.removeprefix(BASE + "ValueSet/")
        for inc in vs["compose"]["include"]
        for v in inc.get("valueSet", [])
    ]


def knowledge_strings() -> list[tuple[str, str]]:
    """Every (file, string) in the knowledge YAML (rules, analytes, orders, policy)."""
    found: list[tuple[str, str]] = []

    def walk(where: str, node: Any) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(where, value)
        elif isinstance(node, list):
            for value in node:
                walk(where, value)
        elif isinstance(node, str):
            found.append((where, node))

    for path in sorted(KNOWLEDGE.rglob("*.yaml")):
        walk(path.name, yaml.safe_load(path.read_text(encoding="utf-8")))
    return found


def policy() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((KNOWLEDGE / "policy.yaml").read_text(encoding="utf-8"))
    return data


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


def test_every_valueset_the_knowledge_names_resolves() -> None:
    """Rules, analytes, orders and policy name ValueSets by canonical URL: each one exists."""
    named = [(w, s) for w, s in knowledge_strings() if s.startswith(BASE + "ValueSet/")]
    assert named
    for where, url in named:
        assert url.removeprefix(BASE + "ValueSet/") in VALUESET_IDS, (where, url)


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
    members = union_members(vs)
    assert vs_id not in members and len(members) == len(set(members)) > 1, members
    assert set(members) <= set(VALUESET_IDS), members
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
    flagged_ids += sorted(union_members(valueset("med-rls-aggravating")))
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


def test_card_topics_are_the_policys_topics() -> None:
    """Each topic a card may carry is a CodeSystem card-topic, with the same display, and back."""
    topics = {t["code"]: t["display"] for t in policy()["topics"]}
    assert all(t["system"] == CS_URL for t in policy()["topics"])
    assert topics
    assert cs_children("card-topic") == topics


def test_every_card_offers_override_reasons_from_the_codesystem() -> None:
    """The override reasons offered on every card are the CodeSystem's, each hiding a while."""
    reasons = policy()["override_reasons"]
    assert reasons
    assert cs_children("override-reason") == {r["code"]: r["display"] for r in reasons}
    assert all(r["suppress_days"] > 0 for r in reasons)


def test_every_rule_topic_is_a_card_topic() -> None:
    topics = set(cs_children("card-topic"))
    rules = sorted((KNOWLEDGE / "rules").glob("*.yaml"))
    assert rules
    for path in rules:
        assert yaml.safe_load(path.read_text(encoding="utf-8"))["topic"] in topics, path.name


def test_journal_items_are_the_questionnaire_items() -> None:
    link_ids = {i["linkId"] for i in questionnaire()["item"]}
    assert set(cs_children("journal-item")) == link_ids


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
    assert len(usages) > len(questionnaire()["item"])
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
    assert {i["type"] for i in items} <= JOURNAL_TYPES
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
    for link_id, item in items.items():
        if item["type"] == "choice":
            options = {o["valueCoding"]["code"] for o in item["answerOption"]}
            assert options and options <= set(answers), link_id
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
