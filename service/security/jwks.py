"""JSON Web Key Sets: parsing them into public keys, and an async cache for fetched ones.

Keys are parsed once (not per token) and checked against the token's ``alg`` here, so a key can
never be used with an algorithm family it was not made for (RFC 8725 §3.1). Fetching is
single-flight and rate-limited because the trigger, an unknown ``kid``, is attacker-controlled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

logger = logging.getLogger(__name__)

PublicKey = EllipticCurvePublicKey | RSAPublicKey

_EC_CURVE_FOR_ALG = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
MIN_RSA_BITS = 2048


class JwksUnavailable(Exception):
    """The JWK Set at a URL could not be fetched or parsed."""


@dataclass(frozen=True, slots=True)
class PublicJwk:
    """One verification key with the facts needed to match it to a token's ``alg``."""

    kid: str
    kty: str
    crv: str | None
    alg: str | None
    key: PublicKey

    def usable_with(self, alg: str) -> bool:
        """True if this key may verify ``alg``; a JWK's own ``alg`` pins it."""
        if self.alg is not None and self.alg != alg:
            return False
        if self.kty == "EC":
            return _EC_CURVE_FOR_ALG.get(alg) == self.crv
        return self.kty == "RSA" and alg in _RSA_ALGS


def _parse_jwk(jwk: Mapping[str, Any]) -> PublicJwk:
    kid = jwk.get("kid")
    kty = jwk.get("kty")
    if not isinstance(kid, str) or not kid:
        raise ValueError("key without a 'kid'")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise ValueError(f"key {kid!r} holds private or symmetric key material")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"key {kid!r} is not a signature key (use={jwk.get('use')!r})")
    alg = jwk.get("alg")
    if alg is not None and alg not in _RSA_ALGS and alg not in _EC_CURVE_FOR_ALG:
        raise ValueError(f"key {kid!r} has unsupported alg {alg!r}")
    key: PublicKey
    if kty == "EC":
        parsed_ec = ECAlgorithm.from_jwk(dict(jwk))
        if not isinstance(parsed_ec, EllipticCurvePublicKey):
            raise ValueError(f"key {kid!r} is not an EC public key")
        key = parsed_ec
    elif kty == "RSA":
        parsed_rsa = RSAAlgorithm.from_jwk(dict(jwk))
        if not isinstance(parsed_rsa, RSAPublicKey):
            raise ValueError(f"key {kid!r} is not an RSA public key")
        if parsed_rsa.key_size < MIN_RSA_BITS:
            raise ValueError(f"key {kid!r} is RSA-{parsed_rsa.key_size}, below {MIN_RSA_BITS}")
        key = parsed_rsa
    else:
        raise ValueError(f"key {kid!r} has unsupported kty {kty!r} (EC and RSA only)")
    crv = jwk.get("crv") if kty == "EC" else None
    return PublicJwk(kid=kid, kty=kty, crv=crv, alg=alg, key=key)


class KeySet:
    """Parsed public keys by ``kid``; the first key wins if a set repeats a ``kid``."""

    def __init__(self, keys: Mapping[str, PublicJwk]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_jwks(cls, data: object, *, strict: bool) -> KeySet:
        """Parse a JWK Set. ``strict`` (configuration) raises on any bad key;
        otherwise (a fetched set, which may also publish encryption keys) bad keys are skipped.
        """
        if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
            raise ValueError("a JWK Set must be an object with a 'keys' list")
        keys: dict[str, PublicJwk] = {}
        for index, jwk in enumerate(data["keys"]):
            try:
                if not isinstance(jwk, Mapping):
                    raise ValueError("key is not an object")
                parsed = _parse_jwk(jwk)
            except Exception as exc:  # PyJWT/cryptography raise several types for bad keys
                if strict:
                    raise ValueError(f"keys[{index}]: {exc}") from exc
                continue
            keys.setdefault(parsed.kid, parsed)
        if strict and not keys:
            raise ValueError("the JWK Set has no keys")
        return cls(keys)

    def get(self, kid: str) -> PublicJwk | None:
        return self._keys.get(kid)

    def __iter__(self) -> Iterator[PublicJwk]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)


@dataclass(slots=True)
class _Entry:
    keys: KeySet | None = None
    fetched_at: float = float("-inf")
    attempted_at: float = float("-inf")


class JwksCache:
    """Fetched JWK Sets by URL.

    * A set is reused for ``ttl_s``; after that it is refetched on next use.
    * An unknown ``kid`` triggers a refetch (key rotation), but at most once per
      ``cooldown_s`` per URL, so random ``kid`` values cannot turn us into a request amplifier.
    * Concurrent misses on one URL share one fetch: latecomers wait on the per-URL lock.
    * If a refetch fails, the previous keys stay usable for ``max_stale_s`` past their TTL.
    """

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        ttl_s: float = 300.0,
        cooldown_s: float = 30.0,
        timeout_s: float = 2.0,
        max_stale_s: float = 600.0,
        max_bytes: int = 256 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._cooldown_s = cooldown_s
        self._timeout_s = timeout_s
        self._max_stale_s = max_stale_s
        self._max_bytes = max_bytes
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.fetch_count = 0

    async def get_key(self, url: str, kid: str) -> PublicJwk | None:
        """The key ``kid`` from the set at ``url``; None if the set does not have it.

        Raises ``JwksUnavailable`` when there are no usable keys for ``url`` at all.
        """
        entry = self._entries.setdefault(url, _Entry())
        lock = self._locks.setdefault(url, asyncio.Lock())
        if self._clock() - entry.fetched_at < self._ttl_s and entry.keys is not None:
            key = entry.keys.get(kid)
            if key is not None:
                return key
        # Join a fetch already in flight, or start one if the cooldown allows.
        if lock.locked() or self._clock() - entry.attempted_at >= self._cooldown_s:
            async with lock:
                if self._clock() - entry.attempted_at >= self._cooldown_s:
                    await self._refresh(url, entry)
        if (
            entry.keys is None
            or self._clock() - entry.fetched_at >= self._ttl_s + self._max_stale_s
        ):
            raise JwksUnavailable(url)
        return entry.keys.get(kid)

    async def _refresh(self, url: str, entry: _Entry) -> None:
        entry.attempted_at = self._clock()
        self.fetch_count += 1
        try:
            keys = await self._fetch(url)
        except JwksUnavailable as exc:
            logger.warning("JWKS fetch failed for %s: %s", url, exc)
            return
        entry.keys = keys
        entry.fetched_at = self._clock()

    async def _fetch(self, url: str) -> KeySet:
        try:
            async with asyncio.timeout(self._timeout_s):
                async with self._client.stream(
                    "GET",
                    url,
                    headers={"Accept": "application/json, application/jwk-set+json"},
                    timeout=self._timeout_s,
                    follow_redirects=False,
                ) as response:
                    if response.status_code != 200:
                        raise JwksUnavailable(f"HTTP {response.status_code}")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body += chunk
                        if len(body) > self._max_bytes:
                            raise JwksUnavailable(f"larger than {self._max_bytes} bytes")
        except (httpx.HTTPError, TimeoutError) as exc:
            raise JwksUnavailable(type(exc).__name__) from exc
        try:
            return KeySet.from_jwks(json.loads(body), strict=False)
        except ValueError as exc:  # includes json.JSONDecodeError
            raise JwksUnavailable(f"not a JWK Set: {exc}") from exc
