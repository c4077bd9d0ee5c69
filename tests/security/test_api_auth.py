"""The API's authentication dependency: every endpoint checked, 401s reveal nothing."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.factories import ec_key, issuer, issuers_file, signed_token

BASE = "http://testserver"  # TestClient's base URL, used as CDS_PUBLIC_BASE_URL
ISS = "https://ehr.example.com"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec_key()


class NoNetwork:
    """A FHIR fetcher that records where it was sent and never touches the network."""

    def __init__(self) -> None:
        self.base_urls: list[str] = []

    async def search_many(self, base_url: str, *args: Any) -> Any:
        self.base_urls.append(base_url)
        raise ConnectionError("no network in tests")

    async def read_references(self, base_url: str, *args: Any) -> Any:
        self.base_urls.append(base_url)
        raise ConnectionError("no network in tests")


@pytest.fixture
def fetcher() -> NoNetwork:
    return NoNetwork()


@pytest.fixture
def auth_client(
    app_factory: Callable[..., FastAPI], tmp_path: Path, key: Any, fetcher: NoNetwork
) -> Iterator[TestClient]:
    registry = issuers_file(tmp_path, issuer(ISS, key, fhir_servers=["https://fhir.example"]))
    app = app_factory(trusted_issuers_file=registry, public_base_url=BASE, fetcher=fetcher)
    with TestClient(app) as client:
        yield client


def token(key: Any, path: str, **claims: Any) -> str:
    return signed_token(key, claims.pop("iss", ISS), BASE + path, **claims)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def first_service_id(client: TestClient, key: Any) -> str:
    response = client.get("/cds-services", headers=bearer(token(key, "/cds-services")))
    assert response.status_code == 200
    service_id: str = response.json()["services"][0]["id"]
    return service_id


def test_local_mode_needs_no_token(client: TestClient) -> None:
    assert client.get("/cds-services").status_code == 200


def test_valid_token_passes_on_discovery_hooks_and_feedback(
    auth_client: TestClient, key: Any
) -> None:
    service_id = first_service_id(auth_client, key)
    for path in (f"/cds-services/{service_id}", f"/cds-services/{service_id}/feedback"):
        response = auth_client.post(path, content=b"{}", headers=bearer(token(key, path)))
        assert response.status_code == 400, path  # past authentication, refused on the body
        refused = auth_client.post(path, content=b"{}")
        assert refused.status_code == 401, path


def test_refusals_are_identical_401s_and_the_reason_is_only_logged(
    auth_client: TestClient, key: Any, caplog: pytest.LogCaptureFixture
) -> None:
    discovery = "/cds-services"
    replayed = token(key, discovery)
    assert auth_client.get(discovery, headers=bearer(replayed)).status_code == 200
    attempts = {
        "missing-token": {},
        "bad-audience": bearer(token(key, "/cds-services/other")),
        "unknown-issuer": bearer(token(key, discovery, iss="https://evil.example")),
        "replayed-jti": bearer(replayed),
    }
    bodies = set()
    with caplog.at_level(logging.INFO):
        for reason, headers in attempts.items():
            caplog.clear()
            response = auth_client.get(discovery, headers=headers)
            assert response.status_code == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            bodies.add(response.content)
            assert reason.encode() not in response.content
            reasons = [getattr(record, "reason", None) for record in caplog.records]
            assert reason in reasons
            if headers:
                presented = headers["Authorization"].removeprefix("Bearer ")
                assert presented not in caplog.text
    assert len(bodies) == 1
    assert b"Authentication failed" in bodies.pop()


def test_unregistered_fhir_server_is_refused_for_an_authenticated_caller(
    auth_client: TestClient, key: Any, fetcher: NoNetwork
) -> None:
    response = auth_client.get("/cds-services", headers=bearer(token(key, "/cds-services")))
    services = [s for s in response.json()["services"] if s["hook"] == "patient-view"]
    assert services
    path = f"/cds-services/{services[0]['id']}"
    body = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": "https://elsewhere.example/fhir",
        "context": {"patientId": "p1", "userId": "Practitioner/1"},
        "prefetch": {},
    }
    response = auth_client.post(path, json=body, headers=bearer(token(key, path)))
    assert fetcher.base_urls == []
    assert response.status_code == 400
    assert "fhirServer" in response.text


def test_an_unauthenticated_body_is_never_read_nor_reserved(
    auth_client: TestClient, key: Any
) -> None:
    """The body budget is reserved when the route reads the body, after the JWT check: a client
    without a valid token cannot hold the worker's budget (or memory) with large bodies."""
    budget = auth_client.app.state.context.body_budget  # type: ignore[attr-defined]
    path = f"/cds-services/{first_service_id(auth_client, key)}"
    body = b'{"hook": "patient-view", "padding": "' + b"x" * 1_000_000 + b'"}'
    refused = auth_client.post(path, content=body, headers=bearer("not-a-jwt"))
    assert refused.status_code == 401
    assert budget.peak == 0 and budget.in_use == 0
    read = auth_client.post(path, content=body, headers=bearer(token(key, path)))
    assert read.status_code == 400  # past authentication: the body was read, then refused
    assert budget.peak == len(body) and budget.in_use == 0
