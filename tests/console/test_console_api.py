"""The console's server side without a browser: who gets the page, headers, and the FHIR reads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.console import CONSOLE_CSP
from service.fhir import FetchResult
from tests.factories import issuers_file, jwks_url_issuer
from tests.factories import outcome_diagnostics as outcome

SEKMET = "http://127.0.0.1:8092/fhir"


class CannedFhir:
    """A fetcher answering each query key from a dict, recording every base URL it was given."""

    def __init__(self, answers: dict[str, list[dict[str, Any]] | str] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, dict[str, str]]] = []

    async def search_many(
        self, base_url: str, queries: dict[str, str], token: str | None, deadline_s: float
    ) -> dict[str, FetchResult]:
        assert token is None  # the console never sends a token
        self.calls.append((base_url, dict(queries)))
        results = {}
        for key in queries:
            answer = self.answers.get(key, [])
            if key == "patient" and not isinstance(answer, str):  # a read: Patient/<id>
                answer = [p for p in answer if queries[key] == f"Patient/{p.get('id')}"]
            if isinstance(answer, str):
                results[key] = FetchResult(key=key, ok=False, reason=answer)
            else:
                results[key] = FetchResult(key=key, ok=True, resources=answer)
        return results

    async def read_references(
        self, base_url: str, refs: list[str], token: str | None, deadline_s: float
    ) -> dict[str, dict[str, Any]]:
        self.calls.append((base_url, {ref: ref for ref in refs}))
        known = {
            "Medication/m1": {
                "resourceType": "Medication",
                "id": "m1",
                "code": {"text": "ropinirole 0.25 MG Oral Tablet"},
            }
        }
        return {ref: known[ref] for ref in refs if ref in known}


def registry(tmp_path: Path) -> Path:
    return issuers_file(tmp_path, jwks_url_issuer(fhir_servers=["https://fhir.example"]))


def test_page_and_files_in_local_mode(client: TestClient) -> None:
    for path in ("/console", "/console/"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CONSOLE_CSP
        assert page.headers["x-content-type-options"] == "nosniff"
        assert '<script src="/console/console.js" defer></script>' in page.text
        assert "<script>" not in page.text and " style=" not in page.text  # CSP-clean
    script = client.get("/console/console.js")
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "innerHTML" not in script.text.split("*/", 1)[1]  # only text nodes, never HTML
    css = client.get("/console/console.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert "'unsafe-inline'" not in CONSOLE_CSP and "connect-src 'self'" in CONSOLE_CSP
    for other in ("/console/__init__.py", "/console/nope.js", "/console/.%2e/config.py"):
        outcome(client.get(other), 404)
    config = client.get("/console/api/config").json()
    assert config == {
        "fhirServer": None,
        "fhirServerFixed": False,
        "localMode": True,
        "explain": True,
        "userId": "Practitioner/example",
    }


@pytest.mark.parametrize(
    "path",
    [
        "/console",
        "/console/",
        "/console/console.js",
        "/console/api/config",
        f"/console/api/patients?fhirServer={SEKMET}",
        f"/console/api/chart/demo-01?fhirServer={SEKMET}",
    ],
)
def test_off_when_disabled(app_factory: Callable[..., FastAPI], path: str) -> None:
    fhir = CannedFhir()
    with TestClient(app_factory(console_enabled=False, fetcher=fhir)) as client:
        assert "not enabled" in outcome(client.get(path), 404)
    assert fhir.calls == []


def test_off_by_default_outside_local_mode(
    app_factory: Callable[..., FastAPI], tmp_path: Path
) -> None:
    app = app_factory(trusted_issuers_file=registry(tmp_path), fetcher=CannedFhir())
    client = TestClient(app)  # no lifespan: the issuer registry is never contacted
    assert "not enabled" in outcome(client.get("/console"), 404)


def test_enabled_outside_local_mode_reads_only_the_configured_server(
    app_factory: Callable[..., FastAPI], tmp_path: Path
) -> None:
    fhir = CannedFhir({"patients": []})
    app = app_factory(
        trusted_issuers_file=registry(tmp_path),
        console_enabled=True,
        admin_token="admin-t0ken-for-the-console",
        fetcher=fhir,
    )
    client = TestClient(app, headers={"Authorization": "Bearer admin-t0ken-for-the-console"})
    assert client.get("/console").status_code == 200
    typed = client.get("/console/api/patients", params={"fhirServer": "https://fhir.example"})
    assert "CDS_CONSOLE_FHIR_SERVER" in outcome(typed, 400)
    assert fhir.calls == []


@pytest.mark.parametrize(
    ("fhir_server", "message"),
    [
        (None, "base URL"),
        ("  ", "base URL"),
        ("http://fhir.example.org/fhir", "https"),
        ("https://user:secret@fhir.example.org/fhir", "credentials"),
        ("ftp://127.0.0.1/fhir", "https"),
        ("javascript:alert(1)", "https"),
    ],
)
def test_refused_fhir_servers(
    app_factory: Callable[..., FastAPI], fhir_server: str | None, message: str
) -> None:
    fhir = CannedFhir()
    params = {} if fhir_server is None else {"fhirServer": fhir_server}
    with TestClient(app_factory(fetcher=fhir)) as client:
        assert message in outcome(client.get("/console/api/patients", params=params), 400)
        assert message in outcome(client.get("/console/api/chart/p1", params=params), 400)
    assert fhir.calls == []


def test_configured_fhir_server_is_fixed(app_factory: Callable[..., FastAPI]) -> None:
    fhir = CannedFhir({"patients": []})
    app = app_factory(console_fhir_server=SEKMET + "/", fetcher=fhir)
    with TestClient(app) as client:
        config = client.get("/console/api/config").json()
        assert config["fhirServer"] == SEKMET and config["fhirServerFixed"] is True
        assert client.get("/console/api/patients").json() == {"fhirServer": SEKMET, "patients": []}
        other = client.get("/console/api/patients", params={"fhirServer": "https://x.example"})
        assert "reads only" in outcome(other, 400)
    assert [base for base, _ in fhir.calls] == [SEKMET]


def test_patient_list(app_factory: Callable[..., FastAPI]) -> None:
    fhir = CannedFhir(
        {
            "patients": [
                {"resourceType": "Patient", "id": "b", "name": [{"text": "Zoe Z"}]},
                {
                    "resourceType": "Patient",
                    "id": "a",
                    "name": [
                        {"use": "nickname", "given": ["Ro"]},
                        {"use": "official", "family": "Demo", "given": ["Rosa", "M"]},
                    ],
                    "gender": "female",
                    "birthDate": "1968-04-12",
                    "identifier": [{"system": "urn:mrn", "value": "MRN-1"}],
                },
                {"resourceType": "OperationOutcome"},
            ]
        }
    )
    with TestClient(app_factory(fetcher=fhir)) as client:
        body = client.get("/console/api/patients", params={"fhirServer": SEKMET + "/"}).json()
    assert body == {
        "fhirServer": SEKMET,
        "patients": [
            {
                "id": "a",
                "name": "Rosa M Demo",
                "gender": "female",
                "birthDate": "1968-04-12",
                "age": 58,  # the app clock says 2026-11-25
                "mrn": "MRN-1",
            },
            {
                "id": "b",
                "name": "Zoe Z",
                "gender": None,
                "birthDate": None,
                "age": None,
                "mrn": None,
            },
        ],
    }
    assert fhir.calls == [(SEKMET, {"patients": "Patient?_count=100"})]


def test_fhir_server_down_is_502(app_factory: Callable[..., FastAPI]) -> None:
    fhir = CannedFhir({"patients": "connect-error", "patient": "timeout"})
    with TestClient(app_factory(fetcher=fhir)) as client:
        down = client.get("/console/api/patients", params={"fhirServer": SEKMET})
        assert "connect-error" in outcome(down, 502)
        chart = client.get("/console/api/chart/p1", params={"fhirServer": SEKMET})
        assert "timeout" in outcome(chart, 502)


def test_chart_summary(app_factory: Callable[..., FastAPI]) -> None:
    subject = {"reference": "Patient/p1"}
    fhir = CannedFhir(
        {
            "patient": [{"resourceType": "Patient", "id": "p1", "birthDate": "1970-01-01"}],
            "conditions": [
                {
                    "resourceType": "Condition",
                    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]},
                    "recordedDate": "2025-01-01",
                },
                {
                    "resourceType": "Condition",
                    "code": {"text": "Restless legs syndrome"},
                    "clinicalStatus": {"coding": [{"code": "active", "display": "Active"}]},
                    "onsetDateTime": "2026-08-03T10:00:00Z",
                },
            ],
            "observations": [
                {
                    "resourceType": "Observation",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                    "effectiveDateTime": "2026-11-10T08:30:00Z",
                    "valueQuantity": {"value": 40.0, "unit": "ng/mL"},
                    "interpretation": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "v3-ObservationInterpretation",
                                    "code": "L",
                                }
                            ]
                        }
                    ],
                    "subject": subject,
                },
                {
                    "resourceType": "Observation",
                    "code": {"text": "Odd lab"},
                    "issued": "2026-10-01T00:00:00Z",
                    "valueString": "see note",
                },
            ],
            "medicationRequests": [
                {
                    "resourceType": "MedicationRequest",
                    "status": "active",
                    "medicationReference": {"reference": "Medication/m1"},
                    "authoredOn": "2026-01-02",
                    "dosageInstruction": [{"text": "0.25 mg at night"}],
                }
            ],
            "medicationStatements": "http-500",
            "symptoms": [
                {
                    "resourceType": "Observation",
                    "code": {"text": "Epworth score"},
                    "valueInteger": 14,
                    "effectiveDateTime": "2026-11-01",
                }
            ],
        }
    )
    with TestClient(app_factory(fetcher=fhir)) as client:
        chart = client.get("/console/api/chart/p1", params={"fhirServer": SEKMET}).json()
        missing = client.get("/console/api/chart/nobody", params={"fhirServer": SEKMET})
        bad_id = client.get("/console/api/chart/a%20b", params={"fhirServer": SEKMET})
    assert chart["patient"]["id"] == "p1" and chart["patient"]["age"] == 56
    assert chart["problems"] == [
        {"text": "Restless legs syndrome", "onset": "2026-08-03", "status": "Active"},
        {"text": "1", "onset": "2025-01-01", "status": None},
    ]
    assert chart["labs"] == [
        {
            "name": "Ferritin",
            "value": "40 ng/mL",
            "date": "2026-11-10",
            "flag": "L",
            "status": None,
        },
        {
            "name": "Odd lab",
            "value": "see note",
            "date": "2026-10-01",
            "flag": None,
            "status": None,
        },
    ]
    assert chart["medications"] == [
        {
            "text": "ropinirole 0.25 MG Oral Tablet",
            "status": "active",
            "date": "2026-01-02",
            "dosage": "0.25 mg at night",
            "kind": "order",
        }
    ]
    assert chart["findings"] == [{"text": "Epworth score", "value": "14", "date": "2026-11-01"}]
    assert chart["unavailable"] == ["medicationStatements: http-500"]
    queries = fhir.calls[0][1]
    assert queries["patient"] == "Patient/p1"
    assert queries["observations"].startswith("Observation?patient=p1&code=")
    assert "http://loinc.org|2276-4" in queries["observations"]  # the rules' labs, no others
    assert "journal" not in queries
    assert "No Patient/nobody" in outcome(missing, 404)
    assert "FHIR id" in outcome(bad_id, 400)
