"""Local end-to-end sandbox: a real FHIR R4 server (SEKMET) with demo patients, plus this service.

``python -m service.cli.sandbox`` (``make sandbox``) starts SEKMET (``service.cli.sekmet``), loads
``service/demo/patients/*.json``, starts ``sleep-cds serve`` against a throw-away database and, when
its source is present, the SMART App Launcher; prints the URLs and an example command, and stops
them all on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from service.cli.errors import SandboxError
from service.cli.launcher import start_for_sandbox
from service.cli.load import load_bundles
from service.cli.processes import port_in_use, stop_process, wait_http_ok
from service.cli.sekmet import (
    DEFAULT_FHIR_PORT,
    SEKMET_VENV,
    SEKMET_VERSION,
    ensure_sekmet_venv,
    running_sekmet,
)
from service.config import REPO_ROOT
from service.demo import demo_patient_files, demo_shift_days


def _cds_command() -> list[str]:
    script = Path(sys.executable).parent / "sleep-cds"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def main() -> int:
    """Start SEKMET + demo data + the CDS service; block until Ctrl-C (or SIGTERM)."""
    fhir_port = int(os.environ.get("CDS_SANDBOX_FHIR_PORT", DEFAULT_FHIR_PORT))
    cds_port = int(os.environ.get("CDS_PORT", "8080"))
    for name, port in (("FHIR", fhir_port), ("CDS", cds_port)):
        if port_in_use(port):
            print(f"sandbox: {name} port 127.0.0.1:{port} is already in use", file=sys.stderr)
            return 1
    stop = {"now": False}

    def _on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    # Ctrl-C must work even when started from a shell that ignores SIGINT for background jobs.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _run(fhir_port, cds_port, lambda: stop["now"])
    except KeyboardInterrupt:
        pass
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    print("sandbox: stopped", flush=True)
    return 0


def _run(fhir_port: int, cds_port: int, stopped: Callable[[], bool]) -> None:
    """SEKMET with the demo patients, then the service, then the launcher; wait for ``stopped``."""
    print(f"sandbox: preparing {SEKMET_VENV} (sekmet-fhir=={SEKMET_VERSION}) ...", flush=True)
    ensure_sekmet_venv(REPO_ROOT)
    with (
        running_sekmet(REPO_ROOT, port=fhir_port) as fhir,
        tempfile.TemporaryDirectory(prefix="sleep-cds-sandbox-") as tmp,
    ):
        files = demo_patient_files()
        load_bundles(fhir.base_url, files, shift_days=demo_shift_days())
        print(f"sandbox: FHIR server {fhir.base_url} (log {fhir.log_path})", flush=True)
        print(f"sandbox: loaded {len(files)} demo patient bundle(s)", flush=True)
        cds_log = Path(tmp) / "cds.log"
        cds = _start_service(_service_env(cds_port, Path(tmp)), cds_log)
        try:
            service_url = f"http://127.0.0.1:{cds_port}"
            try:
                wait_http_ok(f"{service_url}/cds-services", 30.0, cds)
            except SandboxError as exc:
                raise SandboxError(f"CDS service: {exc}\n{_tail(cds_log)}") from exc
            with contextlib.ExitStack() as extras:
                journal = start_for_sandbox(extras, fhir.base_url, service_url)
                _print_banner(fhir.base_url, service_url, cds_log, journal)
                while not stopped():
                    if cds.poll() is not None:
                        raise SandboxError(
                            f"CDS service exited ({cds.returncode}):\n{_tail(cds_log)}"
                        )
                    time.sleep(0.5)
        finally:
            stop_process(cds)


def _service_env(cds_port: int, tmp: Path) -> dict[str, str]:
    """The environment ``sleep-cds`` runs with: loopback, card links to itself, a throw-away
    SQLite database (both unless set already)."""
    env = dict(os.environ)
    env["CDS_PORT"] = str(cds_port)
    env["CDS_HOST"] = "127.0.0.1"
    env.setdefault("CDS_PUBLIC_BASE_URL", f"http://127.0.0.1:{cds_port}")  # card links
    env.setdefault("CDS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp}/sandbox.db")
    return env


def _start_service(env: dict[str, str], cds_log: Path) -> subprocess.Popen[bytes]:
    """``sleep-cds migrate`` then ``sleep-cds serve`` in the background, both logging to
    ``cds_log``."""
    cmd = _cds_command()
    with cds_log.open("ab") as log_file:
        migrate = subprocess.run(
            [*cmd, "migrate"],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            check=False,
        )
    if migrate.returncode != 0:
        raise SandboxError(f"`sleep-cds migrate` failed:\n{_tail(cds_log)}")
    with cds_log.open("ab") as log_file:
        return subprocess.Popen(
            [*cmd, "serve"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _print_banner(
    fhir_url: str, service_url: str, cds_log: Path, journal: Sequence[str] = ()
) -> None:
    cli = Path(sys.executable).parent / "sleep-cds"
    print(
        "\n".join(
            [
                "",
                f"  FHIR server : {fhir_url}",
                f"  CDS service : {service_url}/cds-services   (log {cds_log})",
                "",
                "  Try:",
                f"    curl -s {service_url}/cds-services",
                f"    {cli} hook patient-view --patient demo-01 \\",
                f"        --fhir-server {fhir_url} --service {service_url}",
                f"    {cli} hook patient-view --patient demo-01 \\",
                f"        --fhir-server {fhir_url} --service {service_url} --no-prefetch --json",
                "",
                *journal,
                "",
                "  Demo patients: service/demo/README.md.  Ctrl-C stops every server.",
                "",
            ]
        ),
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
