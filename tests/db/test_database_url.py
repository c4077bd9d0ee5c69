"""``CDS_DATABASE_URL`` in the plain forms hosting providers hand out (``sqlite:///``,
``postgresql://``, ``postgres://``) runs on the async driver; anything else stops the CLI with one
line naming the setting and the accepted forms, never a SQLAlchemy traceback or the password."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import text

from service.cli.main import main
from service.config import Settings, get_settings
from service.db.database import Database
from service.db.migrate import upgrade_database


@pytest.mark.parametrize(
    ("given", "used", "sync"),
    [
        ("sqlite:////srv/cds.db", "sqlite+aiosqlite:////srv/cds.db", "sqlite:////srv/cds.db"),
        (
            "sqlite+aiosqlite:///var/cds.db",
            "sqlite+aiosqlite:///var/cds.db",
            "sqlite:///var/cds.db",
        ),
        (
            "postgresql://cds:pw@db.example:5432/cds",
            "postgresql+psycopg://cds:pw@db.example:5432/cds",
            "postgresql+psycopg://cds:pw@db.example:5432/cds",
        ),
        (
            "postgres://cds@db/cds",
            "postgresql+psycopg://cds@db/cds",
            "postgresql+psycopg://cds@db/cds",
        ),
        (
            "postgresql+psycopg://cds@db/cds",
            "postgresql+psycopg://cds@db/cds",
            "postgresql+psycopg://cds@db/cds",
        ),
    ],
)
def test_plain_urls_get_the_async_driver(given: str, used: str, sync: str) -> None:
    settings = Settings(database_url=given)
    assert settings.database_url == used
    assert settings.sync_database_url() == sync


@pytest.mark.parametrize(
    "given", ["mysql://cds:s3cret@db/cds", "postgresql+psycopg2://cds:s3cret@db/cds", "s3cret"]
)
def test_other_urls_are_refused_naming_the_setting_and_the_forms(given: str) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(database_url=given)
    message = caught.value.errors(include_input=False)[0]["msg"]
    assert "CDS_DATABASE_URL: unsupported" in message
    assert "postgresql://USER@HOST/DB" in message and "sqlite:///PATH" in message
    assert "s3cret" not in message


def test_cli_fails_in_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", "mysql://cds:s3cret@db/cds")
    get_settings.cache_clear()
    try:
        assert main(["migrate"]) == 2
    finally:
        get_settings.cache_clear()
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(
        "sleep-cds: CDS_DATABASE_URL: unsupported (scheme 'mysql'); accepted forms:"
    )
    assert "s3cret" not in err and "Traceback" not in err


async def _roundtrip(url: str) -> int:
    db = Database(url)
    try:
        async with db.engine.connect() as conn:
            return int((await conn.execute(text("SELECT count(*) FROM hook_call"))).scalar_one())
    finally:
        await db.dispose()


async def test_plain_sqlite_url_migrates_and_serves(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'cds.db'}")
    upgrade_database(settings)
    assert await _roundtrip(settings.database_url) == 0
    assert await _roundtrip(f"sqlite:///{tmp_path / 'cds.db'}") == 0  # Database takes it too


async def test_plain_postgresql_url_serves(postgres_url: str) -> None:
    plain = postgres_url.replace("postgresql+psycopg://", "postgresql://", 1)
    assert plain != postgres_url, "CDS_TEST_POSTGRES_URL is expected in the +psycopg form"
    settings = Settings(database_url=plain)
    upgrade_database(settings)
    assert await _roundtrip(settings.database_url) == 0
