"""The layering contracts in pyproject.toml are enforced: ``lint-imports`` (run by ``make lint``)
passes on the tree and fails, naming the contract, when the engine imports a web framework or a
lower layer imports a higher one. Each break runs on a copy of ``service/``, never the real tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(
    not LINT_IMPORTS.exists(), reason="import-linter is not installed (pip install -e '.[test]')"
)


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _copy(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(
        ROOT / "service", tmp_path / "service", ignore=shutil.ignore_patterns("__pycache__")
    )
    return tmp_path


def test_the_tree_keeps_every_contract() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_engine_importing_fastapi_fails_naming_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "service" / "engine" / "web.py").write_text("import fastapi\n")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    contract = "engine and knowledge import no web framework, database, HTTP client or metrics"
    assert f"{contract} BROKEN" in result.stdout
    assert "service.engine.web -> fastapi" in result.stdout


def test_knowledge_importing_the_engine_fails_the_layers_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "service" / "knowledge" / "upward.py").write_text(
        "from service.engine import pipeline\n"
    )
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "api -> engine -> knowledge (a lower layer never imports a higher one) BROKEN" in (
        result.stdout
    )
    assert "service.knowledge.upward -> service.engine.pipeline" in result.stdout


def test_the_database_importing_the_cli_fails_naming_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "service" / "db" / "upward.py").write_text("from service.cli import main\n")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "nothing imports the CLI package (service.cli) BROKEN" in result.stdout
    assert "service.db.upward -> service.cli.main" in result.stdout


def test_the_api_importing_the_sandbox_fails_naming_the_contract(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    (root / "service" / "api" / "dev.py").write_text("from service.cli import sekmet\n")
    result = _lint_imports(root)
    assert result.returncode == 1, result.stdout + result.stderr
    contract = "the serving code never imports the sandbox tooling or demo patients"
    assert f"{contract} BROKEN" in result.stdout
    assert "service.api.dev -> service.cli.sekmet" in result.stdout
