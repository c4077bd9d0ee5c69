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
