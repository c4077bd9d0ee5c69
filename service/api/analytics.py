"""``GET /analytics/cards``: card acceptance and override numbers for the governance committee.

Off unless ``CDS_ANALYTICS_ENABLED`` (404 otherwise, as if it did not exist). The admin token
(``CDS_ADMIN_TOKEN``) sees every issuer's figures; a hook JWT sees only the cards issued to its
own issuer and tenant (one EHR never reads another's figures). Local mode is one scope: open,
unless an admin token is set. The report holds no PHI (see :mod:`service.analytics`).
"""

from __future__ import annotations

import hmac
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from service import analytics
from service.api.deps import ContextDep, authenticate
from service.api.openapi import problem
from service.errors import (
    AuthenticationFailed,
    InvalidRequest,
    StorageUnavailable,
    UnknownService,
)
from service.logging import bind

log = logging.getLogger("service.api")
router = APIRouter()

FORMATS = ("json", "csv")


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


async def authorize_analytics(request: Request, context: ContextDep) -> tuple[str, str] | None:
    """404 when analytics is off; then whose figures: None (all) for the admin token or local
    mode, else the (issuer, tenant) of the hook JWT presented."""
    settings = context.settings
    if not settings.analytics_enabled:
        raise UnknownService("The analytics endpoint is not enabled")
    presented = _bearer(request.headers.get("authorization"))
    if (
        settings.admin_token
        and presented is not None
        and hmac.compare_digest(presented.encode(), settings.admin_token.encode())
    ):
        return None
    if settings.local_mode:
        if settings.admin_token:
            raise AuthenticationFailed(
                "analytics: wrong admin token" if presented else "analytics: no bearer token"
            )
        return None
    caller = await authenticate(request, context)
    if caller is None:  # authenticate returns None only in local mode, handled above
        return None
    return (caller.iss, caller.tenant or "")


_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: problem("Bad dates or format"),
    401: problem("Authentication failed"),
    404: problem("Analytics not enabled"),
    503: problem("Database unavailable"),
    "4XX": problem("Other client error"),
}


@router.get(
    "/analytics/cards",
    responses={
        200: {
            "description": "Card analytics (JSON, or CSV with format=csv)",
            "content": {"application/json": {}, "text/csv": {}},
        },
        **_RESPONSES,
    },
    summary="Card analytics per topic and rule for a period [from, to) (off unless enabled)",
)
async def card_analytics(
    context: ContextDep,
    scope: Annotated[tuple[str, str] | None, Depends(authorize_analytics)],
    start: Annotated[
        str | None, Query(alias="from", description="first day, YYYY-MM-DD (UTC)")
    ] = None,
    end: Annotated[
        str | None, Query(alias="to", description="day after the last, YYYY-MM-DD (exclusive)")
    ] = None,
    output: Annotated[str, Query(alias="format", description="json or csv")] = "json",
) -> Response:
    if output not in FORMATS:
        raise InvalidRequest("format must be json or csv")
    today = context.clock().date()
    try:
        begin, stop = analytics.parse_period(start, end, today)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    try:
        report = await analytics.card_analytics(context.db, begin, stop, scope)
    except Exception as exc:
        log.error(
            "analytics not read: database unavailable",
            extra={"error_type": type(exc).__name__, "outcome": "503"},
        )
        raise StorageUnavailable("Analytics could not be read; retry later") from None
    bind(outcome="ok", cards=report.total.shown)
    if output == "csv":
        filename = f"card-analytics_{begin.isoformat()}_{stop.isoformat()}.csv"
        return Response(
            analytics.render_csv(report),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    return Response(analytics.render_json(report), media_type="application/json")
