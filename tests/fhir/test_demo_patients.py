"""The demo patients and draft orders: valid FHIR R4, consistent ids, indexed in the README.

No server is needed: every bundle is validated with fhir.resources (R4B models, the R4-compatible
release), and the rule engine is run over each bundle's resources with the clock at the demo
anchor, so a data or rule change that moves a card shows up here before the SEKMET integration
tests (``test_fallback_integration.py``) run.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

import service.demo
from service.config import Settings
from service.demo import _SHIFTED_KEYS, DEMO_ANCHOR, demo_patient_files
from service.engine.cards import CardComposer
from service.engine.reader import RecordReader
from service.engine.rules import RuleEngine
from service.knowledge.base import KnowledgeBase, load_knowledge

DEMO_DIR = Path(service.demo.__file__).resolve().parent
README = DEMO_DIR / "README.md"
PATIENT_FILES = sorted((DEMO_DIR / "patients").glob("*.json"))
DRAFT_FILES = sorted((DEMO_DIR / "drafts").glob("*.json"))
TOPICS = {
    "lifestyle",
    "lab-check",
    "medication-review",
    "sleep-study-referral",
    "neurology-referral",
}
INDICATORS = {"info", "warning", "critical"}
_ROW = re.compile(
    r"^\|\s*`(?P<file>(?:patients|drafts)/[^`]+\.json)`\s*\|\s*`(?P<patient>[^`]+)`\s*\|"
)
_CARD = re.compile(r"`([a-z-]+)/(info|warning|critical)`")


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


def resources(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry["resource"] for entry in doc["entry"]]


def readme_rows() -> dict[str, tuple[str, list[str]]]:
    """README index: file (relative to service/demo) → (patient id, sorted expected cards)."""
    rows: dict[str, tuple[str, list[str]]] = {}
    for line in README.read_text(encoding="utf-8").splitlines():
        match = _ROW.match(line)
        if match is None:
            continue
        expected = line.rstrip().rstrip("|").rsplit("|", 1)[1].strip()
        cards = sorted(f"{t}/{i}" for t, i in _CARD.findall(expected))
        assert cards or expected == "none", f"README row without expected cards: {line}"
        rows[match["file"]] = (match["patient"], cards)
    return rows


def _dates(node: object) -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and (key in _SHIFTED_KEYS or key == "valueDate"):
                yield key, value
            else:
                yield from _dates(value)
    elif isinstance(node, list):
        for item in node:
            yield from _dates(item)


def _references(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                yield value
            else:
                yield from _references(value)
    elif isinstance(node, list):
        for item in node:
            yield from _references(item)


@pytest.fixture(scope="module")
def kb() -> KnowledgeBase:
    settings = Settings()
    return load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir)


def test_enough_demo_patients_and_all_shipped() -> None:
    assert len(PATIENT_FILES) >= 13
    assert [p.name for p in demo_patient_files()] == [p.name for p in PATIENT_FILES]
    assert DRAFT_FILES


@pytest.mark.parametrize("path", PATIENT_FILES + DRAFT_FILES, ids=lambda p: p.name)
def test_bundle_is_valid_fhir_r4(path: Path) -> None:
    doc = load(path)
    get_fhir_model_class("Bundle").model_validate(doc)
    for resource in resources(doc):  # each entry on its own too, for a precise message
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@pytest.mark.parametrize("path", PATIENT_FILES, ids=lambda p: p.name)
def test_patient_bundle_is_an_idempotent_transaction(path: Path) -> None:
    doc = load(path)
    assert doc["type"] == "transaction"
    number = path.name[:7]  # "demo-NN"
    patient = doc["entry"][0]["resource"]
    assert patient["resourceType"] == "Patient" and patient["id"] == number
    assert patient["meta"]["tag"] == [
        {"system": "urn:sleep-movement-cds:demo", "code": "synthetic"}
    ]
    seen: set[str] = set()
    for entry in doc["entry"]:
        resource = entry["resource"]
        ref = f"{resource['resourceType']}/{resource['id']}"
        assert resource["id"].startswith(number), ref
        assert entry["request"] == {"method": "PUT", "url": ref}
        assert entry["fullUrl"] == ref
        assert ref not in seen, f"duplicate {ref}"
        seen.add(ref)
    for reference in _references(doc):
        if reference.startswith("Patient/"):
            assert reference == f"Patient/{number}", f"{path.name}: {reference}"
        elif not reference.startswith("#"):
            assert reference in seen, f"{path.name}: dangling reference {reference}"


@pytest.mark.parametrize("path", PATIENT_FILES, ids=lambda p: p.name)
def test_clinical_dates_are_not_after_the_anchor(path: Path) -> None:
    for key, value in _dates(load(path)):
        assert date.fromisoformat(value[:10]) <= DEMO_ANCHOR, f"{path.name}: {key}={value}"


@pytest.mark.parametrize("path", DRAFT_FILES, ids=lambda p: p.name)
def test_draft_bundle_is_a_draft_orders_collection(path: Path) -> None:
    doc = load(path)
    assert doc["type"] == "collection"
    patient = path.name[:7]
    assert any(p.name.startswith(patient) for p in PATIENT_FILES)
    for resource in resources(doc):
        assert resource["resourceType"] in ("MedicationRequest", "ServiceRequest")
        assert resource["status"] == "draft"
        assert resource["id"].startswith(f"{patient}-draft-")
        assert resource["subject"] == {"reference": f"Patient/{patient}"}


def test_readme_indexes_every_file_and_only_existing_ones() -> None:
    rows = readme_rows()
    on_disk = {f"patients/{p.name}" for p in PATIENT_FILES} | {
        f"drafts/{p.name}" for p in DRAFT_FILES
    }
    assert set(rows) == on_disk
    for file, (patient, _) in rows.items():
        assert Path(file).name.startswith(f"{patient}-"), file
        if file.startswith("patients/"):
            assert load(DEMO_DIR / file)["entry"][0]["resource"]["id"] == patient


def test_readme_stories_cover_every_topic_and_indicator() -> None:
    rows = readme_rows()
    cards = [c for file, (_, expected) in rows.items() for c in expected]
    assert {c.split("/")[0] for c in cards} == TOPICS
    assert {c.split("/")[1] for c in cards} == INDICATORS
    assert any(not expected for file, (_, expected) in rows.items() if file.startswith("patients/"))


@pytest.mark.parametrize("path", PATIENT_FILES, ids=lambda p: p.name)
def test_rules_over_the_bundle_give_the_readme_cards(path: Path, kb: KnowledgeBase) -> None:
    """Offline check (no FHIR server): every resource of the bundle, the clock at the anchor."""
    patient, expected = readme_rows()[f"patients/{path.name}"]
    record = RecordReader(kb).read(patient, DEMO_ANCHOR, resources(load(path)))
    assert (record.skipped, record.unusable_labs) == (0, 0)
    cards, _ = CardComposer(kb).compose(record, RuleEngine(kb).run("patient-view", record))
    assert sorted(f"{c['source']['topic']['code']}/{c['indicator']}" for c in cards) == expected
