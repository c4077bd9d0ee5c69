"""Error responses: every non-2xx answer carries a FHIR OperationOutcome, never a stack trace."""

from __future__ import annotations

import logging

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from service.errors import AuthenticationFailed, CDSError

log = logging.getLogger("service.api")

FHIR_JSON = "application/fhir+json"


def operation_outcome(
    status: int,
    message: str,
    *,
    code: str = "invalid",
    expression: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    issue: dict[str, object] = {"severity": "error", "code": code, "diagnostics": message}
    if expression:
        issue["expression"] = expression
    body = {"resourceType": "OperationOutcome", "issue": [issue]}
    return Response(orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


_STATUS_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    406: "not-supported",
    413: "too-costly",
    415: "not-supported",
    503: "transient",
}


async def _cds_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CDSError)
    if isinstance(exc, AuthenticationFailed):
        log.warning("authentication refused", extra={"reason": exc.reason, "outcome": "401"})
        return operation_outcome(
            401,
            "Authentication failed",
            code="login",
            headers={"WWW-Authenticate": 'Bearer realm="cds-services"'},
        )
    return operation_outcome(exc.status_code, exc.message, code=exc.issue_code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "Request failed"
    return operation_outcome(
        exc.status_code,
        message,
        code=_STATUS_CODES.get(exc.status_code, "processing"),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return operation_outcome(400, "Invalid request parameters")


async def _unexpected(request: Request, exc: Exception) -> Response:
    if isinstance(exc, ClientDisconnect):
        # The EHR gave up before sending the whole body: nobody reads this answer.
        log.info("client disconnected", extra={"outcome": "client-disconnect"})
        return operation_outcome(400, "Client disconnected", code="incomplete")
    log.error("unhandled error", exc_info=exc, extra={"outcome": "500"})
    return operation_outcome(500, "Internal error", code="exception")


def install(app: FastAPI) -> None:
    app.add_exception_handler(CDSError, _cds_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
