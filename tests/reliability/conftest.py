"""Fixtures for the reliability tests: one private PostgreSQL cluster for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability.helpers import PrivatePostgres, postgres_bindir, private_postgres


@pytest.fixture(scope="session")
def cluster() -> Iterator[PrivatePostgres]:
    """Started once; a test that stops it starts it again before it ends."""
    if postgres_bindir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) are not installed")
    with private_postgres() as pg:
        yield pg
