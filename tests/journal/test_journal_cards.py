"""Cards link to the journal app: a CDS Hooks 2.0 ``smart`` link on the lifestyle card, only
where the app is served, with the app's absolute launch URL."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.cdshooks import models
from service.knowledge.schema import LinkSpec
from tests.journal.test_journal_api import demo_prefetch


def patient_view(client: TestClient, *, journal: bool = True) -> list[dict[str, Any]]:
    patient_id, prefetch = demo_prefetch("demo-02")
    if not journal:
        prefetch["journal"] = None
    body = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        "prefetch": prefetch,
    }
    answer = client.post("/cds-services/sleep-movement-patient-view", json=body)
    assert answer.status_code == 200, answer.text
    models.HookResponse.model_validate(answer.json())  # still valid CDS Hooks 2.0
    cards: list[dict[str, Any]] = answer.json()["cards"]
    return cards


def lifestyle(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return next(c for c in cards if "caffeine after 2 pm" in c["summary"])


def test_lifestyle_card_carries_a_smart_link_to_the_journal(
    app_factory: Callable[..., FastAPI],
) -> None:
    with TestClient(app_factory(public_base_url="http://127.0.0.1:8080")) as client:
        card = lifestyle(patient_view(client))
    assert card["links"] == [
        {
            "label": "Open the sleep journal (enter nights, review the trend)",
            "url": "http://127.0.0.1:8080/journal/launch",
            "type": "smart",
        }
    ]


def test_start_a_journal_card_links_to_the_app(app_factory: Callable[..., FastAPI]) -> None:
    """Sleep starts with no journal yet: the card that suggests the journal opens it."""
    with TestClient(app_factory(public_base_url="http://127.0.0.1:8080")) as client:
        cards = patient_view(client, journal=False)
    card = next(c for c in cards if "sleep journal" in c["summary"])
    assert [(link["type"], link["url"]) for link in card["links"]] == [
        ("smart", "http://127.0.0.1:8080/journal/launch")
    ]


def test_no_link_where_the_app_is_not_served(app_factory: Callable[..., FastAPI]) -> None:
    with TestClient(app_factory(journal_enabled=False)) as client:
        card = lifestyle(patient_view(client))
    assert "links" not in card


@pytest.mark.parametrize(
    "spec",
    [
        {"label": "x", "url": "https://evil.example/launch", "type": "smart"},
        {"label": "x", "url": "javascript:alert(1)", "type": "smart"},
        {"label": "x", "url": "/journal/launch?x=1", "type": "smart"},
        {"label": "x", "url": "http://example.org/guideline"},
    ],
)
def test_rule_links_are_checked_when_knowledge_loads(spec: dict[str, str]) -> None:
    with pytest.raises(ValidationError):
        LinkSpec.model_validate(spec)
