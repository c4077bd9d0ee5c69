"""The CI dependency audit (.ci/audit.py): which pip-audit reports fail the build.

pip-audit itself needs an advisory service (PyPI or OSV); the build network may reach neither,
so the verdict logic is tested on reports of the shape pip-audit writes, and the Dockerfile's
build-time setuptools floor is checked against the releases that fixed its known CVEs.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[1]


def audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", REPO / ".ci" / "audit.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_vulnerability_with_a_fix_fails_the_build() -> None:
    report = {
        "dependencies": [
            {"name": "setuptools", "version": "65.5.0",
             "vulns": [{"id": "PYSEC-2025-49", "fix_versions": ["78.1.1"]}]},
            {"name": "orjson", "version": "3.11.0", "vulns": []},
        ]
    }  # fmt: skip
    result, lines = audit().verdict(report)
    assert result == "fixable"
    assert lines == ["setuptools 65.5.0: PYSEC-2025-49 (fixed in 78.1.1)"]


def test_a_vulnerability_without_a_fix_is_listed_but_passes() -> None:
    report = {"dependencies": [{"name": "x", "version": "1", "vulns": [{"id": "GHSA-1"}]}]}
    assert audit().verdict(report) == ("clean", ["x 1: GHSA-1 (no fix released)"])


def test_every_dependency_skipped_means_the_service_was_unreachable() -> None:
    reason = "Dependency not found on PyPI and could not be audited: x (1)"
    report = {"dependencies": [{"name": "x", "version": "1", "skip_reason": reason}]}
    assert audit().verdict(report)[0] == "unreachable"


def test_the_image_builds_with_a_setuptools_past_its_known_cves() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    floor = re.search(r'"setuptools>=([0-9.]+)"', dockerfile)
    assert floor is not None, "the Dockerfile must upgrade setuptools"
    version = tuple(int(p) for p in floor.group(1).split("."))
    assert version >= (78, 1, 1)  # CVE-2025-47273 (path traversal), fixed in 78.1.1
    build = (REPO / "pyproject.toml").read_text()
    assert 'requires = ["setuptools>=78.1.1"' in build
