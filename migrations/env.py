"""Alembic environment: the URL comes from the service settings (``CDS_DATABASE_URL``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from service.config import Settings
from service.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    # Tests and the CLI pass a URL explicitly; the alembic command line uses CDS_DATABASE_URL.
    explicit = config.attributes.get("database_url")
    return str(explicit) if explicit else Settings().sync_database_url()


def run_migrations_offline() -> None:
    url = _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _url()
    if url.startswith("sqlite:///"):
        from pathlib import Path

        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
