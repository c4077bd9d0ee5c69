"""assert_safe_startup: never serve without authentication where another machine can reach us."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import httpx
import pytest

from service.config import Settings
from service.db.database import Database
from service.security import (
    LOCAL_MODE_WARNING,
    ConfigurationError,
    TokenVerifier,
    assert_safe_startup,
    create_token_verifier,
)
from tests.factories import ec_key, issuer, issuers_file


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    return issuers_file(tmp_path, issuer("https://ehr.example.com", ec_key()))


def test_local_mode_warns(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(host="127.0.0.1", public_base_url="http://localhost:8080")
    with caplog.at_level(logging.WARNING, logger="service.security"):
        assert assert_safe_startup(settings) is None
    assert LOCAL_MODE_WARNING in caplog.text
    assert LOCAL_MODE_WARNING == "authentication is OFF (local mode)"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "cds.example.org"])
def test_auth_off_on_a_public_interface_refuses_to_start(host: str) -> None:
    with pytest.raises(ConfigurationError, match=r"refusing to start.*CDS_TRUSTED_ISSUERS_FILE"):
        assert_safe_startup(Settings(host=host))


def test_auth_off_behind_a_public_proxy_refuses_to_start() -> None:
    settings = Settings(host="127.0.0.1", public_base_url="https://cds.example.org")
    with pytest.raises(ConfigurationError, match="CDS_PUBLIC_BASE_URL"):
        assert_safe_startup(settings)


def test_registry_is_loaded_and_validated(registry_file: Path) -> None:
    settings = Settings(
        host="0.0.0.0",
        public_base_url="https://cds.example.org",
        trusted_issuers_file=registry_file,
    )
    registry = assert_safe_startup(settings)
    assert registry is not None and len(registry) == 1


def test_bad_registry_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text("- iss: https://x.example\n")
    with pytest.raises(ConfigurationError, match=re.escape(str(path))):
        assert_safe_startup(Settings(host="0.0.0.0", trusted_issuers_file=path))


async def test_create_token_verifier(registry_file: Path, tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    async with httpx.AsyncClient() as client:
        local = Settings(host="127.0.0.1")
        assert create_token_verifier(local, database, client) is None
        on = Settings(host="0.0.0.0", trusted_issuers_file=registry_file)
        assert isinstance(create_token_verifier(on, database, client), TokenVerifier)
    await database.dispose()
