"""Fixtures for FHIR client tests: a session-wide SEKMET and the misbehaving server."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

# `pytest` (unlike `python -m pytest`) does not put the repo root on sys.path; tests/ has no
# __init__.py, so make `tests.fixtures` importable either way.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.fixtures.bad_fhir import BadFhirServer  # noqa: E402
from tests.fixtures.fhir_server import TEST_BEARER as BEARER  # noqa: E402
from tests.fixtures.fhir_server import fhir_server as _fhir_server  # noqa: E402


@pytest.fixture(scope="session")
def fhir_server() -> Iterator[str]:
    """Base URL of a SEKMET FHIR R4 server (open, empty) shared by the session."""
    with _fhir_server() as base_url:
        yield base_url


@pytest.fixture(scope="session")
def fhir_server_bearer() -> Iterator[str]:
    """A second SEKMET that refuses any request without ``Bearer test-token-not-a-secret``."""
    with _fhir_server(bearer_tokens=[BEARER]) as base_url:
        yield base_url


@pytest.fixture(scope="session")
def bad_fhir() -> Iterator[BadFhirServer]:
    with BadFhirServer(slow_s=10.0, drip_s=0.1, huge_bytes=4 * 1024 * 1024) as server:
        yield server
