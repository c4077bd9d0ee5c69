"""TokenVerifier: a valid token per algorithm passes; each attack fails with its own reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.db.database import Database
from service.db.models import Base
from service.errors import AuthenticationFailed, StorageUnavailable
from service.security import (
    IssuerRegistry,
    JwksCache,
    MemoryReplayStore,
    SqlReplayStore,
    TokenVerifier,
    VerifiedCaller,
)

BASE = "https://cds.example.org"
PATH = "/cds-services/sleep-movements"
AUD = BASE + PATH
ISS = "https://ehr.example.com/"
TENANT_ISS = "https://tenanted.example.com"
JKU_ISS = "https://jku.example.com"
ALLOWED_JKU = "https://jku.example.com/jwks.json"
ES_KID = "es-key-1"
RS_KID = "rs-key-1"


@pytest.fixture(scope="session")
def es_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def rs_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, "use": "sig"}


@pytest.fixture(scope="session")
def jwks(es_key: Any, rs_key: Any) -> dict[str, Any]:
    return {"keys": [public_jwk(es_key, ES_KID), public_jwk(rs_key, RS_KID)]}


@pytest.fixture
def registry(jwks: dict[str, Any]) -> IssuerRegistry:
    return IssuerRegistry.from_data(
        [
            {"iss": ISS, "jwks": jwks, "fhir_servers": ["https://fhir.example.com/r4"]},
            {"iss": TENANT_ISS, "jwks": jwks, "tenants": ["tenant-a"]},
            {"iss": JKU_ISS, "jwks_url": ALLOWED_JKU, "allowed_jku": [ALLOWED_JKU]},
        ]
    )


class Recorder:
    """A MockTransport handler that serves one JWKS and counts requests."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(200, json=self.body)


@pytest.fixture
def transport(jwks: dict[str, Any]) -> Recorder:
    return Recorder(jwks)


@pytest.fixture
async def verifier(registry: IssuerRegistry, transport: Recorder) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(transport)) as client:
        yield TokenVerifier(registry, JwksCache(client), MemoryReplayStore(), BASE)


def mint(
    key: Any,
    *,
    alg: str = "ES384",
    kid: str = ES_KID,
    headers: dict[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    **claims: Any,
) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 300,
        "jti": str(uuid.uuid4()),
    }
    payload.update(claims)
    for name in drop:
        payload.pop(name, None)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid, **(headers or {})})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims_now(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISS, "aud": AUD, "iat": now, "exp": now + 300, "jti": str(uuid.uuid4()), **extra}


async def refused(verifier: TokenVerifier, token: str | None, **kwargs: Any) -> str:
    header = None if token is None else f"Bearer {token}"
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(header, PATH, **kwargs)
    if token:
        assert token not in str(caught.value)
        assert token not in caught.value.reason
    return caught.value.reason


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid", "key_name"), [("ES384", ES_KID, "es"), ("RS384", RS_KID, "rs")]
)
async def test_valid_token_is_accepted(
    verifier: TokenVerifier, es_key: Any, rs_key: Any, alg: str, kid: str, key_name: str
) -> None:
    key = es_key if key_name == "es" else rs_key
    token = mint(key, alg=alg, kid=kid, sub="ehr-client", tenant="t-1")
    caller = await verifier.verify(f"Bearer {token}", PATH)
    assert isinstance(caller, VerifiedCaller)
    assert (caller.iss, caller.sub, caller.tenant) == (ISS, "ehr-client", "t-1")
    assert caller.issuer.iss == ISS


async def test_audience_may_be_a_list_and_nbf_in_the_past_is_fine(
    verifier: TokenVerifier, es_key: Any
) -> None:
    token = mint(es_key, aud=["https://other.example", AUD], nbf=int(time.time()) - 300, jti="j-1")
    caller = await verifier.verify(f"bearer  {token}", PATH)
    assert (caller.iss, caller.jti) == (ISS, "j-1")


async def test_issuer_audience_overrides_the_endpoint_url(
    jwks: dict[str, Any], es_key: Any
) -> None:
    registry = IssuerRegistry.from_data([{"iss": ISS, "jwks": jwks, "audience": "urn:cds:ours"}])
    async with httpx.AsyncClient() as client:
        verifier = TokenVerifier(registry, JwksCache(client), MemoryReplayStore(), BASE)
        caller = await verifier.verify(f"Bearer {mint(es_key, aud='urn:cds:ours')}", PATH)
        assert caller.issuer.audience == "urn:cds:ours"
        assert await refused(verifier, mint(es_key)) == "bad-audience"


async def test_allowed_jku_is_fetched_once(
    verifier: TokenVerifier, transport: Recorder, es_key: Any
) -> None:
    for _ in range(3):
        token = mint(es_key, iss=JKU_ISS, headers={"jku": ALLOWED_JKU})
        assert (await verifier.verify(f"Bearer {token}", PATH)).iss == JKU_ISS
    assert [str(r.url) for r in transport.requests] == [ALLOWED_JKU]


# --- refused ------------------------------------------------------------------------------


async def test_tampered_payload(verifier: TokenVerifier, es_key: Any) -> None:
    header, _, signature = mint(es_key).split(".")
    other_payload = mint(es_key, sub="someone-else").split(".")[1]
    assert await refused(verifier, f"{header}.{other_payload}.{signature}") == "bad-signature"


async def test_wrong_signature_key(verifier: TokenVerifier) -> None:
    stranger = ec.generate_private_key(ec.SECP384R1())
    assert await refused(verifier, mint(stranger)) == "bad-signature"


async def test_unknown_kid(verifier: TokenVerifier, es_key: Any, transport: Recorder) -> None:
    assert await refused(verifier, mint(es_key, kid="no-such-kid")) == "unknown-kid"
    assert transport.requests == []  # an inline-JWKS issuer has nowhere to fetch from


async def test_unknown_iss(verifier: TokenVerifier, es_key: Any) -> None:
    assert await refused(verifier, mint(es_key, iss="https://evil.example")) == "unknown-issuer"


@pytest.mark.parametrize(
    "aud",
    [
        BASE + "/cds-services",  # discovery URL, not the service called
        AUD + "/",  # exact compare: no trailing-slash slack
        "http://cds.example.org" + PATH,
        ["https://other.example"],
    ],
)
async def test_wrong_audience(verifier: TokenVerifier, es_key: Any, aud: Any) -> None:
    assert await refused(verifier, mint(es_key, aud=aud)) == "bad-audience"


async def test_missing_audience(verifier: TokenVerifier, es_key: Any) -> None:
    assert await refused(verifier, mint(es_key, drop=("aud",))) == "missing-aud"


async def test_expired(verifier: TokenVerifier, es_key: Any) -> None:
    now = int(time.time())
    assert await refused(verifier, mint(es_key, iat=now - 400, exp=now - 61)) == "expired"


async def test_expiry_within_leeway_is_accepted(verifier: TokenVerifier, es_key: Any) -> None:
    now = int(time.time())
    caller = await verifier.verify(f"Bearer {mint(es_key, iat=now - 400, exp=now - 30)}", PATH)
    assert caller.iss == ISS


async def test_future_iat_beyond_leeway(verifier: TokenVerifier, es_key: Any) -> None:
    now = int(time.time())
    assert await refused(verifier, mint(es_key, iat=now + 120, exp=now + 400)) == "future-iat"


async def test_future_nbf_beyond_leeway(verifier: TokenVerifier, es_key: Any) -> None:
    assert await refused(verifier, mint(es_key, nbf=int(time.time()) + 120)) == "not-yet-valid"


async def test_lifetime_over_an_hour(verifier: TokenVerifier, es_key: Any) -> None:
    now = int(time.time())
    assert await refused(verifier, mint(es_key, exp=now + 7200)) == "lifetime-too-long"


@pytest.mark.parametrize("claim", ["exp", "iat", "jti", "iss"])
async def test_missing_required_claim(verifier: TokenVerifier, es_key: Any, claim: str) -> None:
    reason = await refused(verifier, mint(es_key, drop=(claim,)))
    assert reason == f"missing-{claim}"


async def test_empty_jti(verifier: TokenVerifier, es_key: Any) -> None:
    assert await refused(verifier, mint(es_key, jti="")) == "missing-jti"


@pytest.mark.parametrize("value", ["soon", True, float("nan"), float("inf"), 10**400])
async def test_non_numeric_exp(verifier: TokenVerifier, es_key: Any, value: Any) -> None:
    payload = claims_now(exp=value)
    token = forge(
        {"alg": "ES384", "typ": "JWT", "kid": ES_KID},
        payload,
        lambda data: _es384_raw_signature(es_key, data),
    )
    assert await refused(verifier, token) == "bad-exp"


def _es384_raw_signature(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    return ECAlgorithm(ECAlgorithm.SHA384).sign(data, key)


async def test_replayed_jti(verifier: TokenVerifier, es_key: Any) -> None:
    token = mint(es_key, jti="once")
    assert (await verifier.verify(f"Bearer {token}", PATH)).jti == "once"
    assert await refused(verifier, token) == "replayed-jti"


async def test_same_jti_from_another_issuer_is_not_a_replay(
    verifier: TokenVerifier, es_key: Any
) -> None:
    first = await verifier.verify(f"Bearer {mint(es_key, jti='shared')}", PATH)
    token = mint(es_key, jti="shared", iss=TENANT_ISS, tenant="tenant-a")
    second = await verifier.verify(f"Bearer {token}", PATH)
    assert (first.iss, first.jti) == (ISS, "shared")
    assert (second.iss, second.jti, second.tenant) == (TENANT_ISS, "shared", "tenant-a")


async def test_alg_none(verifier: TokenVerifier) -> None:
    token = forge({"alg": "none", "typ": "JWT", "kid": ES_KID}, claims_now(), lambda _: b"")
    assert await refused(verifier, token) == "alg-not-allowed"
    assert await refused(verifier, token.rstrip(".") + ".") == "alg-not-allowed"


@pytest.mark.parametrize("kid", [ES_KID, RS_KID])
async def test_hs384_with_public_key_pem_as_secret(
    verifier: TokenVerifier, es_key: Any, rs_key: Any, kid: str
) -> None:
    private = es_key if kid == ES_KID else rs_key
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    token = forge(
        {"alg": "HS384", "typ": "JWT", "kid": kid},
        claims_now(),
        lambda data: hmac.new(pem, data, hashlib.sha384).digest(),
    )
    assert await refused(verifier, token) == "alg-not-allowed"


async def test_alg_not_configured_for_issuer(verifier: TokenVerifier) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    assert await refused(verifier, mint(p256, alg="ES256")) == "alg-not-allowed"


async def test_key_used_with_the_wrong_algorithm_family(
    verifier: TokenVerifier, rs_key: Any
) -> None:
    # RS384 token naming the EC key's kid: the key must not be tried with an RSA algorithm.
    assert await refused(verifier, mint(rs_key, alg="RS384", kid=ES_KID)) == "key-alg-mismatch"


async def test_jku_not_allowed_is_never_fetched(
    verifier: TokenVerifier, transport: Recorder, es_key: Any
) -> None:
    for jku in ["http://169.254.169.254/latest/meta-data", "https://jku.example.com/other.json"]:
        token = mint(es_key, iss=JKU_ISS, kid="rotated", headers={"jku": jku})
        assert await refused(verifier, token) == "jku-not-allowed"
        token = mint(es_key, headers={"jku": jku})  # inline-JWKS issuer: same rule
        assert await refused(verifier, token) == "jku-not-allowed"
    assert transport.requests == []


async def test_tenant_not_listed_for_issuer(verifier: TokenVerifier, es_key: Any) -> None:
    assert await refused(verifier, mint(es_key, iss=TENANT_ISS, tenant="tenant-b")) == "bad-tenant"
    assert await refused(verifier, mint(es_key, iss=TENANT_ISS)) == "bad-tenant"
    caller = await verifier.verify(
        f"Bearer {mint(es_key, iss=TENANT_ISS, tenant='tenant-a')}", PATH
    )
    assert (caller.iss, caller.tenant) == (TENANT_ISS, "tenant-a")


async def test_tenant_hint_mismatch(verifier: TokenVerifier, es_key: Any) -> None:
    token = mint(es_key, tenant="tenant-a")
    assert await refused(verifier, token, tenant_hint="tenant-b") == "tenant-mismatch"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "missing-token"),
        ("", "missing-token"),
        ("Bearer ", "missing-token"),
        ("Basic dXNlcjpwYXNz", "not-bearer"),
        ("Bearer not.a.jwt", "malformed-token"),
        ("Bearer " + "a" * 20_000, "token-too-large"),
    ],
)
async def test_bad_authorization_header(
    verifier: TokenVerifier, header: str | None, reason: str
) -> None:
    with pytest.raises(AuthenticationFailed) as caught:
        await verifier.verify(header, PATH)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"typ": "at+jwt"}, "bad-typ"),
        ({"kid": ""}, "missing-kid"),
        ({"crit": ["exp"], "exp": 1}, "malformed-token"),  # PyJWT refuses unknown crit itself
    ],
)
async def test_bad_jose_header(
    verifier: TokenVerifier, es_key: Any, headers: dict[str, Any], reason: str
) -> None:
    assert await refused(verifier, mint(es_key, headers=headers)) == reason


async def test_b64_header_is_refused(verifier: TokenVerifier, es_key: Any) -> None:
    header = {"alg": "ES384", "typ": "JWT", "kid": ES_KID, "b64": True}
    token = forge(header, claims_now(), lambda data: _es384_raw_signature(es_key, data))
    assert await refused(verifier, token) == "unsupported-header"


async def test_missing_kid(verifier: TokenVerifier, es_key: Any) -> None:
    token = jwt.encode(claims_now(), es_key, algorithm="ES384")
    assert await refused(verifier, token) == "missing-kid"


async def test_replay_store_failure_is_503_not_acceptance(
    registry: IssuerRegistry, es_key: Any
) -> None:
    class Broken:
        async def remember(self, iss: str, jti: str, expires_at: Any) -> bool:
            raise ConnectionError("database down")

    async with httpx.AsyncClient() as client:
        verifier = TokenVerifier(registry, JwksCache(client), Broken(), BASE)
        with pytest.raises(StorageUnavailable):
            await verifier.verify(f"Bearer {mint(es_key)}", PATH)


async def test_replay_refused_across_two_verifiers_sharing_sqlite(
    tmp_path: Path, registry: IssuerRegistry, es_key: Any
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'replay.db'}"
    first_db, second_db = Database(url), Database(url)
    try:
        async with first_db.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        async with httpx.AsyncClient() as client:
            first = TokenVerifier(registry, JwksCache(client), SqlReplayStore(first_db), BASE)
            second = TokenVerifier(registry, JwksCache(client), SqlReplayStore(second_db), BASE)
            token = mint(es_key)
            assert (await first.verify(f"Bearer {token}", PATH)).iss == ISS
            assert await refused(second, token) == "replayed-jti"
            assert await refused(first, token) == "replayed-jti"
            assert (await second.verify(f"Bearer {mint(es_key)}", PATH)).iss == ISS
    finally:
        await first_db.dispose()
        await second_db.dispose()
