"""Authenticating CDS Clients (JWT per call) and deciding which FHIR servers they may name."""

from service.security.fhir_server import AuthenticatedCaller, check_fhir_server
from service.security.issuers import (
    ConfigurationError,
    IssuerConfig,
    IssuerRegistry,
)
from service.security.jwks import JwksCache, JwksUnavailable, KeySet, PublicJwk
from service.security.replay import (
    DegradableReplayStore,
    MemoryReplayStore,
    ReplayStore,
    SqlReplayStore,
)
from service.security.startup import (
    LOCAL_MODE_WARNING,
    assert_safe_startup,
    close_token_verifier,
    create_token_verifier,
    token_verifier_for,
)
from service.security.tokens import TokenVerifier, VerifiedCaller, bearer_token

__all__ = [
    "LOCAL_MODE_WARNING",
    "AuthenticatedCaller",
    "ConfigurationError",
    "DegradableReplayStore",
    "IssuerConfig",
    "IssuerRegistry",
    "JwksCache",
    "JwksUnavailable",
    "KeySet",
    "MemoryReplayStore",
    "PublicJwk",
    "ReplayStore",
    "SqlReplayStore",
    "TokenVerifier",
    "VerifiedCaller",
    "assert_safe_startup",
    "bearer_token",
    "check_fhir_server",
    "close_token_verifier",
    "create_token_verifier",
    "token_verifier_for",
]
