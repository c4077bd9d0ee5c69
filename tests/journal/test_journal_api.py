"""The journal app's server side without a browser: who gets it, its headers, the FHIR-server
allow-list, the scopes it asks for, and the advice it states."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.api.journal import EHR_SCOPES, STANDALONE_SCOPES
from service.config import REPO_ROOT
from service.demo import demo_patient_files
from tests.factories import issuers_file, jwks_url_issuer
from tests.factories import outcome_diagnostics as outcome

VENDORED = REPO_ROOT / "service" / "journal" / "fhirclient-2.6.3.min.js"
VENDORED_SHA256 = "658dec434e308a6ba682158f1e94bfaa0f600bb500e78443369bfe7818133d90"
LOOPBACK_FHIR = "http://127.0.0.1:8092/fhir"


def registry(tmp_path: Path) -> Path:
    return issuers_file(tmp_path, jwks_url_issuer(fhir_servers=["https://fhir.example/r4"]))


def test_pages_are_same_origin_only(client: TestClient) -> None:
    for path in ("/journal/", "/journal", "/journal/launch"):
        page = client.get(path)
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp and "style-src 'self';" in csp
        assert "unsafe" not in csp and "default-src 'none'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"  # ?code= never leaves in Referer
        assert "<script>" not in page.text and " style=" not in page.text  # no inline code
        # Every script and stylesheet is a relative URL on this service: no CDN, no other origin.
        for url in re.findall(r'(?:src|href)="([^"]+)"', page.text):
            assert url.startswith("data:") or "/" not in url, url
    script = client.get("/journal/journal.js").text
    assert "innerHTML" not in script and "eval(" not in script  # only text nodes reach the page
    assert "localStorage" not in script  # the token stays where fhirclient keeps it
    for other in ("/journal/__init__.py", "/journal/nope.js", "/journal/index.html"):
        outcome(client.get(other), 404)


def test_static_files_are_gzipped_for_browsers_that_accept_it(client: TestClient) -> None:
    plain = client.get("/journal/journal.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    packed = client.get("/journal/journal.js", headers={"Accept-Encoding": "gzip, br"})
    assert packed.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in packed.headers["vary"]
    assert packed.content == plain.content  # the client undid the gzip: same file
    assert int(packed.headers["content-length"]) < len(plain.content) / 2
    config = client.get("/journal/api/config", headers={"Accept-Encoding": "gzip"})
    assert config.headers["content-encoding"] == "gzip" and config.json()["clientId"]


def test_vendored_smart_client_is_pinned_with_its_licence(client: TestClient) -> None:
    served = client.get("/journal/fhirclient-2.6.3.min.js")
    assert served.headers["content-type"] == "text/javascript; charset=utf-8"
    assert hashlib.sha256(served.content).hexdigest() == VENDORED_SHA256
    licence = (VENDORED.parent / "fhirclient-LICENSE.txt").read_text()
    assert "Apache License, Version 2.0" in licence


def test_config_asks_for_the_narrowest_scopes(client: TestClient) -> None:
    config = client.get("/journal/api/config").json()
    assert config["scopes"] == {"ehr": EHR_SCOPES, "standalone": STANDALONE_SCOPES}
    ehr = set(EHR_SCOPES.split())
    assert "launch" in ehr and "launch/patient" in set(STANDALONE_SCOPES.split())
    for scope in ehr | set(STANDALONE_SCOPES.split()):
        # patient-level SMART v2 scopes only: no user/system access, no identity, no refresh.
        assert scope in ("launch", "launch/patient") or re.fullmatch(
            r"patient/[A-Za-z]+\.c?r?u?d?s?", scope
        ), scope
    assert "patient/QuestionnaireResponse.crs" in ehr  # write only journal entries
    assert not any(s.startswith("patient/Observation.c") for s in ehr)
    questionnaire = json.loads(
        (REPO_ROOT / "fhir_profiles" / "Questionnaire-sleep-journal.json").read_text()
    )
    assert config["questionnaire"] == questionnaire  # the form is rendered from this
    assert set(config["prefetch"]) >= {"patient", "journal", "observations"}
    assert config["labNames"]["http://loinc.org|2276-4"] == "Ferritin"


@pytest.mark.parametrize(
    ("iss", "why"),
    [
        ("http://fhir.example/r4", "https"),
        ("https://user:pw@fhir.example/r4", "credentials"),
        ("not a url", "https"),
    ],
)
def test_local_mode_refuses_unsafe_servers(client: TestClient, iss: str, why: str) -> None:
    assert why in outcome(client.get("/journal/api/check", params={"iss": iss}), 400)


def test_local_mode_allows_loopback_and_https(client: TestClient) -> None:
    for iss in (LOOPBACK_FHIR, "https://fhir.example/r4/"):
        answer = client.get("/journal/api/check", params={"iss": iss})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"allowed": True, "iss": iss.rstrip("/")}
    assert "required" in outcome(client.get("/journal/api/check"), 400)


def test_registry_mode_allows_only_registered_servers(
    app_factory: Callable[..., FastAPI], tmp_path: Path
) -> None:
    app = app_factory(trusted_issuers_file=registry(tmp_path), journal_enabled=True)
    client = TestClient(app)  # no lifespan: the registry's JWKS is never fetched
    assert client.get("/journal/api/check", params={"iss": "https://FHIR.example/r4/"}).is_success
    for other in ("https://fhir.example/other", "https://evil.example/r4", LOOPBACK_FHIR):
        assert "not registered" in outcome(
            client.get("/journal/api/check", params={"iss": other}), 400
        )
    csp = client.get("/journal/").headers["content-security-policy"]
    assert "connect-src 'self' https://fhir.example;" in csp
    assert "frame-ancestors 'self' https://fhir.example" in csp
    assert client.get("/journal/api/config").json()["fhirServers"] == ["https://fhir.example/r4"]


def test_configured_servers_override_local_mode(app_factory: Callable[..., FastAPI]) -> None:
    app = app_factory(journal_fhir_servers=["https://fhir.example/r4"])
    with TestClient(app) as client:
        assert client.get(
            "/journal/api/check", params={"iss": "https://fhir.example/r4"}
        ).is_success
        outcome(client.get("/journal/api/check", params={"iss": LOOPBACK_FHIR}), 400)


def test_off_outside_local_mode_unless_enabled(
    app_factory: Callable[..., FastAPI], tmp_path: Path
) -> None:
    client = TestClient(app_factory(trusted_issuers_file=registry(tmp_path)))
    for path in ("/journal/", "/journal/launch", "/journal/journal.js", "/journal/api/config"):
        assert "not enabled" in outcome(client.get(path), 404)
    with TestClient(app_factory(journal_enabled=False)) as local:
        outcome(local.get("/journal/"), 404)


# --- advice -----------------------------------------------------------------------------------


def demo_prefetch(name: str) -> tuple[str, dict[str, Any]]:
    """A demo patient's bundle as the app would send it: one searchset per prefetch key."""
    path = next(p for p in demo_patient_files() if p.name.startswith(name))
    resources = [e["resource"] for e in json.loads(path.read_text())["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")

    def search(*types: str) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources if r["resourceType"] in types],
        }

    return patient["id"], {
        "patient": patient,
        "conditions": search("Condition"),
        "observations": search("Observation"),
        "symptoms": search(),
        "medicationRequests": search("MedicationRequest"),
        "medicationStatements": search("MedicationStatement"),
        "journal": search("QuestionnaireResponse"),
        "serviceRequests": search("ServiceRequest"),
        "procedures": search("Procedure"),
        "diagnosticReports": search("DiagnosticReport"),
    }


def advice(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/journal/api/advice", json=body)


def test_advice_states_the_cards_for_the_journal(client: TestClient) -> None:
    patient_id, prefetch = demo_prefetch("demo-02")
    body = {"patientId": patient_id, "fhirServer": LOOPBACK_FHIR, "prefetch": prefetch}
    answer = advice(client, body)
    assert answer.status_code == 200, answer.text
    summaries = [c["summary"] for c in answer.json()["cards"]]
    assert any("caffeine after 2 pm" in s for s in summaries), summaries
    assert answer.json()["unavailable"] == []
    # Without the journal the lifestyle card has nothing to tailor: it goes.
    prefetch["journal"] = None
    summaries = [c["summary"] for c in advice(client, body).json()["cards"]]
    assert not any("caffeine" in s for s in summaries)


def test_advice_ignores_other_patients_and_names_what_it_could_not_read(
    client: TestClient,
) -> None:
    patient_id, prefetch = demo_prefetch("demo-02")
    for entry in prefetch["journal"]["entry"]:
        entry["resource"]["subject"] = {"reference": "Patient/someone-else"}
    del prefetch["observations"]  # the app's token could not read labs
    body = {"patientId": patient_id, "fhirServer": LOOPBACK_FHIR, "prefetch": prefetch}
    answer = advice(client, body).json()
    assert not any("caffeine" in c["summary"] for c in answer["cards"])
    assert answer["unavailable"] == ["observations"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"patientId": "../x", "fhirServer": LOOPBACK_FHIR, "prefetch": {}}, "patientId"),
        ({"patientId": "..", "fhirServer": LOOPBACK_FHIR, "prefetch": {}}, "patientId"),
        ({"patientId": "p1\n", "fhirServer": LOOPBACK_FHIR, "prefetch": {}}, "patientId"),
        ({"patientId": "p1", "prefetch": {}}, "fhirServer"),
        ({"patientId": "p1", "fhirServer": "http://evil.example/fhir", "prefetch": {}}, "https"),
        ({"patientId": "p1", "fhirServer": LOOPBACK_FHIR, "prefetch": []}, "prefetch"),
        ([], "object"),
    ],
)
def test_advice_refuses_malformed_requests(client: TestClient, body: Any, why: str) -> None:
    assert why in outcome(advice(client, body), 400)


def test_the_redirects_code_never_reaches_the_log(client: TestClient) -> None:
    """The authorization server redirects to /journal/?code=...&state=...: the request log keeps
    the path only, so the one-time code never lands in a log line (the production JSON lines)."""
    from tests.observability.test_logs_no_phi import Capture

    with Capture("DEBUG") as capture:
        assert client.get("/journal/?code=SECRET-CODE-123&state=STATE-456").status_code == 200
    ours = [line for line in capture.lines if line.get("logger") == "service.request"]
    assert ours and ours[-1]["path"] == "/journal/"
    logged = capture.stream.getvalue()
    assert "SECRET-CODE-123" not in logged and "STATE-456" not in logged


@pytest.mark.parametrize(
    "raw",
    [
        "https://a.example/fhir, https://b.example/fhir",
        '["https://a.example/fhir", "https://b.example/fhir"]',
    ],
)
def test_allowed_servers_setting_reads_a_list_or_json(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    from service.config import Settings

    monkeypatch.setenv("CDS_JOURNAL_FHIR_SERVERS", raw)
    assert Settings().journal_fhir_servers == ["https://a.example/fhir", "https://b.example/fhir"]


def test_cors_origins_setting_reads_the_documented_comma_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """README documents CDS_CORS_ORIGINS as comma-separated (the journal lists share the parser)."""
    from service.config import Settings

    monkeypatch.setenv("CDS_CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_origins == ["https://a.example", "https://b.example"]
