"""A worker holds at most ``CDS_MAX_BODY_BYTES_IN_FLIGHT`` bytes of request bodies: the rest
wait their turn (first come, first served) and are answered normally, or 503 when the wait
outlasts the body-read deadline. This bounds memory under a burst of large prefetches."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from service.api.body_budget import BodyBudget
from tests.api.test_hook_slots import FHIR, SlowFetcher
from tests.factories import PV, patient_view

BODY = orjson.dumps(patient_view(fhir_server=FHIR, omit=("conditions",)))


class GatedFetcher(SlowFetcher):
    """Holds every call in its FHIR fetch (so each keeps its body reserved) until opened."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def search_many(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]:
        await self.gate.wait()
        return await super().search_many(*args, **kwargs)


async def _post(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(PV, content=BODY, headers={"Content-Type": "application/json"})


def test_bodies_beyond_the_budget_wait_their_turn(app_factory: Callable[..., FastAPI]) -> None:
    app = app_factory(max_body_bytes_in_flight=2 * len(BODY) + 10)
    fetcher = GatedFetcher()
    app.state.context.pipeline.fetcher = fetcher
    budget: BodyBudget = app.state.context.body_budget

    async def scenario() -> tuple[list[httpx.Response], int, int]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                calls = [asyncio.create_task(_post(client)) for _ in range(4)]
                for _ in range(100):  # until two calls wait for room (at most a second)
                    if budget.waiting >= 2:
                        break
                    await asyncio.sleep(0.01)
                held, waiting = budget.in_use, budget.waiting
                fetcher.gate.set()
                return await asyncio.gather(*calls), held, waiting

    answered, held, waiting = asyncio.run(scenario())
    assert [r.status_code for r in answered] == [200] * 4
    assert all(r.json()["cards"] for r in answered)
    assert (held, waiting) == (2 * len(BODY), 2)  # two bodies read, two not yet
    assert budget.peak == 2 * len(BODY) and budget.in_use == 0


def test_a_body_that_waits_past_the_read_deadline_gets_503(
    app_factory: Callable[..., FastAPI],
) -> None:
    app = app_factory(max_body_bytes_in_flight=len(BODY), body_read_timeout_s=0.3)
    fetcher = GatedFetcher()
    app.state.context.pipeline.fetcher = fetcher

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                first = asyncio.create_task(_post(client))
                await asyncio.sleep(0.05)
                try:
                    refused = await asyncio.wait_for(_post(client), 5)
                finally:
                    fetcher.gate.set()
                return await first, refused

    first, refused = asyncio.run(scenario())
    assert first.status_code == 200
    assert refused.status_code == 503
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "transient"
    assert "retry" in outcome["issue"][0]["diagnostics"]
    assert app.state.context.body_budget.in_use == 0


async def test_waiters_are_served_in_arrival_order() -> None:
    budget = BodyBudget(100)
    await budget.acquire(60)
    order: list[str] = []

    async def take(name: str, amount: int) -> None:
        await budget.acquire(amount)
        order.append(name)

    big = asyncio.create_task(take("big", 80))
    await asyncio.sleep(0)
    small = asyncio.create_task(take("small", 10))  # would fit now, but arrived after "big"
    await asyncio.sleep(0.01)
    assert order == [] and budget.waiting == 2
    budget.release(60)
    await asyncio.gather(big, small)
    assert order == ["big", "small"] and budget.in_use == 90


async def test_a_cancelled_wait_reserves_nothing_and_unblocks_the_next() -> None:
    budget = BodyBudget(100)
    await budget.acquire(50)
    blocked = asyncio.create_task(budget.acquire(80))
    await asyncio.sleep(0)
    behind = asyncio.create_task(budget.acquire(40))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    await asyncio.wait_for(behind, 1)
    assert budget.in_use == 90 and budget.waiting == 0


async def test_a_request_without_a_body_never_waits() -> None:
    budget = BodyBudget(100)
    await budget.acquire(100)
    queued = asyncio.create_task(budget.acquire(50))
    await asyncio.sleep(0)
    await asyncio.wait_for(budget.acquire(0), 0.1)  # not behind the queued 50 bytes
    assert budget.in_use == 100 and budget.waiting == 1
    budget.release(100)
    await queued


def test_one_body_larger_than_the_budget_still_runs_alone() -> None:
    budget = BodyBudget(100)
    assert budget.reservation(5_000) == 100
    assert budget.reservation(40) == 40
    with pytest.raises(ValueError):
        BodyBudget(0)
