"""``sleep-cds hook`` / ``sleep-cds load`` against SEKMET and a CDS service running in a thread.

A stub CDS service (FastAPI in this file) records what the CLI sends, so the EHR-side request
(context, prefetch filling, hookInstance, fhirAuthorization) is checked exactly; when the real app
factory ``service.main:create_app`` exists, one test also runs the CLI against it.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.cli.errors import CliError
from service.cli.main import main
from service.cli.request import build_context, read_drafts, render_template
from service.demo import demo_patient_files, demo_shift_days, shift_dates
from tests.fixtures.bad_fhir import closed_port_url
from tests.fixtures.fhir_server import TEST_BEARER, load_bundles

PV_PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=active",
    "ferritin": "Observation?patient={{context.patientId}}&code=http://loinc.org|2276-4",
    "meds": "MedicationRequest?patient={{context.patientId}}&status=active",
    "user": "Practitioner/{{userPractitionerId}}",
    "encounter": "Encounter/{{context.encounterId}}",
}

CARD = {
    "uuid": "6f1f0f38-3c55-4d8b-9a55-6f0b7c1f3f11",
    "summary": "Ferritin below 75 ng/mL in restless legs syndrome",
    "detail": "Ferritin **40 ng/mL**.\n\nConsider iron repletion.",
    "indicator": "warning",
    "source": {"label": "Stub rules", "url": "https://example.org/rules"},
    "selectionBehavior": "at-most-one",
    "suggestions": [
        {
            "label": "Order ferrous sulfate",
            "isRecommended": True,
            "actions": [
                {
                    "type": "create",
                    "description": "Add an iron order",
                    "resource": {"resourceType": "MedicationRequest"},
                }
            ],
        }
    ],
    "links": [{"label": "Guideline", "url": "https://example.org/g", "type": "absolute"}],
}


def _stub_app(received: dict[str, list[dict[str, Any]]]) -> FastAPI:
    app = FastAPI()
    services = [
        {"hook": "patient-view", "id": "stub-pv", "title": "t", "description": "d"}
        | {"prefetch": PV_PREFETCH},
        {"hook": "order-sign", "id": "stub-os", "title": "t", "description": "d"},
        {"hook": "order-select", "id": "stub-osel", "title": "t", "description": "d"},
        {"hook": "patient-view", "id": "stub-412", "title": "t", "description": "d"},
    ]

    @app.get("/cds-services")
    async def discovery() -> dict[str, Any]:
        return {"services": services}

    @app.post("/cds-services/{service_id}")
    async def call(service_id: str, request: Request) -> JSONResponse:
        body = orjson.loads(await request.body())
        received.setdefault(service_id, []).append(body)
        if service_id == "stub-412":
            outcome = {
                "resourceType": "OperationOutcome",
                "issue": [
                    {
                        "severity": "error",
                        "code": "not-found",
                        "diagnostics": "Required data unavailable: conditions",
                    }
                ],
            }
            return JSONResponse(outcome, status_code=412)
        cards = [CARD] if service_id == "stub-pv" else []
        return JSONResponse({"cards": cards})

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ThreadedServer:
    """uvicorn in a daemon thread, for an ASGI app under test."""

    def __init__(self, app: Any) -> None:
        self.port = _free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="auto"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        give_up = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > give_up or not self.thread.is_alive():
                raise RuntimeError("ASGI server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def received() -> dict[str, list[dict[str, Any]]]:
    return {}


@pytest.fixture(scope="module")
def stub_service(received: dict[str, list[dict[str, Any]]]) -> Iterator[str]:
    with ThreadedServer(_stub_app(received)) as server:
        yield server.url


@pytest.fixture(scope="module")
def demo_fhir(fhir_server: str) -> str:
    load_bundles(fhir_server, demo_patient_files(), shift_days=demo_shift_days())
    return fhir_server


def _draft(tmp_path: Path, rid: str | None = "draft-1") -> Path:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "312941",
                    "display": "sertraline 50 MG Oral Tablet",
                }
            ]
        },
    }
    if rid:
        resource["id"] = rid
    path = tmp_path / f"{rid or 'noid'}.json"
    path.write_bytes(orjson.dumps(resource))
    return path


# --- pure request building ------------------------------------------------------------------


def test_render_template_tokens() -> None:
    ctx = {"patientId": "p1", "userId": "Practitioner/u9"}
    assert render_template("Patient/{{context.patientId}}", ctx) == "Patient/p1"
    assert render_template("Practitioner/{{userPractitionerId}}", ctx) == "Practitioner/u9"
    assert render_template("X?a={{ context.userId }}", ctx) == "X?a=Practitioner/u9"
    assert render_template("Encounter/{{context.encounterId}}", ctx) is None
    assert render_template("PractitionerRole/{{userPractitionerRoleId}}", ctx) is None


def test_contexts_per_hook(tmp_path: Path) -> None:
    assert build_context("patient-view", "p1", "Practitioner/x") == {
        "userId": "Practitioner/x",
        "patientId": "p1",
    }
    drafts = read_drafts([_draft(tmp_path), _draft(tmp_path, None)], "p1")
    assert drafts[0]["subject"] == {"reference": "Patient/p1"}
    assert drafts[1]["id"].startswith("draft-")
    sign = build_context("order-sign", "p1", "Practitioner/x", drafts)
    assert sign["draftOrders"]["type"] == "collection"
    assert "selections" not in sign
    select = build_context(
        "order-select", "p1", "Practitioner/x", drafts, ["MedicationRequest/draft-1"]
    )
    assert select["selections"] == ["MedicationRequest/draft-1"]
    everything = build_context("order-select", "p1", "Practitioner/x", drafts)
    assert len(everything["selections"]) == 2
    with pytest.raises(CliError, match="needs at least one --draft"):
        build_context("order-sign", "p1", "Practitioner/x")
    with pytest.raises(CliError, match="not one of the draft orders"):
        build_context("order-select", "p1", "Practitioner/x", drafts, ["MedicationRequest/zzz"])


def test_draft_must_be_an_order(tmp_path: Path) -> None:
    path = tmp_path / "obs.json"
    path.write_bytes(orjson.dumps({"resourceType": "Observation", "status": "final"}))
    with pytest.raises(CliError, match="Observation is not an order resource"):
        read_drafts([path], "p1")


# --- the command against SEKMET + a running service ---------------------------------------


@pytest.mark.integration
def test_patient_view_with_prefetch(
    demo_fhir: str,
    stub_service: str,
    received: dict[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", demo_fhir]
    code = main([*argv, "--service", stub_service, "--service-id", "stub-pv"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[WARNING] Ferritin below 75 ng/mL in restless legs syndrome" in out
    assert "Order ferrous sulfate  [recommended]" in out
    assert "create MedicationRequest: Add an iron order" in out
    assert "link: Guideline -> https://example.org/g (absolute)" in out
    assert "omitted: encounter (unfillable-token)" in out
    body = received["stub-pv"][-1]
    uuid.UUID(body["hookInstance"])
    assert body["hook"] == "patient-view"
    assert body["fhirServer"] == demo_fhir
    assert body["context"] == {"userId": "Practitioner/example", "patientId": "demo-01"}
    assert "fhirAuthorization" not in body
    prefetch = body["prefetch"]
    assert set(prefetch) == {"patient", "conditions", "ferritin", "meds", "user"}
    assert prefetch["patient"]["id"] == "demo-01"
    assert prefetch["user"] is None  # read 404 -> null, as the spec says
    assert [e["resource"]["id"] for e in prefetch["conditions"]["entry"]] == ["demo-01-rls"]
    ferritin = prefetch["ferritin"]["entry"][0]["resource"]
    assert ferritin["valueQuantity"]["value"] == 40
    assert prefetch["meds"]["type"] == "searchset"


@pytest.mark.integration
def test_no_prefetch_and_json_output(
    demo_fhir: str,
    stub_service: str,
    received: dict[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", demo_fhir]
    argv += ["--service", stub_service, "--service-id", "stub-pv", "--no-prefetch", "--json"]
    code = main(argv)
    out, _ = capsys.readouterr()
    assert code == 0
    assert orjson.loads(out) == {"stub-pv": {"cards": [CARD]}}
    assert "prefetch" not in received["stub-pv"][-1]


@pytest.mark.integration
def test_order_sign_and_select_send_drafts(
    demo_fhir: str,
    stub_service: str,
    received: dict[str, list[dict[str, Any]]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    draft = str(_draft(tmp_path))
    common = ["--patient", "demo-01", "--fhir-server", demo_fhir, "--service", stub_service]
    assert main(["hook", "order-sign", *common, "--draft", draft]) == 0
    body = received["stub-os"][-1]
    entry = body["context"]["draftOrders"]["entry"][0]["resource"]
    assert entry["id"] == "draft-1" and entry["subject"]["reference"] == "Patient/demo-01"
    select = ["--draft", draft, "--select", "MedicationRequest/draft-1"]
    assert main(["hook", "order-select", *common, *select]) == 0
    assert received["stub-osel"][-1]["context"]["selections"] == ["MedicationRequest/draft-1"]
    out, _ = capsys.readouterr()
    assert "(no cards)" in out


@pytest.mark.integration
def test_bearer_token_reaches_fhir_and_request_but_is_never_printed(
    fhir_server_bearer: str,
    stub_service: str,
    received: dict[str, list[dict[str, Any]]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_bundles(fhir_server_bearer, demo_patient_files(), token=TEST_BEARER)
    monkeypatch.setenv("SLEEP_CDS_TEST_TOKEN", TEST_BEARER)
    argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", fhir_server_bearer]
    argv += ["--service", stub_service, "--service-id", "stub-pv"]
    assert main([*argv, "--token-env", "SLEEP_CDS_TEST_TOKEN"]) == 0
    body = received["stub-pv"][-1]
    assert body["fhirAuthorization"]["access_token"] == TEST_BEARER
    assert body["prefetch"]["patient"]["id"] == "demo-01"  # SEKMET accepted the token
    # Without the token SEKMET answers 401: every key is omitted, the service is still called.
    assert main(argv) == 0
    assert "prefetch" in received["stub-pv"][-1] and received["stub-pv"][-1]["prefetch"] == {}
    out, err = capsys.readouterr()
    assert TEST_BEARER not in out + err
    assert "patient (http-401)" in out


@pytest.mark.integration
def test_error_lines(
    demo_fhir: str,
    stub_service: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    down = closed_port_url().removesuffix("/fhir")
    argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", demo_fhir]
    assert main([*argv, "--service", down]) == 1
    _, err = capsys.readouterr()
    refused = "connection refused or host unreachable"
    assert err == f"sleep-cds: GET {down}/cds-services failed: {refused}\n"

    only_412 = ["--service", stub_service, "--service-id", "stub-412", "--no-prefetch"]
    assert main([*argv, *only_412]) == 1
    _, err = capsys.readouterr()
    assert err == (
        f"sleep-cds: POST {stub_service}/cds-services/stub-412 -> HTTP 412: "
        "Required data unavailable: conditions\n"
    )

    assert main(["hook", "patient-view", "--patient", "bad id!", "--fhir-server", demo_fhir]) == 1
    _, err = capsys.readouterr()
    assert err.startswith("sleep-cds: --patient 'bad id!' is not a FHIR id")

    invalid = tmp_path / "invalid.json"
    invalid.write_bytes(orjson.dumps({"resourceType": "Patient", "id": "x", "bogus": True}))
    assert main(["load", demo_fhir, str(invalid)]) == 1
    _, err = capsys.readouterr()
    assert err.startswith(f"sleep-cds: {invalid}: PUT {demo_fhir}/Patient/x -> HTTP 400: ")
    assert err.count("\n") == 1


@pytest.mark.integration
def test_load_command(fhir_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(p) for p in demo_patient_files()]
    assert main(["load", fhir_server, *files]) == 0
    out, _ = capsys.readouterr()
    assert "demo-01-rls-low-ferritin.json: POST -> HTTP 200 (4 entries)" in out


@pytest.mark.integration
@pytest.mark.parametrize("prefetch", ["--prefetch", "--no-prefetch"])
def test_against_the_real_service(
    demo_fhir: str, tmp_path: Path, prefetch: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """End to end: CLI -> service.main app (own temp database) -> SEKMET, with and without
    prefetch (without, the service fetches through its own FhirClient)."""
    from service.config import Settings
    from service.db.migrate import upgrade_database
    from service.main import create_app

    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/cds.db")
    upgrade_database(settings)
    app = create_app(settings, configure_logging=False)
    with ThreadedServer(app) as server:
        argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", demo_fhir]
        code = main([*argv, "--service", server.url, prefetch])
        out, err = capsys.readouterr()
    assert code == 0, err
    assert "(patient-view): HTTP 200" in out
    assert "ferritin 40 ng/ml" in out.lower()


def test_demo_dates_shift_but_birth_date_does_not() -> None:
    doc = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "Observation",
                    "effectiveDateTime": "2026-11-10T08:30:00Z",
                    "issued": "2026-11-10",
                }
            },
            {"resource": {"resourceType": "Patient", "birthDate": "1968-04-12"}},
        ],
    }
    shifted = shift_dates(doc, 30)
    assert shifted["entry"][0]["resource"]["effectiveDateTime"] == "2026-12-10T08:30:00Z"
    assert shifted["entry"][0]["resource"]["issued"] == "2026-12-10"
    assert shifted["entry"][1]["resource"]["birthDate"] == "1968-04-12"
    assert demo_shift_days(dt.date(2026, 12, 25)) == 30


@pytest.mark.integration
def test_sandbox_command_starts_serves_and_stops(tmp_path: Path) -> None:
    """``python -m service.cli.sandbox``: banner, a working CLI example, Ctrl-C stops both
    servers."""
    fhir_port, cds_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    env |= {"CDS_SANDBOX_FHIR_PORT": str(fhir_port), "CDS_PORT": str(cds_port)}
    # The SMART launcher's first build (npm ci + build) takes minutes; tests/journal starts it.
    env["CDS_SANDBOX_LAUNCHER"] = "0"
    log = tmp_path / "sandbox.out"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli.sandbox"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        give_up = time.monotonic() + 90
        while "Ctrl-C stops" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < give_up, log.read_text()
            time.sleep(0.2)
        fhir = f"http://127.0.0.1:{fhir_port}/fhir"
        service = f"http://127.0.0.1:{cds_port}"
        assert f"--fhir-server {fhir} --service {service}" in log.read_text()
        argv = ["hook", "patient-view", "--patient", "demo-01", "--fhir-server", fhir]
        assert main([*argv, "--service", service, "--json"]) == 0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert "sandbox: stopped" in log.read_text()
    for port in (fhir_port, cds_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
