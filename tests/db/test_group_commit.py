"""Group commit: concurrent calls share transactions without losing any call's guarantee.

Runs on SQLite and PostgreSQL (``database_url``), against a migrated schema.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text

from service import metrics
from service.db import repository
from service.db.batch import GroupCommit
from service.db.database import Database
from service.db.models import CardShown, HookCall, SeenJti
from service.db.repository import AuditRecord, CardRecord, FeedbackRecord
from tests.conftest import make_settings

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@asynccontextmanager
async def writer(database_url: str) -> AsyncIterator[tuple[Database, GroupCommit]]:
    make_settings(database_url)  # migrates
    database = Database(database_url)
    try:
        yield database, database.group_commit
    finally:
        await database.dispose()


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


async def count(database: Database, column: Any) -> int:
    async with database.engine.connect() as connection:
        return int((await connection.execute(select(func.count(column)))).scalar_one())


def audit(patient: str, *cards: tuple[str, str]) -> AuditRecord:
    return AuditRecord(
        hook_instance=str(uuid.uuid4()),
        service_id="sleep-movement-patient-view",
        hook="patient-view",
        patient_id=patient,
        called_at=NOW,
        latency_ms=3.0,
        cards=tuple(CardRecord(u, key, "lab-check", "info", "R1") for u, key in cards),
    )


def test_concurrent_claims_share_transactions_and_one_token_wins_once(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (database, commit):
            expires = datetime.now(UTC) + timedelta(minutes=5)
            jtis = [uuid.uuid4().hex for _ in range(40)]
            served = metrics.sample("cds_db_group_commit_calls_sum", kind="claims-lookups")
            # 40 distinct tokens plus the first one sent three more times, all at once.
            claims = [commit.claim_jti("iss", j, expires) for j in jtis + [jtis[0]] * 3]
            results = await asyncio.gather(*claims)
            assert results[:40] == [True] * 40
            assert results[40:] == [False] * 3
            assert commit.rounds < len(claims) / 4, "concurrent claims did not share rounds"
            # Operators see the sharing too: every claim is counted in some round's size.
            after = metrics.sample("cds_db_group_commit_calls_sum", kind="claims-lookups")
            assert after - served == len(claims)
            assert await count(database, SeenJti.jti) == 40
            assert await commit.claim_jti("iss", jtis[5], expires) is False

    run(test)


def hold(patient: str, key: str, issuer: str = "", reason: str = "already-addressed") -> Any:
    return {
        "patient_id": patient,
        "rule_key": key,
        "issuer": issuer,
        "tenant": "",
        "rule": "R1@1",
        "card_uuid": "c",
        "outcome": "overridden",
        "reason_code": reason,
        "starts_at": NOW,
        "until": NOW + timedelta(days=30),
        "until_ordered": [],
        "unless_drafted": [],
    }


def test_hold_lookups_in_one_round_get_only_their_own_scopes_rows(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (database, commit):
            holds = [hold("p1", "k-lab"), hold("p1", "k-med"), hold("p2", "k-lab")]
            holds.append(hold("p1", "k-lab", issuer="https://other.example"))
            items = [
                FeedbackRecord(
                    "s",
                    "c",
                    "overridden",
                    NOW,
                    [],
                    "sys",
                    "already-addressed",
                    None,
                    holds=tuple(holds),
                )
            ]
            await repository.store_feedback(database, items)
            p1_lab, p2_lab, p1_med, p3, other = await asyncio.gather(
                commit.holds(("", "", "p1"), ["k-lab"]),
                commit.holds(("", "", "p2"), ["k-lab", "k-other"]),
                commit.holds(("", "", "p1"), ["k-med"]),
                commit.holds(("", "", "p3"), ["k-lab"]),
                commit.holds(("https://other.example", "", "p1"), ["k-lab", "k-med"]),
            )
            assert list(p1_lab) == ["k-lab"]
            assert p1_lab["k-lab"]["outcome"] == "overridden"
            assert p1_lab["k-lab"]["reason_code"] == "already-addressed"
            assert list(p2_lab) == ["k-lab"]
            assert list(p1_med) == ["k-med"]
            assert p3 == {}
            assert list(other) == ["k-lab"]  # another issuer's holds are its own

    run(test)


def test_newer_feedback_replaces_the_hold_and_a_retry_does_not(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (database, commit):
            first = FeedbackRecord(
                "s", "c", "overridden", NOW, [], "sys", "a", None, holds=(hold("p", "k", "", "a"),)
            )
            second = FeedbackRecord(
                "s", "c", "overridden", NOW, [], "sys", "b", None, holds=(hold("p", "k", "", "b"),)
            )
            assert await repository.store_feedback(database, [first]) == (1, 0)
            assert await repository.store_feedback(database, [second]) == (1, 0)
            assert await repository.store_feedback(database, [first]) == (0, 1)  # a retry
            found = await commit.holds(("", "", "p"), ["k"])
            assert found["k"]["reason_code"] == "b"

    run(test)


def test_one_bad_audit_costs_only_its_own_row(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (database, commit):
            await commit.audit(audit("p1", ("dup", "k")))
            good = [audit(f"p{i}", (f"card-{i}", "k")) for i in range(5)]
            bad = audit("p9", ("dup", "k"))  # the card uuid is already stored
            results = await asyncio.gather(
                *(commit.audit(a) for a in [*good[:2], bad, *good[2:]]), return_exceptions=True
            )
            assert [r is None for r in results] == [True, True, False, True, True, True]
            assert await count(database, HookCall.id) == 6
            assert await count(database, CardShown.uuid) == 6

    run(test)


def test_close_writes_what_is_queued(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (database, commit):
            tasks = [asyncio.create_task(commit.audit(audit(f"p{i}"))) for i in range(10)]
            await asyncio.sleep(0)  # queued, not yet written
            await commit.close()
            await asyncio.gather(*tasks)
            assert await count(database, HookCall.id) == 10

    run(test)


def test_database_down_fails_every_waiting_call_and_recovers(tmp_path: Any) -> None:
    async def test() -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}"
        make_settings(url)
        broken = Database(f"sqlite+aiosqlite:///{tmp_path / 'missing' / 'x.db'}")
        commit = broken.group_commit
        expires = datetime.now(UTC) + timedelta(minutes=5)
        results = await asyncio.gather(
            commit.claim_jti("iss", "a", expires),
            commit.holds(("", "", "p"), ["k"]),
            commit.audit(audit("p")),
            return_exceptions=True,
        )
        assert all(isinstance(r, Exception) for r in results)
        await broken.dispose()
        # The same writer type on a working database answers again.
        async with writer(url) as (_, healthy):
            assert await healthy.claim_jti("iss", "a", expires) is True

    run(test)


def test_a_call_with_no_cards_costs_no_lookup(database_url: str) -> None:
    async def test() -> None:
        async with writer(database_url) as (_, commit):
            assert await commit.holds(("", "", "p"), []) == {}
            assert commit.rounds == 0

    run(test)


def test_writer_reconnects_after_its_connection_is_killed(postgres_url: str) -> None:
    """A PostgreSQL restart or failover kills the writer's held connection: the round in flight
    fails (its callers degrade), and the next round works on a new connection."""

    async def test() -> None:
        async with writer(postgres_url) as (database, commit):
            expires = datetime.now(UTC) + timedelta(minutes=5)
            assert await commit.claim_jti("iss", "before", expires) is True
            held = commit._queues.connection if commit._queues else None  # the writer's own
            assert held is not None
            driver = (await held.get_raw_connection()).driver_connection
            assert driver is not None
            pid = driver.info.backend_pid
            async with database.engine.connect() as admin:
                killed = await admin.execute(
                    text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
                )
                assert killed.scalar_one() is True
            outcomes: list[bool | str] = []
            for jti in ("during", "after"):
                try:
                    outcomes.append(await commit.claim_jti("iss", jti, expires))
                except Exception as exc:  # the round that found the connection dead
                    outcomes.append(type(exc).__name__)
            assert outcomes[-1] is True, outcomes
            assert await commit.claim_jti("iss", "before", expires) is False

    run(test)
