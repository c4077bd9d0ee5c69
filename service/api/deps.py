"""Request dependencies shared by the routes: the app's components and the caller's identity.

Handlers declare what they need with the ``Annotated`` aliases below (``ContextDep``,
``SettingsDep``, ``CallerDep``); this module is the only reader of ``app.state``. Every dependency
is ``async def``: a plain ``def`` would run in the thread pool on every call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from service import security
from service.api.context import AppContext
from service.config import Settings
from service.logging import bind


@dataclass(frozen=True)
class Caller:
    """The authenticated CDS client (None in local mode)."""

    iss: str
    jti: str
    issuer: Any
    tenant: str | None = None


async def app_context(request: Request) -> AppContext:
    context: AppContext = request.app.state.context
    return context


ContextDep = Annotated[AppContext, Depends(app_context)]


async def app_settings(context: ContextDep) -> Settings:
    return context.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


async def authenticate(request: Request, context: ContextDep) -> Caller | None:
    """Verify the caller's JWT (CDS Hooks 2.0 §Trusting CDS Clients); None in local mode.

    Every endpoint that depends on this (discovery, hooks, feedback) is checked. A refusal raises
    ``AuthenticationFailed``; the error handler answers 401 and logs only the reason.
    """
    if context.settings.local_mode:
        return None
    verified = await security.token_verifier_for(context).verify(
        request.headers.get("authorization"), request.url.path
    )
    bind(iss=verified.iss, jti=verified.jti)
    return Caller(
        iss=verified.iss, jti=verified.jti, issuer=verified.issuer, tenant=verified.tenant
    )


CallerDep = Annotated[Caller | None, Depends(authenticate)]
