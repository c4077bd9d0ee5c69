"""Migrations upgrade and downgrade cleanly, and the models and the migrations agree."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.config import REPO_ROOT, Settings
from service.db.models import Base

TABLES = {"hook_call", "card_shown", "feedback_item", "seen_jti", "suppression"}


def _config(sync_url: str) -> Config:
    config = Config(toml_file=str(REPO_ROOT / "pyproject.toml"))
    config.attributes["database_url"] = sync_url
    return config


def _tables(sync_url: str) -> set[str]:
    engine = create_engine(sync_url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    sync_url = Settings(database_url=database_url).sync_database_url()
    config = _config(sync_url)
    command.upgrade(config, "head")
    assert _tables(sync_url) == TABLES
    command.downgrade(config, "base")
    assert _tables(sync_url) == set()
    command.upgrade(config, "head")
    assert _tables(sync_url) == TABLES


def test_models_and_migrations_agree(database_url: str) -> None:
    sync_url = Settings(database_url=database_url).sync_database_url()
    command.upgrade(_config(sync_url), "head")
    engine = create_engine(sync_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_existing_rows_survive_the_feedback_trust_migration(database_url: str) -> None:
    """Rows written before revision c851491786c7 stay: cards join the local scope, and stored
    feedback gets a decision time clamped to its receipt (analytics keeps counting it)."""
    from sqlalchemy import text

    sync_url = Settings(database_url=database_url).sync_database_url()
    config = _config(sync_url)
    command.upgrade(config, "59c3ab42c3d7")
    engine = create_engine(sync_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO card_shown (uuid, service_id, patient_id, card_key, topic, "
                    "indicator, rules, shown_at) VALUES ('c1', 's', 'p1', 'k', 'lab-check', "
                    "'info', 'R1@1', '2026-11-01 09:00:00+00:00')"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO feedback_item (item_key, service_id, card_uuid, outcome, "
                    "outcome_at, accepted_suggestions, received_at) VALUES "
                    "('a', 's', 'c1', 'overridden', '9999-12-30 00:00:00+00:00', '[]', "
                    "'2026-11-01 09:01:00+00:00'), "
                    "('b', 's', 'c1', 'overridden', '2026-11-01 09:00:30+00:00', '[]', "
                    "'2026-11-01 09:01:00+00:00')"
                )
            )
        command.upgrade(config, "head")
        with engine.connect() as conn:
            card = conn.execute(text("SELECT issuer, tenant, detail FROM card_shown")).one()
            assert tuple(card) == ("", "", None)
            decided = conn.execute(
                text("SELECT item_key, decided_at FROM feedback_item ORDER BY item_key")
            ).all()
            assert [str(d)[:19] for _, d in decided] == [
                "2026-11-01 09:01:00",  # a far-future timestamp is clamped to receipt
                "2026-11-01 09:00:30",
            ]
    finally:
        engine.dispose()
