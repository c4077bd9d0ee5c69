"""Start-up decisions: refuse an unsafe configuration, and build the verifier once.

Local mode (no issuer registry, bound to loopback) switches authentication off for development
with the CDS Hooks Sandbox on the same machine. The guard stops that mode from ever being
reachable from another machine, including through a reverse proxy on the same host.
"""

from __future__ import annotations

import logging
from typing import Protocol
from urllib.parse import urlsplit

import httpx

from service.config import Settings, is_loopback_host
from service.db.database import Database
from service.security.issuers import ConfigurationError, IssuerRegistry
from service.security.jwks import JwksCache
from service.security.replay import DegradableReplayStore, SqlReplayStore
from service.security.tokens import TokenVerifier

logger = logging.getLogger(__name__)

LOCAL_MODE_WARNING = "authentication is OFF (local mode)"


def assert_safe_startup(settings: Settings) -> IssuerRegistry | None:
    """Return the loaded registry (None in local mode) or raise ``ConfigurationError``."""
    public_host = urlsplit(settings.public_base_url).hostname or ""
    if settings.trusted_issuers_file is None:
        if not is_loopback_host(settings.host):
            raise ConfigurationError(
                f"refusing to start: authentication is off (CDS_TRUSTED_ISSUERS_FILE is not set) "
                f"but CDS_HOST={settings.host!r} is not a loopback address; set "
                f"CDS_TRUSTED_ISSUERS_FILE or bind to 127.0.0.1"
            )
        if not is_loopback_host(public_host):
            raise ConfigurationError(
                f"refusing to start: authentication is off (CDS_TRUSTED_ISSUERS_FILE is not set) "
                f"but CDS_PUBLIC_BASE_URL={settings.public_base_url!r} is not a loopback URL, "
                f"which means a proxy exposes this service; set CDS_TRUSTED_ISSUERS_FILE"
            )
        logger.warning(LOCAL_MODE_WARNING)
        return None
    if settings.console_on and not settings.admin_token:
        raise ConfigurationError(
            "refusing to start: CDS_CONSOLE_ENABLED=true serves patient lists and charts, and "
            "outside local mode its data routes need CDS_ADMIN_TOKEN; set it or turn the "
            "console off"
        )
    registry = IssuerRegistry.load(settings.trusted_issuers_file)
    if urlsplit(settings.public_base_url).scheme != "https" and not is_loopback_host(public_host):
        logger.warning(
            "CDS_PUBLIC_BASE_URL is not https: CDS Hooks requires TLS, and token audiences "
            "are compared against this URL"
        )
    logger.info(
        "authentication is ON: %d trusted issuer(s) from %s", len(registry), registry.source
    )
    return registry


def create_token_verifier(
    settings: Settings,
    database: Database,
    http_client: httpx.AsyncClient,
    registry: IssuerRegistry | None = None,
) -> TokenVerifier | None:
    """The verifier for this process, or None in local mode. The caller owns ``http_client``."""
    if registry is None:
        registry = assert_safe_startup(settings)
    if registry is None:
        return None
    return TokenVerifier(
        registry,
        JwksCache(http_client),
        DegradableReplayStore(SqlReplayStore(database), clock=database.clock),
        settings.public_base_url,
    )


class VerifierHolder(Protocol):
    """Where the app keeps its verifier (the API's ``AppContext``)."""

    settings: Settings
    db: Database
    token_verifier: TokenVerifier | None
    security_http_client: httpx.AsyncClient | None


def token_verifier_for(state: VerifierHolder) -> TokenVerifier:
    """The app's verifier, built on first use from ``state.settings`` and ``state.db``.

    Synchronous on purpose: with no ``await`` inside, two first requests cannot both build one.
    Callers check ``settings.local_mode`` first; reaching here in local mode is a bug.
    """
    verifier = state.token_verifier
    if verifier is not None:
        return verifier
    settings = state.settings
    registry = assert_safe_startup(settings)
    if registry is None:
        raise ConfigurationError("token verifier requested in local mode")
    client = httpx.AsyncClient(follow_redirects=False)
    verifier = create_token_verifier(settings, state.db, client, registry)
    assert verifier is not None  # a registry was loaded
    state.security_http_client = client
    state.token_verifier = verifier
    return verifier


async def close_token_verifier(state: VerifierHolder) -> None:
    """Close the JWKS HTTP client made by ``token_verifier_for`` (call from the app lifespan)."""
    client = state.security_http_client
    if client is not None:
        state.security_http_client = None
        state.token_verifier = None
        await client.aclose()
