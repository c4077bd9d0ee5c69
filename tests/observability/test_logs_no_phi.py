"""Structured logs: one JSON line per request, with hookInstance and latency, and no PHI.

A patient with a name, identifiers, a birth date, an address and a phone number, a bearer token
in fhirAuthorization and a free-text override comment go through a full request cycle (hook call
with suppression and the background audit row, explain, feedback, a FHIR fallback that fails,
error responses). None of those values may appear in any log line, at the production level
(INFO) and at DEBUG; in-process and from the real server process (uvicorn's own lines too).
"""

from __future__ import annotations

import io
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.config import Settings
from service.db.migrate import upgrade_database
from service.logging import JsonFormatter, configure
from tests.factories import PV, feedback_item, patient_view
from tests.fixtures.bad_fhir import BadFhirServer
from tests.reliability.helpers import ServiceProcess

NOISY = ("uvicorn.access", "httpx", "httpcore", "aiosqlite", "psycopg", "sqlalchemy")
PATIENT_ID = "pat-PHI-4242"
TOKEN = "eyJhbGciOiJSUzM4NCJ9.SECRET-TOKEN-PAYLOAD.sig"
PHI = {
    "patient id": PATIENT_ID,
    "family name": "Quixote-Marchbanks",
    "given name": "Zebulon",
    "MRN": "MRN-7734-SECRET",
    "SSN": "999-12-3456",
    "birth date": "1961-07-14",
    "street": "42 Wallaby Way",
    "phone": "+1-555-0199-737",
    "token": TOKEN,
    "token payload": "SECRET-TOKEN-PAYLOAD",
    "encounter": "enc-PHI-77",
    "comment": "told me about her divorce",
    "condition text": "restless legs since the accident at Foxconn",
}


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": PATIENT_ID,
        "birthDate": PHI["birth date"],
        "name": [{"family": PHI["family name"], "given": [PHI["given name"]]}],
        "identifier": [
            {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": PHI["MRN"]},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": PHI["SSN"]},
        ],
        "address": [{"line": [PHI["street"]], "city": "Sydney"}],
        "telecom": [{"system": "phone", "value": PHI["phone"]}],
    }


def phi_body(fhir_server: str, **extra: Any) -> dict[str, Any]:
    # CDS Hooks 2.0 sends fhirAuthorization only with fhirServer (otherwise a 400).
    body = patient_view(
        PATIENT_ID, patient=patient(), token=TOKEN, fhir_server=fhir_server, **extra
    )
    body["context"]["encounterId"] = PHI["encounter"]
    condition = body["prefetch"]["conditions"]["entry"][0]["resource"]
    condition["code"]["text"] = PHI["condition text"]
    return body


class Capture:
    """The service's own logging set-up (``service.logging.configure``, as ``sleep-cds serve``
    runs it) writing into a buffer instead of stderr."""

    def __init__(self, level: str) -> None:
        self.stream = io.StringIO()
        self.level = level

    def __enter__(self) -> Capture:
        root = logging.getLogger()
        self.saved = (root.level, list(root.handlers))
        self.saved_levels = {name: logging.getLogger(name).level for name in NOISY}
        configure(self.level)
        handler = root.handlers[0]
        assert isinstance(handler, logging.StreamHandler)
        assert isinstance(handler.formatter, JsonFormatter)
        handler.setStream(self.stream)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.setLevel(self.saved[0])
        root.handlers[:] = self.saved[1]
        for name, level in self.saved_levels.items():
            logging.getLogger(name).setLevel(level)

    @property
    def lines(self) -> list[dict[str, Any]]:
        return [orjson.loads(line) for line in self.stream.getvalue().splitlines() if line]

    @property
    def text(self) -> str:
        return self.stream.getvalue()


def assert_no_phi(text: str) -> None:
    leaked = {what: value for what, value in PHI.items() if value in text}
    assert not leaked, f"PHI in the logs: {leaked}"


@pytest.fixture
def bad() -> Iterator[BadFhirServer]:
    with BadFhirServer() as server:
        yield server


def full_cycle(client: Any, bad_url: str, when: str = "2026-11-25T09:00:00Z") -> int:
    """The requests of one patient's visit; returns how many HTTP requests were made. ``when``:
    the decision time (the service's clock, which is real in a server process)."""
    first = client.post(PV, json=phi_body(bad_url))
    assert first.status_code == 200, first.text
    card = first.json()["cards"][0]
    item = feedback_item(card["uuid"], when=when)
    item["overrideReason"]["userComment"] = PHI["comment"]
    assert client.post(f"{PV}/feedback", json={"feedback": [item]}).status_code == 200
    again = client.post(PV, json=phi_body(bad_url))  # suppressed now
    assert again.status_code == 200 and again.json()["cards"] == []
    explain = client.post(f"{PV}/explain", json=phi_body(bad_url))
    assert explain.status_code == 200
    # The labs come from a failing FHIR server, with the bearer token.
    fallback = client.post(PV, json=phi_body(bad_url, omit=("observations",)))
    assert fallback.status_code == 200
    # Errors whose request bodies carry PHI: a wrong hook, invalid JSON, a bad timestamp.
    wrong = phi_body(bad_url)
    wrong["hook"] = f"{PHI['given name']}-{PHI['family name']}"
    assert client.post(PV, json=wrong).status_code == 400
    raw = orjson.dumps(phi_body(bad_url))[:-40]
    bad_json = client.post(PV, content=raw, headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    late = feedback_item(card["uuid"], when=f"{PHI['birth date']} {PHI['given name']}")
    assert client.post(f"{PV}/feedback", json={"feedback": [late]}).status_code == 400
    return 8


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_full_cycle_logs_one_line_per_request_and_no_phi(
    app_factory: Callable[..., FastAPI], bad: BadFhirServer, level: str
) -> None:
    with Capture(level) as capture, TestClient(app_factory(explain_enabled=True)) as client:
        requests = full_cycle(client, bad.url("status-500"))
    assert_no_phi(capture.text)
    request_lines = [line for line in capture.lines if line["msg"] == "request"]
    assert len(request_lines) == requests, request_lines
    for line in request_lines:
        assert isinstance(line["latency_ms"], float | int) and 0 < line["latency_ms"] < 60_000
        assert {"method", "path", "status", "ts", "level"} <= set(line)
    hook_lines = [line for line in request_lines if line["status"] == 200]
    assert len(hook_lines) == 5
    assert all(
        uuid.UUID(line["hook_instance"]) for line in hook_lines if "feedback" not in line["path"]
    )
    fallback = next(line for line in request_lines if line.get("fetches"))
    assert fallback["fetches"] == {"observations": "http-500"}
    assert any(line.get("suppressed") == 1 for line in request_lines)


def test_the_server_process_logs_no_phi(tmp_path: Path) -> None:
    database = f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}"
    upgrade_database(Settings(database_url=database))
    with BadFhirServer() as bad:
        service = ServiceProcess(database, tmp_path, CDS_LOG_LEVEL="INFO").start()
        try:
            with httpx.Client(base_url=service.base_url, timeout=10) as client:
                full_cycle(client, bad.url("status-500"), datetime.now(UTC).isoformat())
            # A malformed HTTP request line carrying PHI: uvicorn's own log must not echo it.
            with socket.create_connection(("127.0.0.1", service.port), timeout=5) as sock:
                sock.sendall(f"GET /{PHI['SSN']} {PHI['family name']}\r\n\r\n".encode())
                sock.recv(1024)
        finally:
            service.stop()
    logs = service.logs()
    assert_no_phi(logs)
    lines = [orjson.loads(line) for line in logs.splitlines() if line.startswith("{")]
    served = [line for line in lines if line["msg"] == "request" and line["path"] != "/healthz"]
    assert len(served) == 8  # start-up polled /healthz; the malformed request never got this far
