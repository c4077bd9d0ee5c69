"""The real FHIR R4 server (SEKMET) the sandbox, the integration tests and the bench run.

SEKMET runs from its own venv ``.venv-fhir`` (it pins library versions that clash with ours), on
loopback only, simulator off (it would otherwise dispense active MedicationRequests), strict
validation, fresh temporary data directory, so the sandbox and the tests run the same server the
same way (``tests/fixtures/fhir_server.py``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from service.cli.errors import SandboxError
from service.cli.processes import free_port, spawn_logged, stop_process, wait_http_ok
from service.config import REPO_ROOT

SEKMET_VERSION = "0.1.1"
SEKMET_VENV = ".venv-fhir"
DEFAULT_FHIR_PORT = 8092

# SEKMET 0.1.1 defines no search parameters for QuestionnaireResponse: it ignores `patient=` with a
# warning and returns every patient's responses. US Core 6 requires `patient` (and the service
# searches by it), so the launcher adds the R4 parameters to SEKMET's table before serving. The
# table is a plain dict read at index and search time; nothing else is changed.
_SEKMET_BOOT = """
import sys
from sekmet.fhir import search_params as sp
P = sp.SearchParam
sp.PARAMS.setdefault("QuestionnaireResponse", {}).update({
    "patient": P("patient", "reference", ("subject",), "Patient"),
    "subject": P("subject", "reference", ("subject",)),
    "encounter": P("encounter", "reference", ("encounter",)),
    "author": P("author", "reference", ("author",)),
    "status": P("status", "token", ("status",)),
    "authored": P("authored", "date", ("authored",)),
    "questionnaire": P("questionnaire", "uri", ("questionnaire",)),
    "identifier": P("identifier", "token", ("identifier",)),
})
from sekmet.cli import app
sys.argv[0] = "sekmet"
app()
"""


def ensure_sekmet_venv(repo_root: Path = REPO_ROOT, python: str | None = None) -> Path:
    """Create ``.venv-fhir`` with the pinned SEKMET if missing; return that venv's python.

    A marker file is written only after a successful install, so an interrupted install is
    redone; a file lock keeps parallel test workers from installing twice.
    """
    venv = repo_root / SEKMET_VENV
    exe = venv / "bin" / "python"
    marker = venv / f".sekmet-{SEKMET_VERSION}"
    if marker.exists() and exe.exists():
        return exe
    digest = hashlib.sha256(str(venv.resolve()).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"sekmet-venv-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (marker.exists() and exe.exists()):
            python = python or shutil.which("python3.11") or sys.executable
            steps = [
                [python, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "--quiet", f"sekmet-fhir=={SEKMET_VERSION}"],
            ]
            for cmd in steps:
                done = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
                    raise SandboxError(f"`{' '.join(cmd[:3])} ...` failed: {tail[0]}")
            marker.touch()
    return exe


@dataclass(frozen=True, slots=True)
class SekmetServer:
    base_url: str
    port: int
    pid: int
    data_dir: Path
    log_path: Path


def _settings_yaml(port: int, data_dir: Path, bearer_tokens: Sequence[str]) -> str:
    auth = "  types: [none]\n"
    if bearer_tokens:
        tokens = ", ".join(orjson.dumps(t).decode() for t in bearer_tokens)
        auth = f"  types: [bearer]\n  tokens: [{tokens}]\n"
    return (
        f"base_url: http://127.0.0.1:{port}/fhir\n"
        "host: 127.0.0.1\n"
        f"port: {port}\n"
        f"data_dir: {orjson.dumps(str(data_dir)).decode()}\n"
        "simulator:\n  enabled: false\n"
        "validation:\n  inbound: strict\n"
        "log_inbound: false\n"
        f"server_auth:\n{auth}"
    )


@contextlib.contextmanager
def running_sekmet(
    repo_root: Path = REPO_ROOT,
    *,
    port: int | None = None,
    bearer_tokens: Sequence[str] = (),
    ready_timeout_s: float = 30.0,
) -> Iterator[SekmetServer]:
    """Run SEKMET in a subprocess on loopback with a fresh data dir; stop it on exit.

    ``port=None`` picks a free port (retrying if it is grabbed meanwhile). With ``bearer_tokens``
    SEKMET refuses requests without one of them (``/metadata`` stays open), which lets a test
    prove the token arrived.
    """
    exe = ensure_sekmet_venv(repo_root)
    with tempfile.TemporaryDirectory(prefix="sekmet-") as tmp:
        workdir = Path(tmp)
        attempts = 1 if port is not None else 3
        for attempt in range(attempts):
            chosen = port if port is not None else free_port()
            data_dir = workdir / f"data-{attempt}"
            data_dir.mkdir()
            config = workdir / "settings.yaml"
            config.write_text(_settings_yaml(chosen, data_dir, bearer_tokens))
            log_path = workdir / "sekmet.log"
            env = {k: v for k, v in os.environ.items() if not k.startswith("SEKMET_")}
            host_port = ["--host", "127.0.0.1", "--port", str(chosen)]
            proc = spawn_logged(
                [str(exe), "-c", _SEKMET_BOOT, "serve", "-c", str(config), *host_port],
                cwd=workdir,
                env=env,
                log_path=log_path,
            )
            base_url = f"http://127.0.0.1:{chosen}/fhir"
            try:
                wait_http_ok(f"{base_url}/metadata", ready_timeout_s, proc)
            except SandboxError:
                stop_process(proc)
                if attempt + 1 == attempts:
                    raise
                continue
            try:
                yield SekmetServer(base_url, chosen, proc.pid, data_dir, log_path)
            finally:
                stop_process(proc)
            return
