"""Clinical scenarios: one synthetic patient per file in ``tests/scenarios/``, run end to end.

Each file is posted to the CDS service as a real hook request (prefetch, draft orders,
selections) with the clock frozen at the file's ``as_of`` date, 09:00 UTC. The test checks the
exact multiset of (topic, indicator), the CDS Hooks card contract and the file's optional
expectations. The file format is described in ``tests/scenarios/README.md``.

A file with ``"xfail": "reason"`` expects the clinically correct outcome for a known engine or
knowledge bug; it is marked xfail (strict), so fixing the bug turns it into a pass that must be
un-marked.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B import get_fhir_model_class

from service.config import Settings
from service.db.migrate import upgrade_database
from service.main import create_app

SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"
TOPIC_SYSTEM = "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds"
SEVERITY = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_LIMIT = 140
DEFAULT_USER = "Practitioner/scenario-clinician"


class Clock:
    """The service's clock, set per scenario."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def load_scenarios() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, json.loads(path.read_text())) for path in sorted(SCENARIO_DIR.glob("*.json"))]


def _params() -> list[Any]:
    params = []
    for path, scenario in load_scenarios():
        marks = []
        if scenario.get("xfail"):
            marks.append(pytest.mark.xfail(reason=str(scenario["xfail"]), strict=True))
        params.append(pytest.param(path, id=path.stem, marks=marks))
    return params


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, Clock]]:
    """One app for every scenario (knowledge loads once); each scenario sets the clock."""
    database = tmp_path_factory.mktemp("scenarios") / "cds.db"
    settings = Settings(database_url=f"sqlite+aiosqlite:///{database}")
    upgrade_database(settings)
    clock = Clock()
    app = create_app(settings, clock=clock, configure_logging=False)
    with TestClient(app) as client:
        yield client, clock


@pytest.fixture(scope="module")
def service_ids(service: tuple[TestClient, Clock]) -> dict[str, str]:
    """hook → service id, from the discovery document."""
    client, _ = service
    response = client.get("/cds-services")
    assert response.status_code == 200, response.text
    return {s["hook"]: s["id"] for s in response.json()["services"]}


def hook_request(scenario: dict[str, Any]) -> dict[str, Any]:
    context: dict[str, Any] = {
        "userId": scenario.get("user_id", DEFAULT_USER),
        "patientId": scenario["patient_id"],
    }
    if "draftOrders" in scenario:
        context["draftOrders"] = scenario["draftOrders"]
    if "selections" in scenario:
        context["selections"] = scenario["selections"]
    body: dict[str, Any] = {
        "hook": scenario["hook"],
        "hookInstance": str(uuid.uuid4()),
        "context": context,
    }
    if "prefetch" in scenario:
        body["prefetch"] = scenario["prefetch"]
    return body


def _codes(value: Any) -> Iterator[str]:
    """Every ``code`` in a resource (codings, at any depth)."""
    if isinstance(value, dict):
        code = value.get("code")
        if isinstance(code, str):
            yield code
        for item in value.values():
            yield from _codes(item)
    elif isinstance(value, list):
        for item in value:
            yield from _codes(item)


def _strings(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def check_card_contract(card: dict[str, Any], patient_id: str) -> None:
    """What every card must satisfy, whatever the scenario."""
    summary = card.get("summary")
    assert isinstance(summary, str) and summary, card
    assert len(summary) < SUMMARY_LIMIT, f"summary has {len(summary)} characters: {summary}"
    assert card.get("indicator") in SEVERITY, card
    assert isinstance(card.get("detail"), str) and card["detail"], card
    source = card.get("source") or {}
    assert source.get("label"), f"card without source.label: {summary}"
    topic = source.get("topic") or {}
    assert topic.get("system") == TOPIC_SYSTEM, f"card without source.topic: {summary}"
    assert topic.get("code"), f"source.topic without a code: {summary}"
    reasons = card.get("overrideReasons")
    assert reasons, f"card without overrideReasons: {summary}"
    for reason in reasons:
        assert reason.get("code") and reason.get("display"), reason
    suggestions = card.get("suggestions") or []
    if suggestions:
        assert card.get("selectionBehavior") in ("any", "at-most-one"), card
    for suggestion in suggestions:
        assert suggestion.get("label") and suggestion.get("uuid"), suggestion
        assert suggestion.get("actions"), suggestion
        for action in suggestion["actions"]:
            assert action.get("type") in ("create", "update", "delete"), action
            assert action.get("description"), action
            if action["type"] == "delete":
                assert action.get("resourceId"), action
                continue
            resource = action.get("resource")
            assert isinstance(resource, dict), action
            get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            if action["type"] == "create":
                assert resource.get("status") == "draft", resource
                assert resource.get("subject") == {"reference": f"Patient/{patient_id}"}, resource


def _card_by_topic(cards: list[dict[str, Any]], topic: str) -> dict[str, Any]:
    found = [c for c in cards if c["source"]["topic"]["code"] == topic]
    assert found, f"no {topic} card; topics: {[c['source']['topic']['code'] for c in cards]}"
    return found[0]


def _created_codes(card: dict[str, Any]) -> set[str]:
    return {
        code
        for suggestion in card.get("suggestions") or []
        for action in suggestion["actions"]
        if action["type"] == "create"
        for code in _codes(action["resource"])
    }


def check_expectations(scenario: dict[str, Any], cards: list[dict[str, Any]]) -> None:
    for topic, text in (scenario.get("expect_summary_contains") or {}).items():
        card = _card_by_topic(cards, topic)
        for part in _strings(text):
            assert part in card["summary"], f"{topic} summary {card['summary']!r} lacks {part!r}"
    for topic, text in (scenario.get("expect_detail_contains") or {}).items():
        card = _card_by_topic(cards, topic)
        for part in _strings(text):
            assert part in card["detail"], f"{topic} detail lacks {part!r}:\n{card['detail']}"
    absent = scenario.get("expect_not_in_detail")
    if absent:
        if isinstance(absent, dict):
            pairs = [
                (card, part)
                for topic, parts in absent.items()
                for card in cards
                if card["source"]["topic"]["code"] == topic
                for part in _strings(parts)
            ]
        else:
            pairs = [(card, part) for card in cards for part in _strings(absent)]
        for card, part in pairs:
            assert part not in card["detail"], f"detail has {part!r}:\n{card['detail']}"
    for topic, codes in (scenario.get("expect_suggestion_codes") or {}).items():
        created = _created_codes(_card_by_topic(cards, topic))
        missing = sorted(set(_strings(codes)) - created)
        assert not missing, f"{topic} suggestions lack codes {missing}; have {sorted(created)}"
    if "expect_delete" in scenario:
        deleted = {
            action["resourceId"]
            for card in cards
            for suggestion in card.get("suggestions") or []
            for action in suggestion["actions"]
            if action["type"] == "delete"
        }
        assert deleted == set(scenario["expect_delete"]), deleted


@pytest.mark.parametrize("path", _params())
def test_scenario(
    path: Path, service: tuple[TestClient, Clock], service_ids: dict[str, str]
) -> None:
    scenario = json.loads(path.read_text())
    client, clock = service
    clock.now = datetime.combine(date.fromisoformat(scenario["as_of"]), time(9, 0), tzinfo=UTC)

    response = client.post(
        f"/cds-services/{service_ids[scenario['hook']]}", json=hook_request(scenario)
    )

    expected_status = scenario.get("expect_status", 200)
    assert response.status_code == expected_status, response.text
    if expected_status != 200:
        return
    cards = response.json()["cards"]
    got = Counter((c["source"]["topic"]["code"], c["indicator"]) for c in cards)
    want = Counter((e["topic"], e["indicator"]) for e in scenario["expected"])
    assert got == want, "cards: " + json.dumps(
        [
            {"topic": t, "indicator": i, "summary": c["summary"]}
            for c in cards
            for t, i in [(c["source"]["topic"]["code"], c["indicator"])]
        ],
        indent=1,
    )
    ranks = [SEVERITY[c["indicator"]] for c in cards]
    assert ranks == sorted(ranks, reverse=True), "cards not sorted critical → warning → info"
    for card in cards:
        check_card_contract(card, scenario["patient_id"])
    check_expectations(scenario, cards)
