"""A FHIR server that drips bytes (slow-loris) or sends a response over the size cap: the hook
call still ends within the FHIR deadline plus a margin, with the cards the other data allow.

The client-level faults are in tests/fhir/test_client_faults.py; these run the whole service
(FhirClient built by the app's lifespan) against tests/fixtures/bad_fhir.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import metrics
from service.main import create_app
from tests.conftest import make_settings
from tests.factories import PV, patient_view
from tests.fixtures.bad_fhir import BadFhirServer

pytestmark = pytest.mark.integration

DEADLINE_S = 1.5
MARGIN_S = 1.5
CAP_BYTES = 1024 * 1024


@pytest.fixture(scope="module")
def bad() -> Iterator[BadFhirServer]:
    with BadFhirServer(drip_s=0.05, huge_bytes=16 * CAP_BYTES) as server:
        yield server


@pytest.fixture
def client(tmp_path: Any) -> Iterator[TestClient]:
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}",
        fhir_deadline_s=DEADLINE_S,
        fhir_max_response_bytes=CAP_BYTES,
    )
    with TestClient(create_app(settings, configure_logging=False)) as test_client:
        yield test_client


def queries(outcome: str) -> float:
    return metrics.sample("cds_fhir_queries_total", key="observations", outcome=outcome)


@pytest.mark.parametrize(("mode", "outcome"), [("drip", "timeout"), ("huge", "too-large")])
def test_bad_fhir_server_costs_only_its_data_and_ends_within_the_deadline(
    client: TestClient, bad: BadFhirServer, mode: str, outcome: str
) -> None:
    # Everything but the labs is prefetched; the labs come from the misbehaving server.
    body = patient_view(fhir_server=bad.url(mode), token="t0k3n", omit=("observations",))
    before = queries(outcome)
    started = time.perf_counter()
    response = client.post(PV, json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    assert elapsed < DEADLINE_S + MARGIN_S, elapsed
    assert queries(outcome) - before == 1
    assert bad.requests_for(mode), "the FHIR server was never asked"
    # Without labs the iron card cannot fire; what the prefetched data supports still comes.
    summaries = " ".join(card["summary"] for card in response.json()["cards"])
    assert "ferritin 40" not in summaries


@pytest.mark.parametrize("mode", ["drip", "huge"])
def test_nothing_obtainable_is_a_412_within_the_deadline(
    client: TestClient, bad: BadFhirServer, mode: str
) -> None:
    body = patient_view(fhir_server=bad.url(mode), token="t0k3n")
    del body["prefetch"]
    started = time.perf_counter()
    response = client.post(PV, json=body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 412, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert elapsed < DEADLINE_S + MARGIN_S, elapsed
