"""check_fhir_server: TLS or loopback always; registered servers only for authenticated callers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from service.errors import ForbiddenFhirServer, InvalidRequest
from service.security import IssuerConfig, VerifiedCaller, check_fhir_server

ALLOWED = "https://fhir.example.com/r4"


@pytest.fixture(scope="module")
def caller() -> VerifiedCaller:
    public = ec.generate_private_key(ec.SECP384R1()).public_key()
    jwks = {"keys": [{**json.loads(ECAlgorithm.to_jwk(public)), "kid": "k1"}]}
    config = IssuerConfig.model_validate(
        {
            "iss": "https://ehr.example.com",
            "jwks": jwks,
            "fhir_servers": [ALLOWED, "http://127.0.0.1:8090/fhir"],
        }
    )
    return VerifiedCaller(iss=config.iss, sub=None, jti="j", tenant=None, issuer=config)


@pytest.mark.parametrize(
    "url",
    [None, ALLOWED, ALLOWED + "/", "HTTPS://FHIR.example.com/r4", "http://127.0.0.1:8090/fhir/"],
)
def test_registered_server_passes(caller: VerifiedCaller, url: str | None) -> None:
    check_fhir_server(url, caller)


@pytest.mark.parametrize(
    "url",
    [
        "https://fhir.example.com/r4/Patient",
        "https://fhir.example.com",
        "https://evil.example.net/r4",
        "https://fhir.example.com.evil.net/r4",
        "http://localhost:9999/fhir",
    ],
)
def test_unregistered_server_is_refused(caller: VerifiedCaller, url: str) -> None:
    with pytest.raises(ForbiddenFhirServer, match="not registered") as caught:
        check_fhir_server(url, caller)
    assert caught.value.status_code == 400
    assert isinstance(caught.value, InvalidRequest)
    assert caller.iss in caught.value.message


@pytest.mark.parametrize("caller_or_none", ["caller", None])
@pytest.mark.parametrize(
    "url",
    [
        "http://fhir.example.com/r4",  # plain http off-machine
        "http://10.0.0.5/fhir",
        "ftp://fhir.example.com/r4",
        "file:///etc/passwd",
        "fhir.example.com/r4",
        "https:///nohost",
        "https://user:secret@fhir.example.com/r4",
        "http://[::1",
    ],
)
def test_scheme_and_host_rule_applies_to_everyone(
    request: pytest.FixtureRequest, caller_or_none: str | None, url: str
) -> None:
    who = request.getfixturevalue("caller") if caller_or_none else None
    with pytest.raises(ForbiddenFhirServer) as caught:
        check_fhir_server(url, who)
    assert "secret" not in caught.value.message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8090/fhir",
        "http://localhost:8080/fhir",
        "http://[::1]:8080/fhir",
        "https://r4.smarthealthit.org",
        "https://fhir.anywhere.example/base",
    ],
)
def test_local_mode_allows_loopback_http_and_any_https(url: str) -> None:
    check_fhir_server(url, None)


def test_message_never_contains_a_token(caller: VerifiedCaller) -> None:
    token: Any = "eyJhbGciOiJFUzM4NCJ9.secret.sig"
    with pytest.raises(ForbiddenFhirServer) as caught:
        check_fhir_server(f"https://evil.example/{token}", caller)
    assert token not in caught.value.message
