"""Verifying the CDS Client's bearer JWT (CDS Hooks 2.0 §Trusting CDS Clients).

Order matters. Only the header and ``iss`` are read before the signature is checked, and only to
choose the issuer and key; the algorithm is pinned to the issuer's configuration, never taken
on trust from the token (RFC 8725 §3.1). Every refusal is ``AuthenticationFailed(reason)``:
the reason is a short code for the log, the token itself is never logged or echoed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from service.errors import AuthenticationFailed, StorageUnavailable
from service.security.issuers import IssuerConfig, IssuerRegistry
from service.security.jwks import JwksCache, JwksUnavailable, PublicJwk
from service.security.replay import ReplayStore

logger = logging.getLogger(__name__)

LEEWAY_S = 60
"""Clock skew allowed on ``exp``, ``nbf`` and ``iat`` (Inferno uses 60 s)."""
MAX_LIFETIME_S = 3600
"""Longest ``exp - iat`` accepted; bounds how long a jti must be remembered (best practice: 1 h)."""
MAX_TOKEN_CHARS = 16 * 1024
MAX_JTI_CHARS = 256  # the seen_jti.jti column


@dataclass(frozen=True, slots=True)
class VerifiedCaller:
    """Who called, once the token has passed every check. Safe to log (no token)."""

    iss: str
    sub: str | None
    jti: str
    tenant: str | None
    issuer: IssuerConfig


def bearer_token(authorization_header: str | None) -> str:
    """The token from ``Authorization: Bearer <JWT>``."""
    if not authorization_header:
        raise AuthenticationFailed("missing-token")
    scheme, _, token = authorization_header.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthenticationFailed("not-bearer")
    token = token.strip()
    if not token:
        raise AuthenticationFailed("missing-token")
    if len(token) > MAX_TOKEN_CHARS:
        raise AuthenticationFailed("token-too-large")
    return token


def _number(claims: dict[str, Any], name: str) -> float:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AuthenticationFailed(f"bad-{name}")
    try:
        number = float(value)
    except OverflowError:
        raise AuthenticationFailed(f"bad-{name}") from None
    # json.loads accepts NaN and Infinity; both would slip past every comparison below.
    if not math.isfinite(number):
        raise AuthenticationFailed(f"bad-{name}")
    return number


class TokenVerifier:
    """Checks one bearer token per call against the issuer registry."""

    def __init__(
        self,
        registry: IssuerRegistry,
        jwks_cache: JwksCache,
        replay_store: ReplayStore,
        public_base_url: str,
        *,
        leeway_s: int = LEEWAY_S,
        max_lifetime_s: int = MAX_LIFETIME_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self._jwks = jwks_cache
        self._replay = replay_store
        self._base_url = public_base_url.rstrip("/")
        self._leeway_s = leeway_s
        self._max_lifetime_s = max_lifetime_s
        self._clock = clock

    def expected_audience(self, issuer: IssuerConfig, request_path: str) -> str:
        """The issuer's configured ``audience``, else the exact endpoint URL that was called."""
        return issuer.audience or f"{self._base_url}{request_path}"

    async def verify(
        self,
        authorization_header: str | None,
        request_path: str,
        tenant_hint: str | None = None,
    ) -> VerifiedCaller:
        """Accept the call or raise ``AuthenticationFailed``.

        ``tenant_hint``, when the API knows which tenant a call is for, must equal the token's
        ``tenant`` claim.
        """
        token = bearer_token(authorization_header)
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationFailed("malformed-token") from None
        header: dict[str, Any] = unverified["header"]
        unverified_claims: dict[str, Any] = unverified["payload"]

        alg, kid = self._check_header(header)
        iss = unverified_claims.get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthenticationFailed("missing-iss")
        issuer = self._registry.get(iss)
        if issuer is None:
            raise AuthenticationFailed("unknown-issuer")
        if alg not in issuer.algorithms:
            raise AuthenticationFailed("alg-not-allowed")

        key = await self._find_key(issuer, header, kid)
        if not key.usable_with(alg):
            raise AuthenticationFailed("key-alg-mismatch")

        claims = self._decode(token, key, alg, issuer, request_path)
        exp = self._check_times(claims)
        tenant = self._check_tenant(issuer, claims, tenant_hint)
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise AuthenticationFailed("missing-jti")
        if len(jti) > MAX_JTI_CHARS:
            raise AuthenticationFailed("bad-jti")
        sub = claims.get("sub")

        expires_at = datetime.fromtimestamp(exp + self._leeway_s, tz=UTC)
        try:
            first_use = await self._replay.remember(iss, jti, expires_at)
        except Exception as exc:
            # Failing open would let replays through; 503 tells the client to retry later.
            logger.error("replay store unavailable: %s", type(exc).__name__)
            raise StorageUnavailable("token replay check unavailable") from None
        if not first_use:
            raise AuthenticationFailed("replayed-jti")
        return VerifiedCaller(
            iss=iss,
            sub=sub if isinstance(sub, str) else None,
            jti=jti,
            tenant=tenant,
            issuer=issuer,
        )

    @staticmethod
    def _check_header(header: dict[str, Any]) -> tuple[str, str]:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.upper() != "JWT":  # media types are case-insensitive
            raise AuthenticationFailed("bad-typ")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AuthenticationFailed("missing-kid")
        if "crit" in header or "b64" in header:
            # No JWS extension is understood; refusing them keeps the signed bytes unambiguous.
            raise AuthenticationFailed("unsupported-header")
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise AuthenticationFailed("alg-not-allowed")
        return alg, kid

    async def _find_key(self, issuer: IssuerConfig, header: dict[str, Any], kid: str) -> PublicJwk:
        jku = header.get("jku")
        if jku is not None and (not isinstance(jku, str) or not issuer.jku_allowed(jku)):
            raise AuthenticationFailed("jku-not-allowed")  # checked before any network access
        inline = issuer.inline_keys
        if inline is not None:
            key = inline.get(kid)
            if key is not None:
                return key
        url = jku or issuer.jwks_url
        if url is None:
            raise AuthenticationFailed("unknown-kid")
        try:
            fetched = await self._jwks.get_key(url, kid)
        except JwksUnavailable:
            raise AuthenticationFailed("jwks-unavailable") from None
        if fetched is None:
            raise AuthenticationFailed("unknown-kid")
        return fetched

    def _decode(
        self, token: str, key: PublicJwk, alg: str, issuer: IssuerConfig, request_path: str
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.expected_audience(issuer, request_path),
                issuer=issuer.iss,
                options={
                    "require": ["iss", "aud", "exp", "iat", "jti"],
                    # Times are checked in _check_times, with distinct reasons for the log.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.InvalidSignatureError:
            raise AuthenticationFailed("bad-signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationFailed(f"missing-{exc.claim}") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationFailed("bad-audience") from None
        except jwt.InvalidIssuerError:
            raise AuthenticationFailed("unknown-issuer") from None
        except jwt.InvalidAlgorithmError:
            raise AuthenticationFailed("alg-not-allowed") from None
        except jwt.InvalidKeyError:
            raise AuthenticationFailed("bad-key") from None
        except jwt.PyJWTError:
            raise AuthenticationFailed("invalid-token") from None
        return claims

    def _check_times(self, claims: dict[str, Any]) -> float:
        now = self._clock()
        exp = _number(claims, "exp")
        iat = _number(claims, "iat")
        if exp <= now - self._leeway_s:
            raise AuthenticationFailed("expired")
        if iat > now + self._leeway_s:
            raise AuthenticationFailed("future-iat")
        if "nbf" in claims and _number(claims, "nbf") > now + self._leeway_s:
            raise AuthenticationFailed("not-yet-valid")
        if exp - iat > self._max_lifetime_s:
            raise AuthenticationFailed("lifetime-too-long")
        return exp

    @staticmethod
    def _check_tenant(
        issuer: IssuerConfig, claims: dict[str, Any], tenant_hint: str | None
    ) -> str | None:
        tenant = claims.get("tenant")
        if tenant is not None and not isinstance(tenant, str):
            raise AuthenticationFailed("bad-tenant")
        if issuer.tenants is not None and tenant not in issuer.tenants:
            raise AuthenticationFailed("bad-tenant")
        if tenant_hint is not None and tenant != tenant_hint:
            raise AuthenticationFailed("tenant-mismatch")
        return tenant
