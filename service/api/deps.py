"""Request dependencies shared by the routes: the app's components and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from service import security
from service.config import Settings
from service.logging import bind


@dataclass(frozen=True)
class Caller:
    """The authenticated CDS client (None in local mode)."""

    iss: str
    jti: str
    issuer: Any
    tenant: str | None = None


def settings_of(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def authenticate(request: Request) -> Caller | None:
    """Verify the caller's JWT (CDS Hooks 2.0 §Trusting CDS Clients); None in local mode.

    Every endpoint that depends on this (discovery, hooks, feedback) is checked. A refusal raises
    ``AuthenticationFailed``; the error handler answers 401 and logs only the reason.
    """
    if settings_of(request).local_mode:
        return None
    verified = await security.token_verifier_for(request.app.state).verify(
        request.headers.get("authorization"), request.url.path
    )
    bind(iss=verified.iss, jti=verified.jti)
    return Caller(
        iss=verified.iss, jti=verified.jti, issuer=verified.issuer, tenant=verified.tenant
    )


def check_fhir_server(url: str | None, caller: Caller | None) -> None:
    """Refuse, before any connection, a fhirServer the caller may not send its token to."""
    security.check_fhir_server(url, caller)
