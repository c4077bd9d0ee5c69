"""Database down or unreachable: hook calls still answer with cards, feedback answers 503 and
acknowledges nothing it did not store, and the service recovers without a restart.

The PostgreSQL server is the test's own (initdb in a temporary directory, its own port), so
stopping it disturbs nobody; "unreachable" is a loopback port that accepts TCP connections and
never answers.
"""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service import metrics
from service.config import Settings
from service.main import create_app
from tests.conftest import FrozenClock, make_settings
from tests.factories import (
    PV,
    ec_key,
    feedback_item,
    issuer,
    issuers_file,
    patient_view,
    signed_token,
)
from tests.reliability.helpers import PrivatePostgres

pytestmark = pytest.mark.integration
ISS = "https://ehr.example.com"
SERVICE = "sleep-movement-patient-view"
DOWNTIME_ANSWER_S = 3.0  # a hook call while the database is down still answers within this


def rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


class Deltas:
    """Metric samples relative to the moment of construction (metrics are process-wide)."""

    def __init__(self) -> None:
        self.start = {key: metrics.sample(*key[:1], **dict(key[1:])) for key in self._keys()}

    @staticmethod
    def _keys() -> list[tuple[Any, ...]]:
        return [
            ("cds_audit_rows_total", ("result", "written")),
            ("cds_audit_rows_total", ("result", "skipped")),
            ("cds_database_errors_total", ("operation", "suppression")),
            ("cds_database_errors_total", ("operation", "audit")),
            ("cds_database_errors_total", ("operation", "feedback")),
            ("cds_database_errors_total", ("operation", "readiness")),
        ]

    def __call__(self, name: str, label: str, value: str) -> float:
        key = (name, (label, value))
        return metrics.sample(name, **{label: value}) - self.start[key]


def assert_503(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"


def timed_post(client: TestClient, path: str, body: dict[str, Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    return response, time.perf_counter() - started


def test_database_down_then_back(cluster: PrivatePostgres) -> None:
    try:
        _down_then_back(cluster)
    finally:
        if not cluster.is_running():  # leave the session's cluster as found
            cluster.start()


def _down_then_back(cluster: PrivatePostgres) -> None:
    url = cluster.create_database("faults")
    settings = make_settings(url)
    clock = FrozenClock(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))
    app = create_app(settings, clock=clock, configure_logging=False)
    with TestClient(app) as client:
        first = client.post(PV, json=patient_view())
        assert first.status_code == 200
        card = first.json()["cards"][0]
        override = client.post(f"{PV}/feedback", json={"feedback": [feedback_item(card["uuid"])]})
        assert override.json() == {"stored": 1, "duplicates": 0, "ignored": []}
        # The override hides this card from now on (suppression reads the database).
        assert card["summary"] not in [
            c["summary"] for c in client.post(PV, json=patient_view()).json()["cards"]
        ]
        audit_before = rows(url, "SELECT count(*) FROM hook_call")[0][0]

        delta = Deltas()
        cluster.stop("immediate")  # as abrupt as a crash
        down, seconds = timed_post(client, PV, patient_view())
        # Cards still come: suppression failed open (the overridden card is shown again), and
        # the audit row was skipped and counted.
        assert down.status_code == 200, down.text
        assert [c["summary"] for c in down.json()["cards"]] == [card["summary"]]
        assert seconds < DOWNTIME_ANSWER_S
        assert delta("cds_database_errors_total", "operation", "suppression") == 1
        assert delta("cds_audit_rows_total", "result", "skipped") == 1
        assert delta("cds_audit_rows_total", "result", "written") == 0

        item = feedback_item(down.json()["cards"][0]["uuid"], when="2026-11-25T09:05:00Z")
        refused, seconds = timed_post(client, f"{PV}/feedback", {"feedback": [item]})
        assert_503(refused)
        assert seconds < DOWNTIME_ANSWER_S
        assert delta("cds_database_errors_total", "operation", "feedback") == 1
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200

        cluster.start()  # same port, same data: the app is not restarted
        back = client.post(PV, json=patient_view())
        assert back.status_code == 200
        assert back.json()["cards"] == []  # suppression works again: the override hides it
        assert delta("cds_audit_rows_total", "result", "written") == 1
        assert rows(url, "SELECT count(*) FROM hook_call")[0][0] == audit_before + 1
        # The item refused with 503 was not stored; sent again, it is stored once.
        card_items = "SELECT count(*) FROM feedback_item WHERE card_uuid = :card"
        assert rows(url, card_items, card=item["card"])[0][0] == 0
        retried = client.post(f"{PV}/feedback", json={"feedback": [item]})
        assert retried.json() == {"stored": 1, "duplicates": 0, "ignored": []}
        assert rows(url, card_items, card=item["card"])[0][0] == 1
        assert client.get("/readyz").status_code == 200


def test_database_down_authenticated_hook_calls_still_answer(
    cluster: PrivatePostgres, tmp_path: Path
) -> None:
    key = ec_key()
    registry = issuers_file(tmp_path, issuer(ISS, key, fhir_servers=[]))
    settings = make_settings(
        cluster.create_database("faults_auth"),
        trusted_issuers_file=registry,
        public_base_url="http://testserver",
    )

    def headers() -> dict[str, str]:
        signed = signed_token(key, ISS, "http://testserver" + PV)
        return {"Authorization": f"Bearer {signed}"}

    with TestClient(create_app(settings, configure_logging=False)) as client:
        assert client.post(PV, json=patient_view(), headers=headers()).status_code == 200
        cluster.stop("immediate")
        try:
            down = client.post(PV, json=patient_view(), headers=headers())
        finally:
            cluster.start()
        assert down.status_code == 200, down.text
        assert down.json()["cards"]


def test_database_unreachable_answers_within_the_connect_timeout() -> None:
    """A database host that accepts TCP and never answers (a black hole): hook calls answer with
    cards once the suppression read's deadline passes (not the 2 s connect timeout), feedback
    answers 503 within the connect timeout, readiness says so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(128)  # the kernel completes handshakes; nobody ever reads or answers
        port = hole.getsockname()[1]
        settings = Settings(database_url=f"postgresql+psycopg://cds@127.0.0.1:{port}/cds")
        app = create_app(settings, configure_logging=False)
        with TestClient(app) as client:
            delta = Deltas()
            labels = {"route": "/cds-services/{service_id}", "service": SERVICE, "status": "200"}
            before = metrics.sample("cds_request_duration_seconds_sum", **labels)
            answer = client.post(PV, json=patient_view())
            assert answer.status_code == 200
            assert answer.json()["cards"]
            # What the EHR waited (to the last response byte; the audit row is written after).
            waited = metrics.sample("cds_request_duration_seconds_sum", **labels) - before
            assert waited < settings.db_read_deadline_s + 0.7
            assert delta("cds_audit_rows_total", "result", "skipped") == 1
            now = datetime.now(UTC).isoformat()  # this app runs on the real clock
            item = feedback_item(answer.json()["cards"][0]["uuid"], when=now)
            refused, seconds = timed_post(client, f"{PV}/feedback", {"feedback": [item]})
            assert_503(refused)
            assert seconds < 2.0 + DOWNTIME_ANSWER_S
            assert client.get("/readyz").status_code == 503
