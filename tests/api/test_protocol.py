"""CDS Hooks 2.0.1 protocol behaviour an EHR relies on: discovery, calls, errors, feedback, CORS."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service.config import Settings
from tests.conftest import FrozenClock
from tests.factories import RLS as RLS_CODE
from tests.factories import condition, medication_request, searchset

PV = "/cds-services/sleep-movement-patient-view"
OSEL = "/cds-services/sleep-movement-order-select"
OSIGN = "/cds-services/sleep-movement-order-sign"
TOKENS_2_0 = {
    "context.patientId",
    "context.userId",
    "context.encounterId",
    "userPractitionerId",
    "userPractitionerRoleId",
    "userPatientId",
    "userRelatedPersonId",
}


bundle = searchset
RLS = condition("p1", RLS_CODE, cid="rls1")


def empty_prefetch(
    client: TestClient, service: str = "sleep-movement-patient-view"
) -> dict[str, Any]:
    services = client.get("/cds-services").json()["services"]
    keys = next(s["prefetch"] for s in services if s["id"] == service)
    return dict.fromkeys(keys)


def request(hook: str = "patient-view", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": {"patientId": "p1", "userId": "Practitioner/u1"},
    }
    body.update(extra)
    return body


def assert_outcome(response: Any, status: int, contains: str = "") -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] == "error"
    assert contains in body["issue"][0]["diagnostics"]
    outcome: dict[str, Any] = body
    return outcome


# --- discovery -----------------------------------------------------------------------------------


def test_discovery_lists_exactly_the_three_services(client: TestClient) -> None:
    services = client.get("/cds-services").json()["services"]
    assert {(s["id"], s["hook"]) for s in services} == {
        ("sleep-movement-patient-view", "patient-view"),
        ("sleep-movement-order-select", "order-select"),
        ("sleep-movement-order-sign", "order-sign"),
    }
    for service in services:
        for field in ("id", "hook", "title", "description", "prefetch", "usageRequirements"):
            assert service[field], field


def test_prefetch_templates_use_only_2_0_tokens_and_constrained_searches(
    client: TestClient,
) -> None:
    for service in client.get("/cds-services").json()["services"]:
        for key, template in service["prefetch"].items():
            tokens = set(re.findall(r"\{\{(.*?)\}\}", template))
            assert tokens <= TOKENS_2_0, (key, tokens)
            if template.startswith("Observation?"):
                assert "&code=" in template or "&category=" in template, key


def test_prefetch_asks_only_for_lab_codes_the_rules_use(
    client: TestClient, app_factory: Callable[..., FastAPI]
) -> None:
    kb = client.app.state.context.kb  # type: ignore[attr-defined]
    services = {s["id"]: s for s in client.get("/cds-services").json()["services"]}
    template = services["sleep-movement-patient-view"]["prefetch"]["observations"]
    codes = set(template.split("&code=")[1].split(","))
    assert "http://loinc.org|2276-4" in codes  # ferritin: read by the RLS iron rules
    assert "http://loinc.org|2284-8" not in codes  # folate: no rule reads it
    used_by = {
        name
        for name, a in kb.analytes.items()
        for s, c in kb.valuesets[a.valueset].codes
        if f"{s}|{c}" in codes
    }
    assert "folate" not in used_by and "ferritin" in used_by
    # order hooks read no electrolytes
    order_template = services["sleep-movement-order-sign"]["prefetch"].get("observations", "")
    assert "19123-9" not in order_template


# --- calls ---------------------------------------------------------------------------------------


def test_no_complaint_gives_empty_cards(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    response = client.post(PV, json=request(prefetch=prefetch))
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_card_shape_follows_the_spec_and_omits_empty_fields(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    prefetch["conditions"] = bundle(RLS)
    body = client.post(PV, json=request(prefetch=prefetch)).json()
    assert body["cards"], body

    def no_nulls(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                assert item is not None and item != [] and item != ""
                no_nulls(item)
        elif isinstance(value, list):
            for item in value:
                no_nulls(item)

    no_nulls(body)
    for card in body["cards"]:
        uuid.UUID(card["uuid"])
        assert len(card["summary"]) < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"] and card["source"]["url"].startswith("https://")
        assert card["source"]["topic"]["system"].endswith("/CodeSystem/sleep-cds")
        assert all(r["display"] for r in card["overrideReasons"])
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("any", "at-most-one")
            for suggestion in card["suggestions"]:
                uuid.UUID(suggestion["uuid"])
                assert all(a["description"] for a in suggestion["actions"])


def test_cards_are_sorted_by_urgency(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    weakness = {
        "resourceType": "Condition",
        "id": "weak1",
        "clinicalStatus": RLS["clinicalStatus"],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "26544005"}]},
        "onsetDateTime": "2026-11-23",
        "subject": {"reference": "Patient/p1"},
    }
    prefetch["conditions"] = bundle(RLS, weakness)
    cards = client.post(PV, json=request(prefetch=prefetch)).json()["cards"]
    order = {"critical": 0, "warning": 1, "info": 2}
    ranks = [order[c["indicator"]] for c in cards]
    assert ranks == sorted(ranks) and ranks[0] == 0


def test_prefetch_null_means_no_data_and_is_not_fetched(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    response = client.post(PV, json=request(prefetch=prefetch))  # no fhirServer needed
    assert response.status_code == 200


def test_missing_prefetch_without_fhir_server_is_412_naming_the_keys(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    del prefetch["observations"]
    del prefetch["journal"]
    body = assert_outcome(client.post(PV, json=request(prefetch=prefetch)), 412)
    assert "observations" in body["issue"][0]["diagnostics"]
    assert "journal" in body["issue"][0]["diagnostics"]


def test_operation_outcome_prefetch_is_treated_as_absent(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    prefetch["conditions"] = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "timeout"}],
    }
    assert_outcome(client.post(PV, json=request(prefetch=prefetch)), 412, "conditions")


def test_bundle_without_type_and_single_resources_are_accepted(client: TestClient) -> None:
    prefetch = empty_prefetch(client)
    prefetch["conditions"] = {"resourceType": "Bundle", "entry": [{"resource": RLS}]}
    prefetch["patient"] = {"resourceType": "Patient", "id": "p1", "birthDate": "1960-05-01"}
    cards = client.post(PV, json=request(prefetch=prefetch)).json()["cards"]
    assert any(c["source"]["topic"]["code"] == "lab-check" for c in cards)


def test_spec_example_patient_view_request_is_understood(client: TestClient) -> None:
    # The CDS Hooks 2.0 spec's own example request (fhirServer made https: the service refuses
    # plain http to non-loopback servers), with this service's prefetch keys satisfied.
    example: dict[str, Any] = {
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": "https://hooks.smarthealthit.org:9080",
        "hook": "patient-view",
        "fhirAuthorization": {
            "access_token": "some-opaque-fhir-access-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read user/Observation.read",
            "subject": "cds-service4",
        },
        "context": {
            "userId": "Practitioner/example",
            "patientId": "1288992",
            "encounterId": "89284",
        },
        "prefetch": {
            "patient": {
                "resourceType": "Patient",
                "gender": "male",
                "birthDate": "1925-12-23",
                "id": "1288992",
                "active": True,
            },
        },
    }
    prefetch = empty_prefetch(client)
    prefetch.update(example["prefetch"])
    example["prefetch"] = prefetch
    response = client.post(PV, json=example)
    assert response.status_code == 200
    assert response.json() == {"cards": []}


def test_order_select_judges_only_selected_drafts(client: TestClient) -> None:
    prefetch = empty_prefetch(client, "sleep-movement-order-select")
    prefetch["conditions"] = bundle(RLS)
    sertraline = medication_request(
        "draft-ssri",
        status="draft",
        medicationCodeableConcept={
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "36437",
                    "display": "sertraline",
                }
            ]
        },
    )
    drafts = {"resourceType": "Bundle", "entry": [{"resource": sertraline}]}
    context = {"patientId": "p1", "userId": "Practitioner/u1", "draftOrders": drafts}
    unselected = request("order-select", prefetch=prefetch, context={**context, "selections": []})
    assert client.post(OSEL, json=unselected).json() == {"cards": []}
    selected = request(
        "order-select",
        prefetch=prefetch,
        context={**context, "selections": ["MedicationRequest/draft-ssri"]},
    )
    cards = client.post(OSEL, json=selected).json()["cards"]
    assert [c["source"]["topic"]["code"] for c in cards] == ["medication-review"]
    actions = [a for s in cards[0]["suggestions"] for a in s["actions"]]
    assert {
        "type": "delete",
        "description": "Remove the draft order MedicationRequest/draft-ssri",
        "resourceId": "MedicationRequest/draft-ssri",
    } in actions
    sign = request(
        "order-sign",
        prefetch=empty_prefetch(client, "sleep-movement-order-sign") | {"conditions": bundle(RLS)},
        context=context,
    )
    assert [c["indicator"] for c in client.post(OSIGN, json=sign).json()["cards"]] == ["warning"]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"", "empty"),
        (json.dumps({"hookInstance": "x", "context": {}}).encode(), "hook"),
        (json.dumps(request("order-sign")).encode(), "does not match"),
        (json.dumps(request(context={"userId": "Practitioner/1"})).encode(), "patientId"),
        (
            json.dumps(
                request(fhirAuthorization={"access_token": "t", "token_type": "MAC"})
            ).encode(),
            "token_type",
        ),
        (json.dumps(request(context="nope")).encode(), "context"),
    ],
)
def test_bad_hook_requests_are_400_operation_outcomes(
    client: TestClient, body: bytes, message: str
) -> None:
    response = client.post(PV, content=body, headers={"content-type": "application/json"})
    assert_outcome(response, 400, message)


def test_order_select_without_selections_is_400(client: TestClient) -> None:
    body = request(
        "order-select",
        context={
            "patientId": "p",
            "userId": "Practitioner/1",
            "draftOrders": {"resourceType": "Bundle"},
        },
    )
    assert_outcome(client.post(OSEL, json=body), 400, "selections")


def test_deeply_nested_json_is_400(client: TestClient) -> None:
    nested: Any = {}
    for _ in range(200):
        nested = {"a": nested}
    assert_outcome(client.post(PV, json=request(prefetch={"x": nested})), 400, "nested")


def test_unknown_service_is_404(client: TestClient) -> None:
    assert_outcome(client.post("/cds-services/nope", json=request()), 404, "nope")
    assert_outcome(client.post("/cds-services/nope/feedback", json={"feedback": []}), 404)
    assert_outcome(client.get("/no-such-path"), 404)


def test_wrong_method_is_an_operation_outcome(client: TestClient) -> None:
    assert_outcome(client.get(PV), 405)


def test_body_over_the_limit_is_413(app_factory: Callable[..., FastAPI]) -> None:
    with TestClient(app_factory(max_body_bytes=2048)) as small:
        big = request(prefetch={"patient": {"resourceType": "Patient", "text": "x" * 5000}})
        assert_outcome(small.post(PV, json=big), 413)
        # The limit also holds for a chunked body without Content-Length.
        chunks = iter([json.dumps(big).encode()[:1500], json.dumps(big).encode()[1500:]])
        response = small.post(PV, content=chunks, headers={"content-type": "application/json"})
        assert response.status_code == 413


def test_security_headers_and_no_server_banner(client: TestClient) -> None:
    response = client.get("/cds-services")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "server" not in response.headers


def test_cors_preflight_allows_authorization(client: TestClient) -> None:
    response = client.options(
        PV,
        headers={
            "Origin": "https://sandbox.cds-hooks.org",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status_code == 200
    assert "authorization" in response.headers["access-control-allow-headers"].lower()
    assert response.headers["access-control-allow-origin"] in ("*", "https://sandbox.cds-hooks.org")


def test_cors_origins_are_configurable(app_factory: Callable[..., FastAPI]) -> None:
    with TestClient(app_factory(cors_origins=["https://ehr.example.org"])) as c:
        ok = c.options(
            PV,
            headers={"Origin": "https://ehr.example.org", "Access-Control-Request-Method": "POST"},
        )
        bad = c.options(
            PV, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        )
        assert ok.headers["access-control-allow-origin"] == "https://ehr.example.org"
        assert bad.status_code == 400


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {
        "database": True,
        "knowledge": True,
        "hookSlots": {"limit": 16, "busy": 0, "waiting": 0, "available": True},
    }


def test_readiness_fails_when_the_database_is_unreachable(
    tmp_path: Path, clock: FrozenClock
) -> None:
    from service.main import create_app

    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    with TestClient(create_app(settings, clock=clock, configure_logging=False)) as c:
        response = c.get("/readyz")
        assert response.status_code == 503
        assert response.json()["database"] is False


# --- feedback ------------------------------------------------------------------------------------


def issued(c: TestClient, clock: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An override and an acceptance of a card this service really issued (feedback on any other
    card is ignored)."""
    prefetch = empty_prefetch(c)
    prefetch["conditions"] = bundle(RLS)
    cards = c.post(PV, json=request(prefetch=prefetch)).json()["cards"]
    card = next(card for card in cards if card.get("suggestions"))
    override = {
        "card": card["uuid"],
        "outcome": "overridden",
        "overrideReason": {
            "reason": {
                "code": "d7ecf885",
                "system": "https://example.com/cds-hooks/override-reason-system",
            },
            "userComment": "A comment entered by the clinician.",
        },
        "outcomeTimestamp": clock.now.isoformat(),
    }
    accept = {
        "card": card["uuid"],
        "outcome": "accepted",
        "acceptedSuggestions": [{"id": card["suggestions"][0]["uuid"]}],
        "outcomeTimestamp": clock.now.isoformat(),
    }
    return override, accept


def _rows(database_url: str) -> list[tuple[Any, ...]]:
    sync = database_url.replace("+aiosqlite", "").replace("+asyncpg", "+psycopg")
    engine = create_engine(sync)
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT outcome, override_reason_code, override_comment"
                " FROM feedback_item ORDER BY outcome"
            )
        ).all()
    engine.dispose()
    return [tuple(r) for r in rows]


def test_feedback_round_trips_and_is_idempotent(
    app_factory: Callable[..., FastAPI], database_url: str, clock: FrozenClock
) -> None:
    with TestClient(app_factory(database_url)) as c:
        override, accept = issued(c, clock)
        first = c.post(f"{PV}/feedback", json={"feedback": [accept, override]})
        assert first.status_code == 200
        assert first.json() == {"stored": 2, "duplicates": 0, "ignored": []}
        again = c.post(f"{PV}/feedback", json={"feedback": [override, override]})
        assert again.json() == {"stored": 0, "duplicates": 2, "ignored": []}
    assert _rows(database_url) == [
        ("accepted", None, None),
        ("overridden", "d7ecf885", "A comment entered by the clinician."),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"outcome": "ignored"}, "outcome"),
        ({"acceptedSuggestions": []}, "acceptedSuggestions"),
        ({"outcomeTimestamp": "yesterday"}, "outcomeTimestamp"),
        ({"outcomeTimestamp": "2026-11-25T09:00:00"}, "UTC offset"),
        ({"card": None}, "card"),
    ],
)
def test_bad_feedback_is_400_and_stores_nothing(
    client: TestClient, clock: Any, change: dict[str, Any], message: str
) -> None:
    override, accept = issued(client, clock)
    item = {k: v for k, v in {**accept, **change}.items() if v is not None}
    response = client.post(f"{PV}/feedback", json={"feedback": [override, item]})
    assert_outcome(response, 400, message)
    assert client.post(f"{PV}/feedback", json={"feedback": [override]}).json()["stored"] == 1


def test_feedback_answers_503_when_the_database_is_down(tmp_path: Path, clock: FrozenClock) -> None:
    from service.main import create_app

    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/missing/dir/x.db")
    with TestClient(create_app(settings, clock=clock, configure_logging=False)) as c:
        item = {
            "card": str(uuid.uuid4()),
            "outcome": "overridden",
            "outcomeTimestamp": clock.now.isoformat(),
        }
        assert_outcome(c.post(f"{PV}/feedback", json={"feedback": [item]}), 503)
        # Hook calls still answer: the audit row is skipped, the cards are not.
        prefetch = empty_prefetch(c)
        prefetch["conditions"] = bundle(RLS)
        response = c.post(PV, json=request(prefetch=prefetch))
        assert response.status_code == 200 and response.json()["cards"]
