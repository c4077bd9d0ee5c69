"""Injection through identifiers and URLs: a crafted id never changes which FHIR URL is called,
the access token never leaves the registered base, and a value too long to store is a 400.

Each test is one attack from the security review (issue 15) or a variant of it, and the answer
the service now gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import metrics
from service.engine.prefetch import fill_template
from service.fhir import FhirClient
from tests.factories import PV, feedback_item, patient_view

FHIR = "http://127.0.0.1:9/fhir"  # never connected to: a recording transport answers


def assert_400_naming(response: httpx.Response, field: str) -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert field in outcome["issue"][0]["diagnostics"], outcome


HOSTILE_IDS = {
    "climb-two": "p1/../../other",
    "climb-root": "../../admin",
    "dot-dot": "..",
    "dot": ".",
    "query-amp": "p1&_id=other",
    "or-comma": "p1,p2",
    "crlf": "p1\r\nX-Injected: 1",
    "trailing-newline": "p1\n",
    "slash": "p1/_history/1",
    "percent": "p1%2F..",
    "hash": "p1#x",
    "space": "p 1",
    "unicode": "p\u00e91",
    "too-long": "p" * 65,
}


@pytest.mark.parametrize("field", ["patientId", "encounterId"])
@pytest.mark.parametrize("value", HOSTILE_IDS.values(), ids=HOSTILE_IDS.keys())
def test_hostile_patient_and_encounter_ids_are_400_naming_the_field(
    client: TestClient, field: str, value: str
) -> None:
    body = patient_view()
    body["context"][field] = value
    assert_400_naming(client.post(PV, json=body), f"context.{field}")


@pytest.mark.parametrize(
    "value",
    [
        "u1",
        "Practitioner/../x",
        "Practitioner/u1?x=1",
        "practitioner/u1",
        "Practitioner/",
        "/u1",
        "Practitioner/u1\n",
        "http://evil.example/Practitioner/u1",
        "Practitioner/" + "u" * 65,
    ],
)
def test_user_id_must_be_a_reference(client: TestClient, value: str) -> None:
    body = patient_view()
    body["context"]["userId"] = value
    assert_400_naming(client.post(PV, json=body), "context.userId")


def test_valid_ids_still_work(client: TestClient) -> None:
    body = patient_view("A-1.b")
    body["context"]["encounterId"] = "e" * 64
    body["context"]["userId"] = "PractitionerRole/r-1.2"
    response = client.post(PV, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["cards"]


def test_template_tokens_are_filled_encoded_never_spliced() -> None:
    values = {"context.patientId": "a/../b&c=d,e#f?g h"}
    assert fill_template("Patient/{{context.patientId}}", values) == (
        "Patient/a%2F..%2Fb%26c%3Dd%2Ce%23f%3Fg%20h"
    )
    assert fill_template("Condition?patient={{ context.patientId }}&x=1", values) == (
        "Condition?patient=a%2F..%2Fb%26c%3Dd%2Ce%23f%3Fg%20h&x=1"
    )
    with pytest.raises(KeyError):
        fill_template("Patient/{{context.unknown}}", values)


# --- the FHIR client: the token stays inside the registered base ------------------------------


class Recorder:
    """A FHIR server stand-in that records every URL it is asked for, with its token."""

    def __init__(self, pages: dict[str, dict[str, Any]] | None = None) -> None:
        self.seen: list[tuple[str, str | None]] = []
        self.pages = pages or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((str(request.url), request.headers.get("authorization")))
        for marker, body in self.pages.items():
            if marker in str(request.url):
                return httpx.Response(200, content=orjson.dumps(body))
        if "?" not in str(request.url) and "/Patient/" in str(request.url):
            pid = str(request.url).rsplit("/", 1)[-1]
            return httpx.Response(200, json={"resourceType": "Patient", "id": pid})
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    def client(self) -> FhirClient:
        http = httpx.AsyncClient(transport=httpx.MockTransport(self))
        return FhirClient(http, page_cap=5, max_response_bytes=1 << 20)


def next_page(url: str) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "link": [{"relation": "next", "url": url}],
        "entry": [{"resource": {"resourceType": "Observation", "id": "o1"}}],
    }


FOREIGN_NEXT = {
    "other-host": "https://evil.example/fhir/Observation?page=2",
    "other-scheme": "https://127.0.0.1:9/fhir/Observation?page=2",
    "other-port": "http://127.0.0.1:10/fhir/Observation?page=2",
    "other-path": "http://127.0.0.1:9/admin/Observation?page=2",
    "prefix-lookalike": "http://127.0.0.1:9/fhir-admin/Observation?page=2",
    "climb": "http://127.0.0.1:9/fhir/../admin?page=2",
    "relative-climb": "../admin?page=2",
    "root-relative": "/admin?page=2",
    "encoded-climb": "http://127.0.0.1:9/fhir/%2e%2e/admin?page=2",
    "encoded-slash-climb": "Observation%2F..%2F..%2Fadmin?page=2",
    "protocol-relative": "//evil.example/fhir?page=2",
}


@pytest.mark.parametrize("href", FOREIGN_NEXT.values(), ids=FOREIGN_NEXT.keys())
async def test_next_links_outside_the_base_are_not_followed(href: str) -> None:
    recorder = Recorder({"patient=p1": next_page(href)})
    client = recorder.client()
    results = await client.search_many(FHIR, {"k": "Observation?patient=p1"}, "secret-1", 1.0)
    assert (results["k"].ok, results["k"].reason) == (False, "foreign-next-link")
    assert [url for url, _ in recorder.seen] == [f"{FHIR}/Observation?patient=p1"]


async def test_next_link_inside_the_base_is_followed_with_the_token() -> None:
    recorder = Recorder(
        {
            "patient=p1": next_page(f"{FHIR}/Observation?page=2"),
            "page=2": {"resourceType": "Bundle", "type": "searchset"},
        }
    )
    results = await recorder.client().search_many(
        FHIR, {"k": "Observation?patient=p1"}, "secret-1", 1.0
    )
    assert results["k"].ok and results["k"].pages == 2
    assert {token for _, token in recorder.seen} == {"Bearer secret-1"}


@pytest.mark.parametrize(
    "query",
    ["Patient/../../admin", "Patient/%2e%2e/%2e%2e/admin", "Medication/..", "Medication/%2E"],
)
async def test_a_query_that_would_climb_out_of_the_base_is_never_sent(query: str) -> None:
    recorder = Recorder()
    results = await recorder.client().search_many(FHIR, {"k": query}, "secret-1", 1.0)
    assert (results["k"].ok, results["k"].reason) == (False, "outside-base")
    assert recorder.seen == []


def test_hook_call_fetches_only_encoded_urls_under_the_base(
    app_factory: Callable[..., FastAPI],
) -> None:
    """End to end: the fallback's URLs for a valid id are the base plus the encoded template."""
    recorder = Recorder()
    with TestClient(app_factory(fetcher=recorder.client())) as client:
        body = patient_view("p-1.x", fhir_server=FHIR, token="secret-1", omit=("patient",))
        response = client.post(PV, json=body)
    assert response.status_code == 200, response.text
    urls = [url for url, _ in recorder.seen]
    assert f"{FHIR}/Patient/p-1.x" in urls
    for url in urls:  # any key the prefetch lacked: inside the base, about this patient only
        assert url.startswith(f"{FHIR}/"), url
        assert url.endswith("/Patient/p-1.x") or "?patient=p-1.x&" in url, url
    assert {token for _, token in recorder.seen} == {"Bearer secret-1"}


# --- fhirServer and fhirAuthorization ----------------------------------------------------------


@pytest.mark.parametrize(
    "server",
    [f"{FHIR}?_format=json", f"{FHIR}#frag", f"{FHIR}/?", f"{FHIR}#", f"{FHIR}?x=1#y"],
)
def test_fhir_server_with_query_or_fragment_is_400(client: TestClient, server: str) -> None:
    body = patient_view(fhir_server=server, omit=("patient",))
    assert_400_naming(client.post(PV, json=body), "fhirServer")


def test_fhir_authorization_without_fhir_server_is_400(client: TestClient) -> None:
    body = patient_view(token="secret-1")
    assert "fhirServer" not in body
    assert_400_naming(client.post(PV, json=body), "fhirAuthorization without fhirServer")


# --- length limits: a 400 at the door, never a failed audit or feedback write ----------------


def test_overlong_hook_instance_is_400(client: TestClient) -> None:
    body = patient_view()
    body["hookInstance"] = "h" * 129
    assert_400_naming(client.post(PV, json=body), "hookInstance")


def overlong_feedback() -> dict[str, tuple[str, Callable[[dict[str, Any]], None]]]:
    def set_reason(part: str, size: int) -> Callable[[dict[str, Any]], None]:
        return lambda item: item["overrideReason"]["reason"].__setitem__(part, "x" * size)

    def set_comment(item: dict[str, Any]) -> None:
        item["overrideReason"]["userComment"] = "c" * 4001

    def set_card(item: dict[str, Any]) -> None:
        item["card"] = "u" * 129

    def set_time(item: dict[str, Any]) -> None:
        item["outcomeTimestamp"] = "2026-11-25T09:00:00" + "0" * 60 + "Z"

    return {
        "reason-system": ("reason.system", set_reason("system", 257)),
        "reason-code": ("reason.code", set_reason("code", 65)),
        "reason-display": ("reason.display", set_reason("display", 1025)),
        "comment": ("userComment", set_comment),
        "card": ("card", set_card),
        "timestamp": ("outcomeTimestamp", set_time),
    }


@pytest.mark.parametrize("case", overlong_feedback().keys())
def test_overlong_feedback_strings_are_400_on_every_database(
    app_factory: Callable[..., FastAPI], database_url: str, case: str
) -> None:
    field, mutate = overlong_feedback()[case]
    with TestClient(app_factory(database_url)) as client:
        item = feedback_item("card-1")
        mutate(item)
        assert_400_naming(client.post(f"{PV}/feedback", json={"feedback": [item]}), field)
        accepted = feedback_item("card-2", outcome="accepted")
        accepted["acceptedSuggestions"] = [{"id": "s" * 129}]
        assert_400_naming(
            client.post(f"{PV}/feedback", json={"feedback": [accepted]}), "acceptedSuggestions"
        )
        # The longest accepted values are stored, not a 503 from a too-narrow column.
        card = client.post(PV, json=patient_view()).json()["cards"][0]["uuid"]
        item = feedback_item(card)
        item["overrideReason"]["reason"]["system"] = "https://x.example/" + "s" * 238
        item["overrideReason"]["reason"]["code"] = "c" * 64
        item["overrideReason"]["userComment"] = "c" * 4000
        response = client.post(f"{PV}/feedback", json={"feedback": [item]})
        assert response.status_code == 200, response.text
        assert response.json()["stored"] == 1, response.text


def test_longest_ids_are_audited_on_every_database(
    app_factory: Callable[..., FastAPI], database_url: str
) -> None:
    """The longest id and hookInstance the door lets in fit the audit columns (no skipped row)."""
    written = metrics.AUDIT_ROWS.labels(result="written")
    skipped = metrics.AUDIT_ROWS.labels(result="skipped")
    before = (written._value.get(), skipped._value.get())
    with TestClient(app_factory(database_url)) as client:
        body = patient_view("p" * 64)
        body["hookInstance"] = "h" * 128
        body["context"]["encounterId"] = "e" * 64
        response = client.post(PV, json=body)
        assert response.status_code == 200, response.text
        assert response.json()["cards"]
    assert (written._value.get(), skipped._value.get()) == (before[0] + 1, before[1])
