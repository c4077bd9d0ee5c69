"""ASGI middleware: body-size and body-time limits, security headers, one log line per request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.api.body_budget import BodyBudget
from service.api.problems import operation_outcome
from service.errors import RequestTimeout, ServerBusy
from service.logging import bind, log_fields

log = logging.getLogger("service.request")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]
# Two years, as the HSTS preload list asks; only when the public URL is https.
HSTS = (b"strict-transport-security", b"max-age=63072000; includeSubDomains")


class _TooLarge(Exception):
    pass


class RequestGuard:
    """Refuses bodies over ``max_body_bytes`` with 413 before reading them whole, and bodies not
    complete ``body_read_timeout_s`` after the headers with 408 (``RequestTimeout``, raised where
    the route reads the body), adds security headers, drops the server banner, and logs one line
    and one latency sample per request.

    Latency runs to the last response byte, so background work after the response (the audit
    row) is not counted against the EHR's wait.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        body_budget: BodyBudget | None = None,
        body_read_timeout_s: float = 5.0,
        hsts: bool = False,
        host_allowed: Callable[[str | None], bool] = lambda host: True,
    ) -> None:
        self.app = app
        self.host_allowed = host_allowed
        self.headers = [*SECURITY_HEADERS, HSTS] if hsts else SECURITY_HEADERS
        self.max_body_bytes = max_body_bytes
        self.body_budget = body_budget
        self.body_read_timeout_s = body_read_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        token = log_fields.set({})
        status_holder: dict[str, Any] = {"status": 500, "started": False, "finished": None}
        limit = self.max_body_bytes

        headers = dict(scope.get("headers") or [])
        refusal = self._refusal(headers)
        if refusal is not None:
            await self._send_error(send, status_holder, *refusal)
            self._log(scope, status_holder, started)
            log_fields.reset(token)
            return

        received = 0
        body_done = False
        read_deadline = asyncio.get_running_loop().time() + self.body_read_timeout_s
        budget = self.body_budget
        reserved: int | None = None  # bytes of the budget this request holds, once it asked

        async def limited_receive() -> Message:
            nonlocal received, body_done, reserved
            if body_done:  # later receives wait for a disconnect: no deadline
                return await receive()
            if reserved is None and budget is not None:
                wanted = budget.reservation(self._declared_size(headers))
                try:
                    async with asyncio.timeout_at(read_deadline):
                        await budget.acquire(wanted)
                except TimeoutError:
                    raise ServerBusy(
                        "Too many request bodies in flight; retry in a few seconds"
                    ) from None
                reserved = wanted
            try:
                async with asyncio.timeout_at(read_deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"Request body not received within {self.body_read_timeout_s:g} s"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _TooLarge
                body_done = not message.get("more_body", False)
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                raw = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"server"]
                message = {**message, "headers": raw + self.headers}
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                status_holder["finished"] = time.perf_counter()

        metrics.IN_FLIGHT.inc()
        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            if not status_holder["started"]:
                await self._send_413(send, status_holder)
        finally:
            if reserved is not None and budget is not None:
                budget.release(reserved)
            metrics.IN_FLIGHT.dec()
            self._log(scope, status_holder, started)
            log_fields.reset(token)

    def _declared_size(self, headers: dict[bytes, bytes]) -> int:
        """The body size a request announces: its ``Content-Length`` (already checked against the
        limit), the limit for a chunked body of unknown length, 0 for no body."""
        declared = headers.get(b"content-length")
        if declared is not None:
            return int(declared)
        return self.max_body_bytes if b"transfer-encoding" in headers else 0

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, str] | None:
        """(status, message, issue code) when the headers alone refuse the request."""
        host = headers.get(b"host")
        if not self.host_allowed(host.decode("latin-1") if host is not None else None):
            # Local mode behind a foreign name: a DNS-rebinding page, not this machine's user.
            return 421, "Host not allowed", "forbidden"
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_body_bytes
            except ValueError:
                too_big = True
            if too_big:
                return 413, f"Request body exceeds {self.max_body_bytes} bytes", "too-costly"
        return None

    async def _send_413(self, send: Send, holder: dict[str, Any]) -> None:
        message = f"Request body exceeds {self.max_body_bytes} bytes"
        await self._send_error(send, holder, 413, message, "too-costly")

    async def _send_error(
        self, send: Send, holder: dict[str, Any], status: int, message: str, code: str
    ) -> None:
        response = operation_outcome(status, message, code=code)
        holder["status"] = status
        holder["started"] = True
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/fhir+json"),
                    (b"content-length", str(len(response.body)).encode()),
                    *self.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": bytes(response.body)})

    @staticmethod
    def _log(scope: Scope, holder: dict[str, Any], started: float) -> None:
        seconds = (holder["finished"] or time.perf_counter()) - started
        latency = round(seconds * 1000, 2)
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        service = (log_fields.get() or {}).get("service_id") or ""
        metrics.observe_request(route, service, holder["status"], seconds)
        bind(
            method=scope.get("method"),
            path=scope.get("path"),
            status=holder["status"],
            latency_ms=latency,
        )
        log.info("request")
