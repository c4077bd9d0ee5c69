"""Prometheus metrics at /metrics: each documented metric moves when its event happens, labels
stay bounded, and no request data becomes a label.

Metrics are process-wide (several apps in one test process share them), so every assertion is
about the change a request made.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.metrics import sample
from tests.conftest import PATIENT_VIEW_KEYS
from tests.factories import PV, feedback_item, patient_view

SERVICE = "sleep-movement-patient-view"
HOOK_ROUTE = "/cds-services/{service_id}"
DOCUMENTED = [
    "cds_request_duration_seconds",
    "cds_requests_in_flight",
    "cds_cards_total",
    "cds_cards_suppressed_total",
    "cds_prefetch_keys_total",
    "cds_fhir_queries_total",
    "cds_fhir_query_duration_seconds",
    "cds_resources_skipped_total",
    "cds_feedback_items_total",
    "cds_feedback_outcomes_total",
    "cds_audit_rows_total",
    "cds_database_errors_total",
    "process_resident_memory_bytes",
]


class Delta:
    def __init__(self, name: str, **labels: str) -> None:
        self.name, self.labels = name, labels
        self.start = sample(name, **labels)

    @property
    def value(self) -> float:
        return sample(self.name, **self.labels) - self.start


class Result:
    ok = True
    reason: str | None = None

    def __init__(self, resources: list[dict[str, Any]], elapsed_ms: float) -> None:
        self.resources, self.elapsed_ms = resources, elapsed_ms


class Failed(Result):
    ok = False
    reason = "timeout"


class StubFetcher:
    """conditions: found; observations: timed out (after 1.5 s, as the client reports it)."""

    async def search_many(
        self, base_url: str, queries: dict[str, str], token: str | None, deadline_s: float
    ) -> Mapping[str, Result]:
        from tests.factories import rls_condition

        answers = {
            "conditions": Result([rls_condition()], 12.0),
            "observations": Failed([], 1500.0),
        }
        return {key: answers[key] for key in queries if key in answers}

    async def read_references(self, *args: Any) -> dict[str, dict[str, Any]]:
        return {}


def test_metrics_endpoint_exposes_every_documented_metric(client: TestClient) -> None:
    client.post(PV, json=patient_view())
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in DOCUMENTED:
        assert f"# HELP {name} " in response.text, name
    assert "_created" not in response.text


def test_a_hook_call_counts_latency_cards_prefetch_and_audit(client: TestClient) -> None:
    latency = Delta(
        "cds_request_duration_seconds_count", route=HOOK_ROUTE, service=SERVICE, status="200"
    )
    fast = Delta(
        "cds_request_duration_seconds_bucket",
        route=HOOK_ROUTE,
        service=SERVICE,
        status="200",
        le="10.0",
    )
    cards = Delta("cds_cards_total", service=SERVICE, topic="lab-check", indicator="warning")
    hits = Delta("cds_prefetch_keys_total", service=SERVICE, result="hit")
    audit = Delta("cds_audit_rows_total", result="written")
    response = client.post(PV, json=patient_view())
    assert response.status_code == 200
    assert [c["source"]["topic"]["code"] for c in response.json()["cards"]] == ["lab-check"]
    assert latency.value == 1
    assert fast.value == 1
    assert cards.value == 1
    assert hits.value == len(PATIENT_VIEW_KEYS)
    assert audit.value == 1
    assert sample("cds_requests_in_flight") == 0


def test_suppressed_cards_and_feedback_results_are_counted(client: TestClient) -> None:
    card = client.post(PV, json=patient_view()).json()["cards"][0]
    item = feedback_item(card["uuid"])
    stored = Delta("cds_feedback_items_total", service=SERVICE, result="stored")
    duplicate = Delta("cds_feedback_items_total", service=SERVICE, result="duplicate")
    overridden = Delta("cds_feedback_outcomes_total", service=SERVICE, outcome="overridden")
    assert client.post(f"{PV}/feedback", json={"feedback": [item]}).status_code == 200
    assert client.post(f"{PV}/feedback", json={"feedback": [item]}).status_code == 200
    assert (stored.value, duplicate.value, overridden.value) == (1, 1, 2)

    suppressed = Delta(
        "cds_cards_suppressed_total", service=SERVICE, topic="lab-check", indicator="warning"
    )
    shown = Delta("cds_cards_total", service=SERVICE, topic="lab-check", indicator="warning")
    assert client.post(PV, json=patient_view()).json()["cards"] == []
    assert (suppressed.value, shown.value) == (1, 0)


def test_fhir_fallback_prefetch_misses_and_skipped_resources(
    app_factory: Callable[..., FastAPI],
) -> None:
    ok = Delta("cds_fhir_queries_total", key="conditions", outcome="ok")
    timeout = Delta("cds_fhir_queries_total", key="observations", outcome="timeout")
    timeout_seconds = Delta("cds_fhir_query_duration_seconds_sum", outcome="timeout")
    slow_bucket = Delta("cds_fhir_query_duration_seconds_bucket", outcome="timeout", le="1.0")
    misses = Delta("cds_prefetch_keys_total", service=SERVICE, result="miss")
    skipped = Delta("cds_resources_skipped_total", service=SERVICE)
    body = patient_view(
        fhir_server="https://fhir.example.org/r4", omit=("conditions", "observations")
    )
    body["prefetch"]["symptoms"] = {
        "resourceType": "Bundle",
        "entry": [{"resource": "not a resource"}, {"resource": {"resourceType": "Observation"}}],
    }
    with TestClient(app_factory(fetcher=StubFetcher())) as client:
        assert client.post(PV, json=body).status_code == 200
    assert (ok.value, timeout.value, misses.value) == (1, 1, 2)
    assert timeout_seconds.value == 1.5
    assert slow_bucket.value == 0
    assert skipped.value == 2


def test_errors_get_their_route_and_status_and_request_data_never_becomes_a_label(
    client: TestClient,
) -> None:
    unknown = Delta(
        "cds_request_duration_seconds_count", route=HOOK_ROUTE, service="", status="404"
    )
    unmatched = Delta(
        "cds_request_duration_seconds_count", route="unmatched", service="", status="404"
    )
    invalid = Delta(
        "cds_request_duration_seconds_count", route=HOOK_ROUTE, service=SERVICE, status="400"
    )
    assert client.post("/cds-services/pat-PHI-4242", json=patient_view()).status_code == 404
    assert client.get("/Patient/pat-PHI-4242").status_code == 404
    wrong = patient_view("pat-PHI-4242")
    wrong["context"]["userId"] = ""
    assert client.post(PV, json=wrong).status_code == 400
    assert (unknown.value, unmatched.value, invalid.value) == (1, 1, 1)
    assert client.post(PV, json=patient_view("pat-PHI-4242")).status_code == 200
    assert "PHI" not in client.get("/metrics").text
