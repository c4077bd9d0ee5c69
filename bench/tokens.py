"""The benchmark's CDS Client identity: a fresh ES384 key per run, its registry, and its tokens.

Tokens are signed before any timing starts (signing is the client's cost, not the service's), one
per request with a unique ``jti``, because the service refuses a replayed ``jti``.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

ISSUER = "https://bench-ehr.example.org"
KID = "bench-es384"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int_b64(value: int) -> str:
    return _b64(value.to_bytes(48, "big"))


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def write_registry(
    path: Path, key: ec.EllipticCurvePrivateKey, fhir_servers: Sequence[str]
) -> None:
    """An inline-JWKS registry (docs/security.md) trusting this run's key only."""
    numbers = key.public_key().public_numbers()
    jwk = {
        "kty": "EC",
        "crv": "P-384",
        "kid": KID,
        "use": "sig",
        "alg": "ES384",
        "x": _int_b64(numbers.x),
        "y": _int_b64(numbers.y),
    }
    registry = {
        "issuers": [
            {
                "iss": ISSUER,
                "algorithms": ["ES384"],
                "jwks": {"keys": [jwk]},
                "fhir_servers": list(fhir_servers),
            }
        ]
    }
    path.write_bytes(orjson.dumps(registry, option=orjson.OPT_INDENT_2))


def _sign_many(pem: bytes, audience: str, count: int, lifetime_s: int) -> list[str]:
    key = load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    header = _b64(orjson.dumps({"alg": "ES384", "typ": "JWT", "kid": KID}))
    now = int(time.time())
    tokens = []
    for _ in range(count):
        claims = {
            "iss": ISSUER,
            "sub": "bench-client",
            "aud": audience,
            "iat": now,
            "exp": now + lifetime_s,
            "jti": uuid.uuid4().hex,
        }
        signing_input = f"{header}.{_b64(orjson.dumps(claims))}"
        der = key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384()))
        r, s = decode_dss_signature(der)
        tokens.append(f"{signing_input}.{_b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}")
    return tokens


def sign_tokens(
    key: ec.EllipticCurvePrivateKey, audience: str, count: int, *, lifetime_s: int = 1800
) -> list[str]:
    """``count`` tokens for ``audience``, signed on every core (nothing else runs meanwhile)."""
    pem = key_pem(key)
    workers = max(1, min(os.cpu_count() or 1, 4))
    if count < 200 or workers == 1:
        return _sign_many(pem, audience, count, lifetime_s)
    share = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(
            _sign_many, [pem] * workers, [audience] * workers, share, [lifetime_s] * workers
        )
        return [token for part in parts for token in part]
