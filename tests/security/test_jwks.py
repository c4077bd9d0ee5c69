"""KeySet parsing and the JwksCache: single flight, TTL, rate-limited kid refresh, failure modes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from service.errors import AuthenticationFailed
from service.security import (
    IssuerRegistry,
    JwksCache,
    JwksUnavailable,
    KeySet,
    MemoryReplayStore,
    PublicJwk,
    TokenVerifier,
)

URL = "https://ehr.example.com/.well-known/jwks.json"
ISS = "https://ehr.example.com"
BASE = "https://cds.example.org"
PATH = "/cds-services"


@pytest.fixture(scope="session")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def rotated_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="session")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(private_key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        jwk = json.loads(ECAlgorithm.to_jwk(private_key.public_key()))
    else:
        jwk = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
    return {**jwk, "kid": kid, **extra}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    """A MockTransport handler: serves ``body`` (mutable), counts requests, can be slowed."""

    def __init__(self, body: Any, status: int = 200, delay_s: float = 0.0) -> None:
        self.body = body
        self.status = status
        self.delay_s = delay_s
        self.count = 0

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.count += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if isinstance(self.body, bytes):
            return httpx.Response(self.status, content=self.body)
        return httpx.Response(self.status, json=self.body)


def is_key_of(found: PublicJwk | None, private_key: Any, kid: str = "k1") -> bool:
    """``found`` is the public half of ``private_key``, under ``kid``."""
    return (
        found is not None
        and found.kid == kid
        and found.key.public_numbers() == private_key.public_key().public_numbers()
    )


def client_for(server: Server) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(server))


# --- KeySet -----------------------------------------------------------------------------------


def test_keyset_matches_keys_to_algorithms(ec_key: Any, rsa_key: Any) -> None:
    keys = KeySet.from_jwks(
        {
            "keys": [
                jwk_of(ec_key, "ec"),
                jwk_of(rsa_key, "rsa"),
                jwk_of(rsa_key, "pinned", alg="PS384"),
            ]
        },
        strict=True,
    )
    ec_jwk, rsa_jwk, pinned = keys.get("ec"), keys.get("rsa"), keys.get("pinned")
    assert ec_jwk is not None and rsa_jwk is not None and pinned is not None
    assert ec_jwk.usable_with("ES384")
    assert not ec_jwk.usable_with("ES256")  # P-384 key, P-256 algorithm
    assert not ec_jwk.usable_with("RS384")
    assert rsa_jwk.usable_with("RS384") and rsa_jwk.usable_with("PS384")
    assert not rsa_jwk.usable_with("ES384") and not rsa_jwk.usable_with("HS384")
    assert pinned.usable_with("PS384") and not pinned.usable_with("RS384")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda jwk: {**jwk, "d": "AAAA"}, "private"),
        (lambda jwk: {**jwk, "use": "enc"}, "not a signature key"),
        (lambda jwk: {k: v for k, v in jwk.items() if k != "kid"}, "kid"),
        (lambda jwk: {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, "private or symmetric"),
        (lambda jwk: {**jwk, "alg": "HS384"}, "unsupported alg"),
    ],
)
def test_bad_keys_fail_strict_and_are_skipped_otherwise(
    ec_key: Any, mutate: Any, message: str
) -> None:
    bad = mutate(jwk_of(ec_key, "bad"))
    with pytest.raises(ValueError, match=message):
        KeySet.from_jwks({"keys": [bad]}, strict=True)
    lenient = KeySet.from_jwks({"keys": [bad, jwk_of(ec_key, "good")]}, strict=False)
    assert [key.kid for key in lenient] == ["good"]


def test_short_rsa_key_is_refused() -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(ValueError, match="RSA-1024"):
        KeySet.from_jwks({"keys": [jwk_of(weak, "weak")]}, strict=True)


@pytest.mark.parametrize("data", [[], {"keys": {}}, {"nokeys": []}, "text"])
def test_not_a_jwk_set(data: Any) -> None:
    with pytest.raises(ValueError, match="JWK Set"):
        KeySet.from_jwks(data, strict=False)


# --- JwksCache ---------------------------------------------------------------------------------


async def test_concurrent_cold_misses_share_one_fetch(ec_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]}, delay_s=0.05)
    async with client_for(server) as client:
        cache = JwksCache(client)
        keys = await asyncio.gather(*(cache.get_key(URL, "k1") for _ in range(50)))
    assert all(is_key_of(key, ec_key) for key in keys)
    assert server.count == 1


async def test_fifty_concurrent_verifications_with_a_cold_cache_fetch_once(ec_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]}, delay_s=0.05)
    registry = IssuerRegistry.from_data([{"iss": ISS, "jwks_url": URL}])
    now = int(time.time())

    def token() -> str:
        claims = {"iss": ISS, "aud": BASE + PATH, "iat": now, "exp": now + 300}
        claims["jti"] = str(uuid.uuid4())
        return jwt.encode(claims, ec_key, algorithm="ES384", headers={"kid": "k1"})

    async with client_for(server) as client:
        verifier = TokenVerifier(registry, JwksCache(client), MemoryReplayStore(), BASE)
        callers = await asyncio.gather(
            *(verifier.verify(f"Bearer {token()}", PATH) for _ in range(50))
        )
    assert len({caller.jti for caller in callers}) == 50
    assert server.count == 1


async def test_keys_are_reused_within_ttl_and_refetched_after(ec_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]})
    clock = FakeClock()
    async with client_for(server) as client:
        cache = JwksCache(client, ttl_s=300, clock=clock)
        for _ in range(100):
            assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        assert server.count == 1
        clock.now += 301
        assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        assert server.count == 2


async def test_unknown_kid_refresh_is_rate_limited(ec_key: Any, rotated_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]})
    clock = FakeClock()
    async with client_for(server) as client:
        cache = JwksCache(client, cooldown_s=30, clock=clock)
        assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        assert server.count == 1

        # 100 random kids inside the cooldown: no fetch at all (the first fetch was just now).
        for _ in range(100):
            assert await cache.get_key(URL, str(uuid.uuid4())) is None
        assert server.count == 1

        # After the cooldown, one unknown kid triggers one refresh; more misses do not.
        clock.now += 31
        for _ in range(100):
            assert await cache.get_key(URL, str(uuid.uuid4())) is None
        assert server.count == 2

        # The client rotates its key: found after the next cooldown, with exactly one refresh.
        server.body = {"keys": [jwk_of(ec_key, "k1"), jwk_of(rotated_key, "k2")]}
        assert await cache.get_key(URL, "k2") is None
        clock.now += 31
        rotated = await cache.get_key(URL, "k2")
        assert is_key_of(rotated, rotated_key, "k2")
        assert server.count == 3


async def test_concurrent_unknown_kids_share_one_refresh(ec_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]}, delay_s=0.02)
    clock = FakeClock()
    async with client_for(server) as client:
        cache = JwksCache(client, cooldown_s=30, clock=clock)
        assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        clock.now += 31
        results = await asyncio.gather(*(cache.get_key(URL, f"x{i}") for i in range(50)))
    assert results == [None] * 50
    assert server.count == 2


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, {"error": "boom"}),
        (302, {"keys": []}),  # redirects are not followed
        (200, b"<html>not json</html>"),
        (200, {"keys": "nope"}),
        (200, b'{"keys": [' + b'{"kty": "EC"},' * 30_000 + b"{}]}"),  # over the size cap
    ],
)
async def test_fetch_failures_raise_and_are_rate_limited(status: int, body: Any) -> None:
    server = Server(body, status=status)
    clock = FakeClock()
    async with client_for(server) as client:
        cache = JwksCache(client, cooldown_s=30, clock=clock)
        for _ in range(5):
            with pytest.raises(JwksUnavailable):
                await cache.get_key(URL, "k1")
        assert server.count == 1


async def test_slow_server_times_out() -> None:
    server = Server({"keys": []}, delay_s=1.0)
    async with client_for(server) as client:
        cache = JwksCache(client, timeout_s=0.05)
        started = time.perf_counter()
        with pytest.raises(JwksUnavailable):
            await cache.get_key(URL, "k1")
    assert time.perf_counter() - started < 0.5


async def test_stale_keys_survive_a_failed_refresh_for_a_while(ec_key: Any) -> None:
    server = Server({"keys": [jwk_of(ec_key, "k1")]})
    clock = FakeClock()
    async with client_for(server) as client:
        cache = JwksCache(client, ttl_s=300, cooldown_s=30, max_stale_s=600, clock=clock)
        assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        server.status = 503
        clock.now += 400  # expired, refresh fails, old keys still serve
        assert is_key_of(await cache.get_key(URL, "k1"), ec_key)
        clock.now += 600  # beyond ttl + max_stale
        with pytest.raises(JwksUnavailable):
            await cache.get_key(URL, "k1")
    assert server.count == 3


async def test_unreachable_jwks_is_reported_as_jwks_unavailable(ec_key: Any) -> None:
    registry = IssuerRegistry.from_data([{"iss": ISS, "jwks_url": URL}])
    now = int(time.time())
    claims = {"iss": ISS, "aud": BASE + PATH, "iat": now, "exp": now + 300, "jti": "j"}
    token = jwt.encode(claims, ec_key, algorithm="ES384", headers={"kid": "k1"})
    async with client_for(Server({"error": 1}, status=500)) as client:
        verifier = TokenVerifier(registry, JwksCache(client), MemoryReplayStore(), BASE)
        with pytest.raises(AuthenticationFailed) as caught:
            await verifier.verify(f"Bearer {token}", PATH)
    assert caught.value.reason == "jwks-unavailable"
