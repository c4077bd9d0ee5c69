"""``sleep-cds purge``: old audit rows and cards go, the feedback suppression still needs stays."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from service.cli.main import main as cli_main
from service.config import Settings
from service.db import repository
from service.db.database import Database
from service.db.repository import AuditRecord, CardRecord, FeedbackRecord
from tests.conftest import make_settings

NOW = datetime.now(UTC)


def audit(patient: str, card: str, days_ago: int) -> AuditRecord:
    return AuditRecord(
        hook_instance=f"h-{card}",
        service_id="sleep-movement-patient-view",
        hook="patient-view",
        patient_id=patient,
        called_at=NOW - timedelta(days=days_ago),
        latency_ms=1.0,
        cards=(CardRecord(card, "k", "lab-check", "info", "R1@1", {"rules": []}),),
    )


def hold(key: str, until: datetime) -> dict[str, Any]:
    return {
        "patient_id": "p1",
        "rule_key": key,
        "issuer": "",
        "tenant": "",
        "rule": "R1@1",
        "card_uuid": "old",
        "outcome": "overridden",
        "reason_code": "not-clinically-relevant",
        "starts_at": NOW - timedelta(days=500),
        "until": until,
        "until_ordered": [],
        "unless_drafted": [],
    }


def count(url: str, table: str) -> int:
    engine = create_engine(Settings(database_url=url).sync_database_url())
    try:
        with engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_purge_keeps_recent_rows_and_holds_in_force(
    database_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make_settings(database_url)

    async def seed() -> None:
        db = Database(database_url)
        try:
            async with db.engine.begin() as connection:
                await connection.run_sync(
                    repository.insert_audits, [audit("p1", "old", 500), audit("p1", "new", 10)]
                )
            items = [
                FeedbackRecord(
                    "s",
                    card,
                    "overridden",
                    NOW,
                    [],
                    None,
                    reason,
                    None,
                    holds=holds,
                )
                for card, reason, holds in (
                    ("old", "a", (hold("k-in-force", NOW + timedelta(days=30)),)),
                    ("old", "b", (hold("k-ended", NOW - timedelta(days=1)),)),
                    ("new", "c", ()),
                )
            ]
            await repository.store_feedback(db, items)
        finally:
            await db.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    assert cli_main(["purge", "--chunk", "1"]) == 0  # default retention: 400 days
    out = capsys.readouterr().out
    assert "1 hook calls, 1 cards shown, 2 feedback items; 1 ended holds" in out
    assert count(database_url, "hook_call") == 1
    assert count(database_url, "card_shown") == 1
    assert count(database_url, "feedback_item") == 1
    assert count(database_url, "suppression") == 1  # the hold in force stays
    assert database_url not in out


def test_purge_refuses_nonsense_days(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["purge", "--days", "0"]) == 1
    assert "--days" in capsys.readouterr().err
