"""Thin async FHIR R4 client for the prefetch fallback: bounded in time, size, pages and origin.

A CDS client gives the service a few hundred milliseconds, so every call here runs under ONE
absolute deadline shared by all its queries (httpx has only per-operation timeouts). Server faults
never raise: each query comes back as a :class:`FetchResult` with a short machine-readable
``reason``, so the caller can decide between "no data" and 412 per key. Nothing here logs URLs,
tokens or bodies (they carry patient identifiers); only keys, reasons and timings.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx
import orjson

from service.outcome import is_failed_outcome

__all__ = ["FetchResult", "FhirClient", "is_read_query", "make_http_client"]

log = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"

# "Type/id" or "Type/id/_history/vid": a read, whose 404/410 means "no such resource", not a fault.
_READ_RE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?\Z")
_REFERENCE_RE = re.compile(r"^[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}\Z")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+\Z")


class _Fail(Exception):
    """Internal: ends one query with a reason; never escapes this module."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(slots=True)
class FetchResult:
    """Outcome of one query key.

    ``resources`` is empty whenever ``ok`` is false: partial data (e.g. the first pages before a
    page-cap) would let a rule mistake "not fetched" for "absent". ``reason`` is one of
    ``timeout``, ``connect-error`` (no connection, or it broke mid-response), ``http-<status>``,
    ``not-fhir``, ``operation-outcome``, ``page-cap``, ``paging-loop``, ``too-large``,
    ``foreign-next-link`` (a paging link outside the base), ``outside-base`` (a query that would
    leave the base, e.g. through a ``..`` segment).
    """

    key: str
    ok: bool
    resources: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    elapsed_ms: float = 0.0
    pages: int = 0


def make_http_client(
    *,
    connect_s: float = 1.0,
    read_s: float = 2.0,
    max_connections: int = 64,
    proxy: str | None = None,
) -> httpx.AsyncClient:
    """The one pooled client per process (create it in the app lifespan, close it on shutdown).

    Per-operation timeouts only catch a dead peer; the real bound is the per-call deadline in
    :class:`FhirClient`. Redirects are off (a redirect could carry the bearer token elsewhere),
    cookies are refused (the pool is shared between tenants' FHIR servers) and the environment is
    ignored (no surprise proxies or ``.netrc`` credentials).
    """
    return httpx.AsyncClient(
        # Waiting for a pooled connection is bounded by the call's deadline, not by a short pool
        # timeout: under load queries queue instead of failing at once (a 412 for every call).
        timeout=httpx.Timeout(connect=connect_s, read=read_s, write=read_s, pool=read_s),
        limits=httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max(1, max_connections // 2),
            keepalive_expiry=30.0,
        ),
        follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        trust_env=False,
        proxy=proxy,
        headers={"User-Agent": "sleep-movement-cds"},
    )


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port or default)


def _inside(url: httpx.URL, base: httpx.URL) -> bool:
    """Same scheme, host and port as ``base`` and a path under its path, with no dot segment
    (decoded: a server may decode ``%2e%2e`` and then climb). Only such URLs get the token."""
    if _origin(url) != _origin(base):
        return False
    segments = url.path.split("/")
    if any(segment in (".", "..") for segment in segments):
        return False
    prefix = base.path.rstrip("/") + "/"
    return url.path.startswith(prefix)


def is_read_query(query: str) -> bool:
    """``Type/id`` (or a vread): a 404 then means "no such resource", not a fault."""
    return _READ_RE.match(query) is not None


# Requests in flight to one FHIR base (the shared pool holds 64 connections). Queries beyond it
# wait their turn within the call's deadline. Two reasons: a slow server cannot take the whole
# pool from other tenants' servers, and httpx's pool scans every connection and waiting request
# on each assignment, so 16 concurrent calls (112 queries) queued inside it cost 38 ms of CPU
# per call instead of 23 ms (docs/performance.md).
PER_SERVER_REQUESTS = 16


class FhirClient:
    """Concurrent FHIR reads/searches with a shared deadline, paging, and hard limits."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        page_cap: int,
        max_response_bytes: int,
        per_server: int = PER_SERVER_REQUESTS,
    ) -> None:
        if page_cap < 1 or max_response_bytes < 1 or per_server < 1:
            raise ValueError("page_cap, max_response_bytes and per_server must be positive")
        self._http = http
        self._page_cap = page_cap
        self._max_bytes = max_response_bytes
        self._per_server = per_server
        # One semaphore per FHIR base while requests to it are in flight (weak: it goes with
        # its last request, so a server seen once costs nothing afterwards).
        self._slots: weakref.WeakValueDictionary[str, asyncio.Semaphore] = (
            weakref.WeakValueDictionary()
        )

    def _server_slots(self, base: httpx.URL) -> asyncio.Semaphore:
        key = str(base)
        slots = self._slots.get(key)
        if slots is None:
            slots = asyncio.Semaphore(self._per_server)
            self._slots[key] = slots
        return slots

    async def search_many(
        self,
        base_url: str,
        queries: dict[str, str],
        token: str | None,
        deadline_s: float,
    ) -> dict[str, FetchResult]:
        """Run every query concurrently; the whole call ends by ``deadline_s`` (+ a few ms).

        ``queries`` maps a key (e.g. a prefetch key) to a relative FHIR URL such as
        ``Observation?patient=1&code=http://loinc.org|2276-4`` or ``Patient/1``. Raises only
        ``ValueError``, for an invalid base URL, an absolute query, or a token that cannot be a
        header value (control or non-ASCII characters): the caller validates those first.
        """
        base = self._base(base_url)
        if token is not None and not _TOKEN_RE.match(token):
            raise ValueError("bearer token must be visible ASCII (RFC 6750)")
        urls = {key: self._join(base, query) for key, query in queries.items()}
        if not urls:
            return {}
        headers = {"Accept": FHIR_JSON}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        deadline = asyncio.get_running_loop().time() + max(0.0, deadline_s)
        results = await asyncio.gather(
            *(
                self._run_one(key, url, is_read_query(queries[key]), base, headers, deadline)
                for key, url in urls.items()
            )
        )
        return {result.key: result for result in results}

    async def read_references(
        self,
        base_url: str,
        refs: Iterable[str],
        token: str | None,
        deadline_s: float,
    ) -> dict[str, dict[str, Any]]:
        """Resolve relative references such as ``Medication/abc``; failures just omit the ref.

        Contained (``#id``) and absolute references are skipped: the first are in the referring
        resource already, the second may point at a server the token is not meant for.
        """
        wanted = sorted({ref for ref in refs if _REFERENCE_RE.match(ref)})
        results = await self.search_many(base_url, {ref: ref for ref in wanted}, token, deadline_s)
        resolved: dict[str, dict[str, Any]] = {}
        for ref, result in results.items():
            rtype, _, rid = ref.partition("/")
            if result.ok and len(result.resources) == 1:
                resource = result.resources[0]
                if resource.get("resourceType") == rtype and resource.get("id") in (None, rid):
                    resolved[ref] = resource
        return resolved

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _base(base_url: str) -> httpx.URL:
        try:
            base = httpx.URL(base_url.rstrip("/"))
        except httpx.InvalidURL as exc:
            raise ValueError("invalid FHIR base URL") from exc
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("FHIR base URL must be an absolute http(s) URL")
        if base.userinfo:
            raise ValueError("FHIR base URL must not carry credentials")
        return base

    @staticmethod
    def _join(base: httpx.URL, query: str) -> httpx.URL:
        if "://" in query.split("?", 1)[0] or query.startswith("//"):
            raise ValueError("FHIR queries must be relative to the base URL")
        # Queries arrive with their values already percent-encoded (see engine.prefetch);
        # ``_fetch`` refuses the result unless it is inside the base.
        return httpx.URL(f"{base}/{query.lstrip('/')}")

    async def _run_one(
        self,
        key: str,
        url: httpx.URL,
        is_read: bool,
        base: httpx.URL,
        headers: dict[str, str],
        deadline: float,
    ) -> FetchResult:
        started = time.perf_counter()
        result = FetchResult(key=key, ok=False)
        slots = self._server_slots(base)
        try:
            async with asyncio.timeout_at(deadline), slots:
                result.resources = await self._fetch(url, is_read, base, headers, result)
                result.ok = True
        except TimeoutError:
            result.reason = "timeout"
        except _Fail as failure:
            result.reason = failure.reason
        except httpx.DecodingError:
            result.reason = "not-fhir"
        except (httpx.ConnectError, httpx.ConnectTimeout):
            result.reason = "connect-error"
        except httpx.TimeoutException:
            result.reason = "timeout"
        except httpx.TransportError:
            result.reason = "connect-error"
        if not result.ok:
            result.resources = []
        result.elapsed_ms = (time.perf_counter() - started) * 1000.0
        log.debug(
            "fhir fetch key=%s ok=%s reason=%s pages=%d ms=%.1f",
            key,
            result.ok,
            result.reason,
            result.pages,
            result.elapsed_ms,
        )
        return result

    async def _fetch(
        self,
        url: httpx.URL,
        is_read: bool,
        base: httpx.URL,
        headers: dict[str, str],
        result: FetchResult,
    ) -> list[dict[str, Any]]:
        seen: set[str] = set()
        resources: list[dict[str, Any]] = []
        next_url: httpx.URL | None = url
        while next_url is not None:
            if not _inside(next_url, base):
                raise _Fail("outside-base" if next_url is url else "foreign-next-link")
            if str(next_url) in seen:
                raise _Fail("paging-loop")
            if result.pages >= self._page_cap:
                raise _Fail("page-cap")
            seen.add(str(next_url))
            result.pages += 1
            body = await self._get_json(next_url, headers, is_read)
            if body is None:  # a read that found nothing
                return []
            if is_read:
                return [body]
            resources.extend(_searchset_resources(body))
            next_url = _next_link(body, next_url)
        return resources

    async def _get_json(
        self, url: httpx.URL, headers: dict[str, str], is_read: bool
    ) -> dict[str, Any] | None:
        async with self._http.stream("GET", url, headers=headers, follow_redirects=False) as resp:
            if is_read and resp.status_code in (404, 410):
                return None
            if not 200 <= resp.status_code < 300:
                raise _Fail(f"http-{resp.status_code}")
            if "html" in resp.headers.get("content-type", "").lower():
                raise _Fail("not-fhir")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self._max_bytes:
                raise _Fail("too-large")
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > self._max_bytes:
                    raise _Fail("too-large")
                chunks.append(chunk)
        try:
            body = orjson.loads(b"".join(chunks))
        except orjson.JSONDecodeError:
            raise _Fail("not-fhir") from None
        if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
            raise _Fail("not-fhir")
        if body["resourceType"] == "OperationOutcome":
            raise _Fail("operation-outcome")
        return body


def _searchset_resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Entries' resources. ``search.mode=outcome`` entries are dropped unless they report an error
    or an ignored parameter (code ``not-supported``): a server that ignored ``patient=`` answered a
    different, possibly cross-patient, question."""
    if bundle.get("resourceType") != "Bundle":
        raise _Fail("not-fhir")
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise _Fail("not-fhir")
    resources: list[dict[str, Any]] = []
    for entry in entries:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            continue
        search = entry.get("search")
        mode = search.get("mode") if isinstance(search, dict) else None
        if resource["resourceType"] == "OperationOutcome" and mode in ("outcome", None):
            if is_failed_outcome(resource):
                raise _Fail("operation-outcome")
            continue
        resources.append(resource)
    return resources


def _next_link(bundle: dict[str, Any], current: httpx.URL) -> httpx.URL | None:
    links = bundle.get("link", [])
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next":
            href = link.get("url")
            if not isinstance(href, str) or not href:
                raise _Fail("not-fhir")
            try:
                return current.join(href)
            except httpx.InvalidURL:
                raise _Fail("foreign-next-link") from None
    return None
