"""FhirClient against a misbehaving server: each fault has its exact reason, the call keeps its
deadline, and healthy keys in the same call still succeed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from service.fhir import FetchResult, FhirClient, make_http_client
from tests.fixtures.bad_fhir import BadFhirServer, closed_port_url

DEADLINE_S = 1.0
MARGIN_S = 0.5
CAP_BYTES = 1024 * 1024
PAGE_CAP = 5


@pytest.fixture
async def client() -> AsyncIterator[FhirClient]:
    http = make_http_client()
    try:
        yield FhirClient(http, page_cap=PAGE_CAP, max_response_bytes=CAP_BYTES)
    finally:
        await http.aclose()


async def timed(
    client: FhirClient, base: str, queries: dict[str, str], token: str | None = None
) -> tuple[dict[str, FetchResult], float]:
    started = time.perf_counter()
    results = await client.search_many(base, queries, token, DEADLINE_S)
    return results, time.perf_counter() - started


FAULTS = [
    ("slow", "timeout"),
    ("drip", "timeout"),
    ("status-500", "http-500"),
    ("status-401", "http-401"),
    ("status-403", "http-403"),
    ("status-302", "http-302"),
    ("html", "not-fhir"),
    ("html-json", "not-fhir"),
    ("badjson", "not-fhir"),
    ("norestype", "not-fhir"),
    ("outcome", "operation-outcome"),
    ("outcome-entry", "operation-outcome"),
    ("ignored-param", "operation-outcome"),
    ("loop", "paging-loop"),
    ("loop2", "paging-loop"),
    ("endless", "page-cap"),
    ("foreign", "foreign-next-link"),
    ("huge", "too-large"),
    ("huge-cl", "too-large"),
    ("drop", "connect-error"),
]


@pytest.mark.parametrize(("mode", "reason"), FAULTS)
async def test_fault_reason_deadline_and_healthy_neighbours(
    client: FhirClient, bad_fhir: BadFhirServer, mode: str, reason: str
) -> None:
    queries = {
        "bad": f"Observation?_bad={mode}&patient=p1",
        "good-search": "Observation?_bad=pages&patient=p1",
        "good-read": "Patient/p1",
    }
    results, elapsed = await timed(client, bad_fhir.url(), queries)
    assert elapsed < DEADLINE_S + MARGIN_S
    bad = results["bad"]
    assert (bad.ok, bad.reason, bad.resources) == (False, reason, [])
    assert results["good-search"].ok and len(results["good-search"].resources) == 6
    assert results["good-search"].pages == 3
    assert results["good-read"].ok
    assert results["good-read"].resources == [{"resourceType": "Patient", "id": "p1"}]


async def test_page_cap_counts_pages(client: FhirClient, bad_fhir: BadFhirServer) -> None:
    results, _ = await timed(client, bad_fhir.url(), {"k": "Observation?_bad=endless"})
    assert results["k"].reason == "page-cap"
    assert results["k"].pages == PAGE_CAP


async def test_foreign_next_link_never_gets_the_token(
    client: FhirClient, bad_fhir: BadFhirServer
) -> None:
    before = len(bad_fhir.requests)
    results, _ = await timed(client, bad_fhir.url(), {"k": "Observation?_bad=foreign"}, "tok-1")
    assert results["k"].reason == "foreign-next-link"
    # Only the first page was requested; the foreign next link was never followed.
    assert len(bad_fhir.requests) - before == 1


async def test_connection_refused(client: FhirClient) -> None:
    results, elapsed = await timed(client, closed_port_url(), {"a": "Patient/p1", "b": "Condition"})
    assert {r.reason for r in results.values()} == {"connect-error"}
    assert elapsed < DEADLINE_S + MARGIN_S


async def test_all_keys_slow_still_bounded(client: FhirClient, bad_fhir: BadFhirServer) -> None:
    queries = {f"k{i}": f"Observation?_bad={'slow' if i % 2 else 'drip'}" for i in range(8)}
    results, elapsed = await timed(client, bad_fhir.url(), queries)
    assert {r.reason for r in results.values()} == {"timeout"}
    assert DEADLINE_S - 0.05 < elapsed < DEADLINE_S + MARGIN_S
    assert all(r.elapsed_ms < (DEADLINE_S + MARGIN_S) * 1000 for r in results.values())


async def test_read_404_is_ok_and_empty(client: FhirClient, bad_fhir: BadFhirServer) -> None:
    results, _ = await timed(client, bad_fhir.url("status-404"), {"p": "Patient/nope"})
    assert results["p"].ok and results["p"].resources == [] and results["p"].reason is None
    results, _ = await timed(client, bad_fhir.url("status-410"), {"p": "Patient/gone"})
    assert results["p"].ok and results["p"].resources == []
    # ... but a search answered 404 is a fault.
    results, _ = await timed(client, bad_fhir.url("status-404"), {"s": "Observation?patient=x"})
    assert results["s"].reason == "http-404"


async def test_bearer_header_arrives(client: FhirClient, bad_fhir: BadFhirServer) -> None:
    await client.search_many(bad_fhir.url("ok"), {"p": "Patient/hdr1"}, "tok-abc", DEADLINE_S)
    seen = [r for r in bad_fhir.requests if r.target.endswith("/Patient/hdr1")][-1]
    assert seen.headers["authorization"] == "Bearer tok-abc"
    assert seen.headers["accept"] == "application/fhir+json"
    await client.search_many(bad_fhir.url("ok"), {"p": "Patient/hdr2"}, None, DEADLINE_S)
    seen = [r for r in bad_fhir.requests if r.target.endswith("/Patient/hdr2")][-1]
    assert "authorization" not in seen.headers


async def test_token_follows_next_links_on_same_origin(
    client: FhirClient, bad_fhir: BadFhirServer
) -> None:
    before = len(bad_fhir.requests)
    results, _ = await timed(client, bad_fhir.url("pages"), {"k": "Observation?patient=p1"}, "t9")
    assert results["k"].pages == 3
    paged = bad_fhir.requests[before:]
    assert len(paged) == 3 and all(r.headers.get("authorization") == "Bearer t9" for r in paged)


async def test_read_references_omits_failures(client: FhirClient, bad_fhir: BadFhirServer) -> None:
    refs = ["Medication/m1", "Medication/m2", "#contained", "http://evil.example/Medication/x"]
    resolved = await client.read_references(bad_fhir.url("ok"), refs, None, DEADLINE_S)
    assert set(resolved) == {"Medication/m1", "Medication/m2"}
    assert resolved["Medication/m1"]["id"] == "m1"
    assert await client.read_references(bad_fhir.url("slow"), ["Medication/m1"], None, 0.3) == {}


# --- unit tests on httpx.MockTransport ------------------------------------------------------


def mock_client(handler: httpx.MockTransport, **kwargs: int) -> FhirClient:
    http = httpx.AsyncClient(transport=handler)
    return FhirClient(
        http,
        page_cap=kwargs.get("page_cap", 3),
        max_response_bytes=kwargs.get("max_response_bytes", CAP_BYTES),
    )


async def test_invalid_inputs_are_programming_errors() -> None:
    client = mock_client(httpx.MockTransport(lambda r: httpx.Response(200)))
    with pytest.raises(ValueError):
        await client.search_many("ftp://x/fhir", {"a": "Patient/1"}, None, 1.0)
    with pytest.raises(ValueError):
        await client.search_many("http://h/fhir", {"a": "http://other/Patient/1"}, None, 1.0)
    with pytest.raises(ValueError):
        FhirClient(httpx.AsyncClient(), page_cap=0, max_response_bytes=1)
    with pytest.raises(ValueError):
        await client.search_many("http://u:p@h/fhir", {"a": "Patient/1"}, None, 1.0)
    for token in ("a\nb", "caf\u00e9", "two words"):
        with pytest.raises(ValueError):
            await client.search_many("http://h/fhir", {"a": "Patient/1"}, token, 1.0)
    assert await client.search_many("http://h/fhir", {}, None, 1.0) == {}


async def test_relative_next_link_and_query_encoding() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        body: dict[str, Any]
        if "page=2" in str(request.url):
            body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        else:
            body = {
                "resourceType": "Bundle",
                "type": "searchset",
                "link": [{"relation": "next", "url": "Observation?page=2"}],
                "entry": [{"resource": {"resourceType": "Observation", "id": "o1"}}],
            }
        return httpx.Response(200, content=orjson.dumps(body))

    client = mock_client(httpx.MockTransport(handler))
    query = "Observation?patient=123&code=http://loinc.org|2276-4"
    results = await client.search_many("http://h/fhir/", {"k": query}, None, 1.0)
    assert results["k"].ok and results["k"].pages == 2
    assert seen[0].startswith("http://h/fhir/Observation?patient=123&code=http")
    assert seen[1] == "http://h/fhir/Observation?page=2"


async def test_warning_outcome_entries_are_dropped_not_fatal() -> None:
    body = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [
            {"resource": {"resourceType": "Condition", "id": "c1"}, "search": {"mode": "match"}},
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [{"severity": "information", "code": "informational"}],
                },
                "search": {"mode": "outcome"},
            },
        ],
    }
    client = mock_client(httpx.MockTransport(lambda r: httpx.Response(200, json=body)))
    results = await client.search_many("http://h/fhir", {"k": "Condition?patient=1"}, None, 1.0)
    assert results["k"].ok and [r["id"] for r in results["k"].resources] == ["c1"]


async def test_size_cap_exact_boundary() -> None:
    payload = orjson.dumps({"resourceType": "Patient", "id": "x"})
    ok = mock_client(
        httpx.MockTransport(lambda r: httpx.Response(200, content=payload)),
        max_response_bytes=len(payload),
    )
    assert (await ok.search_many("http://h/fhir", {"p": "Patient/x"}, None, 1.0))["p"].ok
    too_small = mock_client(
        httpx.MockTransport(lambda r: httpx.Response(200, content=payload)),
        max_response_bytes=len(payload) - 1,
    )
    result = (await too_small.search_many("http://h/fhir", {"p": "Patient/x"}, None, 1.0))["p"]
    assert result.reason == "too-large"


async def test_deadline_cancels_hung_transport() -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    client = mock_client(httpx.MockTransport(handler))
    started = time.perf_counter()
    results = await client.search_many("http://h/fhir", {"a": "Patient/1"}, None, 0.2)
    assert results["a"].reason == "timeout"
    assert time.perf_counter() - started < 0.2 + MARGIN_S


def test_http_client_refuses_cookies_and_redirects() -> None:
    http = make_http_client()
    assert http.follow_redirects is False
    http.cookies.extract_cookies(
        httpx.Response(
            200,
            headers={"set-cookie": "sid=1; Path=/"},
            request=httpx.Request("GET", "http://fhir.example/fhir/Patient/1"),
        )
    )
    assert len(http.cookies.jar) == 0


async def test_one_server_gets_at_most_its_share_and_never_blocks_another() -> None:
    in_flight: dict[str, int] = {"slow": 0, "fast": 0}
    most: dict[str, int] = {"slow": 0, "fast": 0}
    release = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        server = request.url.host
        in_flight[server] += 1
        most[server] = max(most[server], in_flight[server])
        if server == "slow":
            await release.wait()  # a server that holds every request it gets
        else:
            await asyncio.sleep(0.01)
        in_flight[server] -= 1
        return httpx.Response(200, content=orjson.dumps({"resourceType": "Patient", "id": "1"}))

    client = FhirClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        page_cap=3,
        max_response_bytes=CAP_BYTES,
        per_server=4,
    )
    queries = {f"q{i}": "Patient/1" for i in range(10)}
    slow = asyncio.create_task(client.search_many("http://slow/fhir", queries, None, 5.0))
    await asyncio.sleep(0.05)
    fast = await asyncio.wait_for(client.search_many("http://fast/fhir", queries, None, 5.0), 2)
    assert all(r.ok for r in fast.values())
    assert most == {"slow": 4, "fast": 4}
    assert not slow.done()
    release.set()
    assert all(r.ok for r in (await slow).values())
    assert most["slow"] == 4
