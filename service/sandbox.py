"""Local end-to-end sandbox: a real FHIR R4 server (SEKMET) with demo patients, plus this service.

``python -m service.sandbox`` (``make sandbox``) starts SEKMET from its own venv ``.venv-fhir``
(it pins library versions that clash with ours), loads ``service/demo/patients/*.json``, starts
``sleep-cds serve`` against a throw-away database, prints the URLs and an example command, and stops
both on Ctrl-C. The SEKMET launcher and the bundle loader here are also what the integration tests
use (``tests/fixtures/fhir_server.py``), so the sandbox and the tests run the same server the same
way: loopback only, simulator off (it would otherwise dispense active MedicationRequests), strict
validation, fresh temporary data directory.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import orjson

from service.config import REPO_ROOT

SEKMET_VERSION = "0.1.1"
SEKMET_VENV = ".venv-fhir"
DEFAULT_FHIR_PORT = 8092
# The demo bundles' clinical dates are written relative to this day; the sandbox shifts them so
# that "recent" stays recent (see service/demo/README.md).
DEMO_ANCHOR = dt.date(2026, 11, 25)
_SHIFTED_KEYS = frozenset(
    {
        "effectiveDateTime",
        "issued",
        "authoredOn",
        "recordedDate",
        "onsetDateTime",
        "abatementDateTime",
        "authored",
        "dateAsserted",
        "start",
        "end",
        "valueDate",  # the sleep journal's night-date answer: the night the engine reads
    }
)
_DATE_RE = re.compile(r"^(\d{4}-\d{2}-\d{2})(.*)$")

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


class SandboxError(Exception):
    """A sandbox step failed; the message is one line saying which step and why."""


# --- SEKMET venv and process -------------------------------------------------------------------


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


def free_port() -> int:
    """A loopback port free right now (the caller retries if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


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


def wait_http_ok(url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail early if ``proc`` exits."""
    give_up = time.monotonic() + timeout_s
    with httpx.Client(trust_env=False, timeout=2.0) as http:
        while time.monotonic() < give_up:
            if proc is not None and proc.poll() is not None:
                raise SandboxError(
                    f"process exited with code {proc.returncode} before {url} was up"
                )
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url).status_code == 200:
                    return
            time.sleep(0.05)
    raise SandboxError(f"{url} did not answer 200 within {timeout_s:.0f} s")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``; only ever the process we started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=grace_s)


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
            with log_path.open("ab") as log_file:
                proc = subprocess.Popen(
                    [str(exe), "-c", _SEKMET_BOOT, "serve", "-c", str(config), *host_port],
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
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


# --- loading bundles ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Loaded:
    path: Path
    method: str
    status: int
    entries: int


def _outcome_text(response: httpx.Response) -> str:
    with contextlib.suppress(orjson.JSONDecodeError, AttributeError, TypeError, IndexError):
        body = orjson.loads(response.content)
        if body.get("resourceType") == "OperationOutcome":
            return str(body["issue"][0].get("diagnostics", ""))[:200]
    return ""


def shift_dates(node: Any, days: int) -> Any:
    """Move clinical event dates (``_SHIFTED_KEYS``) by ``days``; ``birthDate`` never moves."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in _SHIFTED_KEYS and isinstance(value, str) and (m := _DATE_RE.match(value)):
                day = dt.date.fromisoformat(m.group(1)) + dt.timedelta(days=days)
                out[key] = day.isoformat() + m.group(2)
            else:
                out[key] = shift_dates(value, days)
        return out
    if isinstance(node, list):
        return [shift_dates(item, days) for item in node]
    return node


def load_bundles(
    base_url: str,
    paths: Sequence[Path | str],
    *,
    token: str | None = None,
    shift_days: int = 0,
    timeout_s: float = 60.0,
) -> list[Loaded]:
    """Load files into any FHIR server; raise ``SandboxError`` naming the file, URL and status.

    A transaction/batch Bundle is POSTed to the base; any other resource with an id is PUT to
    ``Type/id`` (idempotent), without one POSTed to ``Type``. ``shift_days`` moves clinical dates
    (used for the demo patients, never for other files).
    """
    base = base_url.rstrip("/")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    loaded: list[Loaded] = []
    with httpx.Client(trust_env=False, timeout=timeout_s, follow_redirects=False) as http:
        for raw_path in paths:
            path = Path(raw_path)
            try:
                doc = orjson.loads(path.read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise SandboxError(f"{path}: cannot read JSON ({exc.__class__.__name__})") from exc
            if not isinstance(doc, dict) or not isinstance(doc.get("resourceType"), str):
                raise SandboxError(f"{path}: not a FHIR resource (no resourceType)")
            if shift_days:
                doc = shift_dates(doc, shift_days)
            rtype = doc["resourceType"]
            if rtype == "Bundle" and doc.get("type") in ("transaction", "batch"):
                method, url = "POST", base
            elif isinstance(doc.get("id"), str):
                method, url = "PUT", f"{base}/{rtype}/{doc['id']}"
            else:
                method, url = "POST", f"{base}/{rtype}"
            try:
                response = http.request(method, url, content=orjson.dumps(doc), headers=headers)
            except httpx.HTTPError as exc:
                raise SandboxError(
                    f"{path}: {method} {url} failed: {exc.__class__.__name__}"
                ) from exc
            if response.status_code >= 300:
                detail = _outcome_text(response)
                raise SandboxError(
                    f"{path}: {method} {url} -> HTTP {response.status_code}"
                    + (f": {detail}" if detail else "")
                )
            entries = len(doc.get("entry", [])) if rtype == "Bundle" else 1
            loaded.append(Loaded(path, method, response.status_code, entries))
    return loaded


def demo_patient_files() -> list[Path]:
    """The demo bundles shipped as package data, in name order."""
    folder = resources.files("service.demo") / "patients"
    return sorted(Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json"))


def demo_shift_days(today: dt.date | None = None) -> int:
    return ((today or dt.date.today()) - DEMO_ANCHOR).days


# --- the sandbox command -----------------------------------------------------------------------


def _cds_command() -> list[str]:
    script = Path(sys.executable).parent / "sleep-cds"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def _tail(path: Path, lines: int = 15) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def main() -> int:
    """Start SEKMET + demo data + the CDS service; block until Ctrl-C."""
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
            env = dict(os.environ)
            env["CDS_PORT"] = str(cds_port)
            env["CDS_HOST"] = "127.0.0.1"
            env.setdefault("CDS_PUBLIC_BASE_URL", f"http://127.0.0.1:{cds_port}")  # card links
            env.setdefault("CDS_DATABASE_URL", f"sqlite+aiosqlite:///{tmp}/sandbox.db")
            cds_log = Path(tmp) / "cds.log"
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
                cds = subprocess.Popen(
                    [*cmd, "serve"],
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                service_url = f"http://127.0.0.1:{cds_port}"
                try:
                    wait_http_ok(f"{service_url}/cds-services", 30.0, cds)
                except SandboxError as exc:
                    raise SandboxError(f"CDS service: {exc}\n{_tail(cds_log)}") from exc
                with contextlib.ExitStack() as extras:
                    from service.launcher import start_for_sandbox  # it imports this module

                    journal = start_for_sandbox(extras, fhir.base_url, service_url)
                    _print_banner(fhir.base_url, service_url, cds_log, journal)
                    while not stop["now"]:
                        if cds.poll() is not None:
                            raise SandboxError(
                                f"CDS service exited ({cds.returncode}):\n{_tail(cds_log)}"
                            )
                        time.sleep(0.5)
            finally:
                stop_process(cds)
    except KeyboardInterrupt:
        pass
    except SandboxError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    print("sandbox: stopped", flush=True)
    return 0


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
