"""The Dockerfile stays honest: the image's install and start commands are the ones tested here.

No Docker engine runs on the build machines, so this test runs the image's own steps in a
subprocess: migrate, serve with the image's CMD, and probe health with the HEALTHCHECK command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()
BIN = Path(sys.executable).parent


def instruction(name: str) -> list[str]:
    joined = DOCKERFILE.replace("\\\n", " ")
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(name + " ")]


def test_image_basics() -> None:
    assert instruction("FROM") == ["python:3.11-slim"]
    users = instruction("USER")
    assert users and users[-1] not in ("root", "0")
    assert instruction("EXPOSE") == ["8080"]
    env = " ".join(instruction("ENV"))
    assert "CDS_HOST=0.0.0.0" in env and "CDS_PORT=8080" in env
    copied = " ".join(instruction("COPY"))
    for folder in ("service/", "migrations/", "fhir_profiles/", "pyproject.toml"):
        assert folder in copied
    assert "/healthz" in instruction("HEALTHCHECK")[0]


def test_install_step_is_the_makefile_install() -> None:
    run = " ".join(instruction("RUN"))
    makefile = (REPO / "Makefile").read_text()
    assert "pip install -e ." in run
    assert "pip install --quiet -e ." in makefile


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_migrate_then_cmd_serves_and_healthcheck_passes(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "CDS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/cds.db",
        "CDS_HOST": "127.0.0.1",
        "CDS_PORT": str(port),
        "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
    }
    env.pop("CDS_TRUSTED_ISSUERS_FILE", None)
    subprocess.run([BIN / "sleep-cds", "migrate"], env=env, check=True, cwd=tmp_path, timeout=60)
    cmd = json_array(instruction("CMD")[0])
    process = subprocess.Popen([BIN / cmd[0], *cmd[1:]], env=env, cwd=tmp_path)
    try:
        probe = json_array(instruction("HEALTHCHECK")[0].split("CMD", 1)[1].strip())
        probe_code = probe[-1].replace("8080", str(port))
        deadline = time.monotonic() + 20
        while True:
            result = subprocess.run([sys.executable, "-c", probe_code], capture_output=True)
            if result.returncode == 0:
                break
            assert time.monotonic() < deadline, "service did not become healthy"
            time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_image_refuses_to_serve_without_an_issuer_registry(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "CDS_HOST": "0.0.0.0",
        "CDS_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db",
    }
    env.pop("CDS_TRUSTED_ISSUERS_FILE", None)
    result = subprocess.run(
        [BIN / "sleep-cds", "serve"], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0
    assert "CDS_TRUSTED_ISSUERS_FILE" in result.stderr + result.stdout


def json_array(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list)
    return [str(v) for v in value]
