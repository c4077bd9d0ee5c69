"""Apply the Alembic migrations (``sleep-cds migrate``, the tests and the bench)."""

from __future__ import annotations

from service.config import REPO_ROOT, Settings


def upgrade_database(settings: Settings, revision: str = "head") -> None:
    """Apply Alembic migrations to ``CDS_DATABASE_URL`` (SQLite's folder is created)."""
    from alembic import command
    from alembic.config import Config

    config = Config(toml_file=str(REPO_ROOT / "pyproject.toml"))
    config.attributes["database_url"] = settings.sync_database_url()
    command.upgrade(config, revision)
