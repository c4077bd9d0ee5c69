"""kill -9 in the middle of a feedback load: every item answered 200 is in the database exactly
once after the restart, and the EHR's retries of everything else store each item once.

The service runs as a real process (``python -m service.cli serve``, what ``sleep-cds serve``
runs) on SQLite and on the test's own PostgreSQL cluster.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.config import Settings
from service.db.migrate import upgrade_database
from tests.factories import PV, feedback_item, patient_view
from tests.reliability.helpers import PrivatePostgres, ServiceProcess

pytestmark = pytest.mark.integration

WORKERS = 16
KILL_AFTER_ACKS = 150  # SIGKILL once this many items have been acknowledged (or after 10 s)


def sync_url(url: str) -> str:
    return Settings(database_url=url).sync_database_url()


def stored_counts(url: str) -> dict[str, int]:
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            result = conn.execute(
                text("SELECT card_uuid, count(*) FROM feedback_item GROUP BY card_uuid")
            )
            return {str(card): int(count) for card, count in result.all()}
    finally:
        engine.dispose()


CARDS = 900  # feedback must name a card the service issued: each item gets its own


def issue_cards(service: ServiceProcess, count: int) -> list[str]:
    """Uuids of real cards, from hook calls (several patients: their own cards)."""
    cards: list[str] = []
    with httpx.Client(base_url=service.base_url, timeout=10.0) as client:
        while len(cards) < count:
            response = client.post(PV, json=patient_view(f"p{len(cards)}"))
            assert response.status_code == 200, response.text
            cards += [card["uuid"] for card in response.json()["cards"]]
    return cards


def batch(worker: int, n: int, pool: list[str]) -> list[dict[str, Any]]:
    """1-3 items, each about its own card (so "exactly once" is a count per card uuid)."""
    size = min(1 + (worker + n) % 3, len(pool))
    now = dt.datetime.now(dt.UTC).isoformat()
    return [feedback_item(pool.pop(), when=now) for _ in range(size)]


async def load_until_killed(
    service: ServiceProcess, pool: list[str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(acknowledged items, items sent without a 200) around a SIGKILL mid-load."""
    acked: list[dict[str, Any]] = []
    unacked: list[dict[str, Any]] = []
    killed = asyncio.Event()

    async def worker(client: httpx.AsyncClient, number: int) -> None:
        n = 0
        while (not killed.is_set() or n % 5) and pool:  # a little more after the kill too
            items = batch(number, n, pool)
            n += 1
            try:
                response = await client.post(f"{PV}/feedback", json={"feedback": items})
            except httpx.HTTPError:
                unacked.extend(items)
                if killed.is_set():
                    return
                continue
            (acked if response.status_code == 200 else unacked).extend(items)

    async def killer() -> None:
        deadline = time.monotonic() + 10
        while len(acked) < KILL_AFTER_ACKS and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        os.kill(service.pid, signal.SIGKILL)
        killed.set()

    limits = httpx.Limits(max_connections=WORKERS)
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5.0, limits=limits) as client:
        await asyncio.gather(killer(), *(worker(client, i) for i in range(WORKERS)))
    return acked, unacked


@pytest.fixture(params=["sqlite", "postgres"])
def kill9_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}"
    cluster: PrivatePostgres = request.getfixturevalue("cluster")
    return cluster.create_database(f"kill9_{uuid.uuid4().hex[:8]}")


def test_kill9_mid_feedback_load_loses_and_duplicates_nothing(
    kill9_database: str, tmp_path: Path
) -> None:
    upgrade_database(Settings(database_url=kill9_database))
    # The feedback rate limit is per issuer; this test is the one client and wants volume.
    service = ServiceProcess(
        kill9_database, tmp_path, CDS_FEEDBACK_RATE_PER_MINUTE="1000000"
    ).start()
    try:
        pool = issue_cards(service, CARDS)
        acked, unacked = asyncio.run(load_until_killed(service, pool))
        assert service.wait(5) == -signal.SIGKILL
        assert len(acked) >= KILL_AFTER_ACKS, service.logs()[-2000:]
        assert unacked, "the kill landed between requests; nothing was in flight"

        service.start()  # same database, new process
        counts = stored_counts(kill9_database)
        missing = [i["card"] for i in acked if counts.get(i["card"]) != 1]
        assert not missing, f"{len(missing)} acknowledged items not stored exactly once"
        assert all(count == 1 for count in counts.values())

        # The EHR retries everything that got no 200 (and, being careful, the rest too).
        stored = duplicates = 0
        with httpx.Client(base_url=service.base_url, timeout=10.0) as client:
            everything = acked + unacked
            for start in range(0, len(everything), 20):  # at most 20 items per request
                response = client.post(
                    f"{PV}/feedback", json={"feedback": everything[start : start + 20]}
                )
                assert response.status_code == 200, response.text
                stored += response.json()["stored"]
                duplicates += response.json()["duplicates"]
        counts = stored_counts(kill9_database)
        assert set(counts) == {i["card"] for i in everything}
        assert all(count == 1 for count in counts.values())
        assert duplicates >= len(acked)
        assert stored + duplicates == len(everything)
        print(
            f"kill -9: {len(acked)} acknowledged, {len(unacked)} unacknowledged "
            f"({len(unacked) - stored} of them had been stored before the kill)"
        )
    finally:
        service.stop()
