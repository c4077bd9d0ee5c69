"""A rule marked ``review.status: reviewed`` names its reviewer and the real (ISO) date of the
review; the loader refuses it otherwise, naming the file."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from service.config import Settings
from service.errors import KnowledgeError
from service.knowledge.base import load_knowledge
from service.knowledge.schema import Review

SETTINGS = Settings()


def test_reviewed_with_a_reviewer_and_an_iso_date_is_accepted() -> None:
    review = Review(status="reviewed", reviewer="Dr A. Sleep", reviewed_on=dt.date(2026, 3, 1))
    assert review.reviewed_on == dt.date(2026, 3, 1)
    assert Review(status="reviewed", reviewer="Dr A", reviewed_on="2026-03-01").reviewed_on == (
        dt.date(2026, 3, 1)
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, "needs the reviewer's name"),
        ({"reviewer": "  ", "reviewed_on": "2026-03-01"}, "needs the reviewer's name"),
        ({"reviewer": "Dr A"}, "needs the review date"),
        ({"reviewer": "Dr A", "reviewed_on": "spring 2026"}, "ISO date"),
        ({"reviewer": "Dr A", "reviewed_on": "2026-02-30"}, "ISO date"),
        ({"reviewer": "Dr A", "reviewed_on": 20260301}, "ISO date"),
        ({"reviewer": "Dr A", "reviewed_on": dt.datetime(2026, 3, 1, 9, 0)}, "ISO date"),
    ],
)
def test_reviewed_without_a_named_reviewer_or_a_real_date_is_refused(
    fields: dict[str, Any], expected: str
) -> None:
    with pytest.raises(ValidationError, match=expected):
        Review(status="reviewed", **fields)


def test_a_draft_needs_neither() -> None:
    assert Review(status="draft").reviewer is None


def test_loader_refuses_a_reviewed_rule_without_a_date(tmp_path: Path) -> None:
    knowledge = tmp_path / "knowledge"
    shutil.copytree(SETTINGS.knowledge_dir, knowledge)
    path = knowledge / "rules" / "rls-iron-studies.yaml"
    data = yaml.safe_load(path.read_text())
    data["review"] = {"status": "reviewed", "reviewer": "Dr A. Sleep", "reviewed_on": "last week"}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(KnowledgeError) as error:
        load_knowledge(SETTINGS.fhir_profiles_dir, knowledge)
    assert str(path) in str(error.value)
    assert "ISO date" in str(error.value)
    data["review"]["reviewed_on"] = dt.date(2026, 3, 1)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert load_knowledge(SETTINGS.fhir_profiles_dir, knowledge).rules
