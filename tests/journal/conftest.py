"""Fixtures for the journal-app browser tests: the console's real stack (SEKMET with the demo
patients, this service under uvicorn, headless Chromium), plus the SMART App Launcher in front of
that SEKMET, built once per test session in a temporary copy (never in the repository)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.cli.errors import SandboxError
from service.cli.launcher import (
    Launcher,
    launcher_source,
    node_missing,
    prepare_launcher,
    running_launcher,
)
from tests.console.conftest import (  # noqa: F401  (fixtures re-used by name)
    api,
    browser,
    console_fhir,
    console_stack,
)


@pytest.fixture(scope="session")
def launcher_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``npm ci`` + ``npm run build`` of a copy of the launcher, once per session (~1 minute).

    ``CDS_TEST_LAUNCHER_BUILT`` names a copy already built this way (a CI cache, or a developer's
    repeated runs) and skips the build.
    """
    built = os.environ.get("CDS_TEST_LAUNCHER_BUILT")
    if built and (Path(built) / "build" / "index.html").is_file():
        return Path(built)
    why = node_missing()
    if why:
        pytest.skip(f"the SMART App Launcher needs Node.js and npm: {why}")
    source = launcher_source()
    if source is None:
        pytest.skip(
            "SMART App Launcher source not found: set CDS_SMART_LAUNCHER_SRC or put it at "
            "../shared/tools/smart-launcher-v2 (docs/journal-app.md)"
        )
    try:
        return prepare_launcher(source, tmp_path_factory.mktemp("launcher"))
    except SandboxError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="module")
def launcher(launcher_build: Path, console_fhir: str) -> Iterator[Launcher]:  # noqa: F811
    """The launcher serving SMART-protected FHIR in front of the module's SEKMET."""
    with running_launcher(launcher_build, console_fhir) as running:
        yield running
