"""The knowledge base refuses to start on any invalid file, naming the file and the field."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.config import Settings
from service.errors import KnowledgeError
from service.knowledge.base import KnowledgeBase, load_knowledge
from service.knowledge.summary import rules_markdown

SETTINGS = Settings()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def knowledge_copy(tmp_path: Path) -> Path:
    target = tmp_path / "knowledge"
    shutil.copytree(SETTINGS.knowledge_dir, target)
    return target


def _edit_rule(directory: Path, rule_id: str, change: Callable[[Any], object]) -> Path:
    path = directory / "rules" / f"{rule_id}.yaml"
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _load(knowledge_dir: Path) -> KnowledgeBase:
    return load_knowledge(SETTINGS.fhir_profiles_dir, knowledge_dir)


def test_shipped_knowledge_loads() -> None:
    kb = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
    assert len(kb.rules) >= 21
    assert {r.topic for r in kb.rules} == {
        "lifestyle",
        "lab-check",
        "medication-review",
        "sleep-study-referral",
        "neurology-referral",
    }


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda d: d["when"]["all"][0]["any"][0]["finding"].update(
                valueset="https://sleep-cds.example.org/fhir/ValueSet/nope"
            ),
            "ValueSet https://sleep-cds.example.org/fhir/ValueSet/nope",
        ),
        (
            lambda d: d["when"]["all"][1]["any"][0]["lab_missing"].update(analyte="unobtainium"),
            "unknown analyte 'unobtainium'",
        ),
        (lambda d: d.update(topic="gossip"), "field 'topic'"),
        (lambda d: d.update(unexpected="x"), "field 'unexpected'"),
        (lambda d: d["card"].update(indicator="hard-stop"), "field 'card.indicator'"),
        (
            lambda d: d["card"].update(summary="Ferritin {{ nonexistent.value }}"),
            "unknown template variables ['nonexistent']",
        ),
        (lambda d: d["when"]["all"].append({"finding": {}, "lab": {}}), "exactly one operator"),
        (
            lambda d: d["suggestions"][0].update(
                missing_labs=["ferritin"], missing_within_days=None
            ),
            "missing_within_days",
        ),
        (lambda d: d.update(version="1.0"), "field 'version'"),
    ],
)
def test_invalid_rule_stops_start_up_naming_file_and_field(
    knowledge_copy: Path, change: Callable[[Any], object], expected: str
) -> None:
    path = _edit_rule(knowledge_copy, "rls-iron-studies", change)
    with pytest.raises(KnowledgeError) as error:
        _load(knowledge_copy)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_lab_unit_must_be_a_known_unit_of_the_analyte(knowledge_copy: Path) -> None:
    def change(d: Any) -> None:
        d["when"]["all"][1]["any"][0]["lab"]["unit"] = "furlongs"

    _edit_rule(knowledge_copy, "rls-iron-repletion", change)
    with pytest.raises(KnowledgeError, match="'furlongs' is not a known unit of ferritin"):
        _load(knowledge_copy)


def test_journal_items_must_exist_in_the_questionnaire(knowledge_copy: Path) -> None:
    _edit_rule(
        knowledge_copy,
        "persistent-jerks-referral",
        lambda d: d["when"]["any"][0]["journal"].update(item="dreams"),
    )
    with pytest.raises(KnowledgeError, match="'dreams' is not an item of the sleep-journal"):
        _load(knowledge_copy)


def test_analyte_conversions_must_include_the_canonical_unit(knowledge_copy: Path) -> None:
    path = knowledge_copy / "analytes.yaml"
    data = yaml.safe_load(path.read_text())
    data["analytes"]["ferritin"]["conversions"] = {"ug/L": 1}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(KnowledgeError, match=r"analytes\.yaml.*canonical unit"):
        _load(knowledge_copy)


def test_invalid_order_resource_is_refused(knowledge_copy: Path) -> None:
    path = knowledge_copy / "orders.yaml"
    data = yaml.safe_load(path.read_text())
    data["orders"]["polysomnography"]["codes"][0]["display"] = ""  # FHIR strings may not be empty
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(KnowledgeError, match=r"orders\.polysomnography"):
        _load(knowledge_copy)


def test_adding_a_rule_needs_no_python(knowledge_copy: Path) -> None:
    rule = {
        "id": "example-low-b12",
        "version": "1.0.0",
        "title": "Low B12 with tingling",
        "description": "Example rule written only as data.",
        "hooks": ["patient-view"],
        "topic": "lab-check",
        "population_note": "Adult B12 limit.",
        "sources": [{"label": "Example", "url": "https://example.org"}],
        "review": {"status": "draft"},
        "when": {
            "lab": {
                "analyte": "vitamin-b12",
                "op": "<",
                "value": 200,
                "unit": "pg/mL",
                "within_days": 365,
                "as": "b12",
            }
        },
        "card": {"indicator": "info", "summary": "B12 {{ b12.raw }}", "detail": "Check B12."},
    }
    (knowledge_copy / "rules" / "example-low-b12.yaml").write_text(yaml.safe_dump(rule))
    kb = _load(knowledge_copy)
    assert "example-low-b12" in {r.id for r in kb.rules}


def test_clinician_summary_is_generated_from_the_rules() -> None:
    kb = load_knowledge(SETTINGS.fhir_profiles_dir, SETTINGS.knowledge_dir)
    committed = (REPO / "docs" / "rules.md").read_text()
    assert committed == rules_markdown(kb), (
        "docs/rules.md is stale: run `sleep-cds rules-doc > docs/rules.md`"
    )


def test_every_leaf_operator_is_described_for_clinicians() -> None:
    """docs/rules.md words every condition: a new leaf operator needs a describer."""
    from service.knowledge import schema, summary

    operators = set()
    for cls in schema.LeafCond.__subclasses__():
        name, info = next(iter(cls.model_fields.items()))
        operators.add(info.alias or name)
    assert operators == set(summary._LEAF_WORDS)
