"""A worker evaluates at most ``CDS_MAX_CONCURRENT_HOOKS`` hook calls at once; the rest wait and
are then answered normally (the bound keeps many large bodies from exhausting memory)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from tests.factories import PV, patient_view, rls_condition

FHIR = "https://fhir.example.org/r4"


@dataclass
class SlowFetcher:
    """Answers every search after a pause, counting how many calls are fetching at once."""

    active: int = 0
    peak: int = 0
    calls: list[str] = field(default_factory=list)

    async def search_many(
        self, base_url: str, queries: dict[str, str], token: str | None, deadline_s: float
    ) -> Mapping[str, Any]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.active -= 1
        self.calls.append(base_url)
        return {key: Found([rls_condition()] if key == "conditions" else []) for key in queries}

    async def read_references(self, *args: Any) -> dict[str, dict[str, Any]]:
        return {}


@dataclass
class Found:
    resources: list[dict[str, Any]]
    ok: bool = True
    reason: str | None = None
    elapsed_ms: float = 1.0


async def fire(app: FastAPI, count: int) -> list[httpx.Response]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = patient_view(fhir_server=FHIR, omit=("conditions",))
            return await asyncio.gather(*(client.post(PV, json=body) for _ in range(count)))


def test_calls_beyond_the_limit_wait_and_are_all_answered(
    app_factory: Callable[..., FastAPI],
) -> None:
    fetcher = SlowFetcher()
    app = app_factory(max_concurrent_hooks=2)
    app.state.context.pipeline.fetcher = fetcher
    responses = asyncio.run(fire(app, 6))
    assert [r.status_code for r in responses] == [200] * 6
    assert all(r.json()["cards"] for r in responses)
    assert len(fetcher.calls) == 6
    assert fetcher.peak == 2


def test_the_default_limit_lets_calls_overlap(app_factory: Callable[..., FastAPI]) -> None:
    fetcher = SlowFetcher()
    app = app_factory()
    app.state.context.pipeline.fetcher = fetcher
    responses = asyncio.run(fire(app, 6))
    assert [r.status_code for r in responses] == [200] * 6
    assert fetcher.peak == 6


def test_readyz_says_when_the_worker_cannot_take_hook_calls(
    app_factory: Callable[..., FastAPI],
) -> None:
    """One slot, one call evaluating and one queued: /readyz is 503 until they are done."""

    async def scenario(app: FastAPI) -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
        gate = asyncio.Event()

        class GatedFetcher(SlowFetcher):
            async def search_many(self, *args: Any, **kwargs: Any) -> Mapping[str, Any]:
                await gate.wait()
                return await super().search_many(*args, **kwargs)

        app.state.context.pipeline.fetcher = GatedFetcher()
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                body = patient_view(fhir_server=FHIR, omit=("conditions",))
                calls = [asyncio.create_task(client.post(PV, json=body)) for _ in range(2)]
                while app.state.context.hook_slots.waiting < 1:
                    await asyncio.sleep(0.01)
                busy = await client.get("/readyz")
                gate.set()
                answered = await asyncio.gather(*calls)
                return answered, busy, await client.get("/readyz")

    answered, busy, idle = asyncio.run(scenario(app_factory(max_concurrent_hooks=1)))
    assert [r.status_code for r in answered] == [200, 200]
    assert busy.status_code == 503
    assert busy.json()["hookSlots"] == {"limit": 1, "busy": 1, "waiting": 1, "available": False}
    assert busy.json()["database"] is True
    assert idle.status_code == 200 and idle.json()["hookSlots"]["available"] is True
