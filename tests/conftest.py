"""Shared fixtures: a migrated database (SQLite always, PostgreSQL when configured) and the app.

PostgreSQL tests run when ``CDS_TEST_POSTGRES_URL`` is set (CI sets it); each test gets its own
schema, so tests never see each other's rows and never touch the database's public schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service.config import Settings
from service.db.migrate import upgrade_database
from service.main import create_app

# Local mode answers only loopback Host names (DNS rebinding); TestClient and httpx's ASGI
# transport call the app as "testserver" / "test". Tests of the Host check set allowed_hosts=[].
os.environ.setdefault("CDS_ALLOWED_HOSTS", "testserver,test")
POSTGRES_URL = os.environ.get("CDS_TEST_POSTGRES_URL")
NO_POSTGRES = "PostgreSQL not configured: set CDS_TEST_POSTGRES_URL (CI does)"
# The patient-view prefetch keys discovery advertises (and the fallback fetches when absent).
PATIENT_VIEW_KEYS = (
    "patient",
    "conditions",
    "observations",
    "symptoms",
    "medicationRequests",
    "medicationStatements",
    "journal",
    "serviceRequests",
    "procedures",
    "diagnosticReports",
)


def _with_schema(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """An async PostgreSQL URL bound to a fresh, empty schema dropped after the test."""
    if not POSTGRES_URL:
        pytest.skip(NO_POSTGRES)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    sync_url = POSTGRES_URL.replace("+asyncpg", "+psycopg")
    engine = create_engine(sync_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _with_schema(POSTGRES_URL, schema)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'cds.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url


def make_settings(database_url: str, **overrides: Any) -> Settings:
    settings = Settings(database_url=database_url, **overrides)
    upgrade_database(settings)
    return settings


class FrozenClock:
    """A clock tests can set and move."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 25, 9, 0, tzinfo=UTC))


@pytest.fixture
def app_factory(sqlite_url: str, clock: FrozenClock) -> Callable[..., FastAPI]:
    def factory(database_url: str | None = None, **overrides: Any) -> FastAPI:
        fetcher = overrides.pop("fetcher", None)
        settings = make_settings(database_url or sqlite_url, **overrides)
        return create_app(settings, clock=clock, fetcher=fetcher, configure_logging=False)

    return factory


@pytest.fixture
def client(app_factory: Callable[..., FastAPI]) -> Iterator[TestClient]:
    with TestClient(app_factory()) as test_client:
        yield test_client
