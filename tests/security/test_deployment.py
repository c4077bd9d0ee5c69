"""Deployment defaults and local mode: what a browser page, a foreign Host name or an
unauthenticated caller gets from the console, the schema, and the security headers.

Attack in, answer out:
- console data outside local mode without the admin token → 401 (and no start without a token);
- local mode under a foreign Host (DNS rebinding) → 421 OperationOutcome, nothing served;
- local mode, a foreign web origin → no CORS grant; the console's own origin and the CDS Hooks
  Sandbox keep theirs;
- https public URL → HSTS; /openapi.json and /docs off outside local mode unless enabled.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.security.issuers import ConfigurationError
from tests.factories import PV, ec_key, issuer, issuers_file, patient_view

ADMIN = "console-admin-t0ken-1234567890"
LOOPBACK = "http://127.0.0.1:8080"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return issuers_file(tmp_path, issuer("https://ehr.example.com", ec_key(), kid="k"))


# --- the console outside local mode ---------------------------------------------------------


def test_console_outside_local_mode_needs_the_admin_token(
    app_factory: Callable[..., FastAPI], registry: Path
) -> None:
    app = app_factory(trusted_issuers_file=registry, console_enabled=True, admin_token=ADMIN)
    with TestClient(app) as client:
        for path in ("/console/api/config", "/console/api/patients", "/console/api/chart/p1"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN}):
                response = client.get(path, headers=headers)
                assert response.status_code == 401, (path, headers, response.text)
                assert response.json()["resourceType"] == "OperationOutcome"
        config = client.get("/console/api/config", headers={"Authorization": f"Bearer {ADMIN}"})
        assert config.status_code == 200 and config.json()["localMode"] is False
        # The page itself is static (no patient data); its script asks for the token.
        assert client.get("/console").status_code == 200


def test_console_enabled_outside_local_mode_without_a_token_refuses_to_start(
    app_factory: Callable[..., FastAPI], registry: Path
) -> None:
    with pytest.raises(ConfigurationError, match="CDS_ADMIN_TOKEN"):
        app_factory(trusted_issuers_file=registry, console_enabled=True)
    app_factory(trusted_issuers_file=registry)  # console off by default there: starts


# --- local mode: Host and Origin -------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil"]
)
def test_local_mode_refuses_foreign_host_names(
    app_factory: Callable[..., FastAPI], host: str
) -> None:
    """DNS rebinding: a page on evil.example re-points its name at 127.0.0.1; the browser then
    sends Host: evil.example, and gets nothing."""
    with TestClient(app_factory(allowed_hosts=[]), base_url=f"http://{host}") as client:
        for path in ("/console/api/config", "/cds-services", "/console"):
            response = client.get(path)
            assert response.status_code == 421, (path, response.text)
            assert response.json()["issue"][0]["diagnostics"] == "Host not allowed"
        assert client.post(PV, json=patient_view()).status_code == 421


@pytest.mark.parametrize("host", ["127.0.0.1:8080", "localhost:8080", "[::1]:8080", "127.0.0.2"])
def test_local_mode_answers_loopback_host_names(
    app_factory: Callable[..., FastAPI], host: str
) -> None:
    with TestClient(app_factory(allowed_hosts=[]), base_url=f"http://{host}") as client:
        assert client.get("/console/api/config").status_code == 200
        assert client.post(PV, json=patient_view()).status_code == 200


def preflight(client: TestClient, origin: str, path: str = PV) -> dict[str, str]:
    response = client.options(
        path, headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    return dict(response.headers)


def test_local_mode_grants_cors_only_to_its_own_origin_and_the_sandbox(
    app_factory: Callable[..., FastAPI],
) -> None:
    with TestClient(app_factory(allowed_hosts=[]), base_url=LOOPBACK) as client:
        for origin in ("https://sandbox.cds-hooks.org", LOOPBACK, "http://localhost:8080"):
            assert preflight(client, origin).get("access-control-allow-origin") == origin
        for origin in ("https://evil.example", "http://127.0.0.1:9999", "null"):
            assert "access-control-allow-origin" not in preflight(client, origin)
            read = client.get("/console/api/config", headers={"Origin": origin})
            assert "access-control-allow-origin" not in read.headers


def test_configured_origins_are_added_in_local_mode(app_factory: Callable[..., FastAPI]) -> None:
    app = app_factory(allowed_hosts=[], cors_origins=["https://ehr.example.org"])
    with TestClient(app, base_url=LOOPBACK) as client:
        allowed = preflight(client, "https://ehr.example.org")
        assert allowed.get("access-control-allow-origin") == "https://ehr.example.org"
        assert "access-control-allow-origin" not in preflight(client, "https://evil.example")


# --- HSTS and the schema ---------------------------------------------------------------------


def test_hsts_when_the_public_url_is_https(
    app_factory: Callable[..., FastAPI], registry: Path
) -> None:
    app = app_factory(trusted_issuers_file=registry, public_base_url="https://cds.example.org")
    with TestClient(app) as client:
        for response in (client.get("/healthz"), client.get("/cds-services")):
            assert response.headers["strict-transport-security"].startswith("max-age=63072000")
    with TestClient(app_factory()) as client:  # local mode, http
        assert "strict-transport-security" not in client.get("/healthz").headers


def test_openapi_and_docs_are_off_outside_local_mode_unless_enabled(
    app_factory: Callable[..., FastAPI], registry: Path
) -> None:
    with TestClient(app_factory()) as client:
        assert client.get("/openapi.json").status_code == 200
        assert client.get("/docs").status_code == 200
    with TestClient(app_factory(trusted_issuers_file=registry)) as client:
        for path in ("/openapi.json", "/docs"):
            response = client.get(path)
            assert response.status_code == 404 and "OperationOutcome" in response.text
    app = app_factory(trusted_issuers_file=registry, openapi_enabled=True)
    with TestClient(app) as client:
        assert client.get("/openapi.json").json()["info"]["title"] == "Sleep Movement CDS"
