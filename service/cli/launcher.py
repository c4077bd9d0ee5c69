"""The SMART App Launcher (a simulated EHR) for ``make sandbox`` and the journal-app tests.

The launcher's unmodified source lives outside this repository (``../shared/tools/
smart-launcher-v2`` next to the checkout, or ``CDS_SMART_LAUNCHER_SRC``); it is never committed
here. ``prepare_launcher`` copies it to a work folder and runs ``npm run cert``, ``npm ci`` and
``npm run build`` there once (a marker file records success), ``running_launcher`` starts it on a
loopback port in front of a FHIR server, and ``launch_code`` builds the ``launch`` value an EHR
launch carries (the launcher's own codec: base64url of a JSON array).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from service.cli.errors import SandboxError
from service.cli.processes import free_port, port_in_use, spawn_logged, wait_http_ok
from service.config import REPO_ROOT

LAUNCHER_DIR_NAME = "smart-launcher-v2"
_MARKER = ".sleep-cds-built"


def launcher_source(repo_root: Path = REPO_ROOT) -> Path | None:
    """Where the launcher's source is: ``CDS_SMART_LAUNCHER_SRC``, else ``shared/tools`` beside
    the checkout (or beside its parent, for a git worktree folder)."""
    configured = os.environ.get("CDS_SMART_LAUNCHER_SRC")
    candidates = [Path(configured)] if configured else []
    candidates += [
        repo_root.parent / "shared" / "tools" / LAUNCHER_DIR_NAME,
        repo_root.parent.parent / "shared" / "tools" / LAUNCHER_DIR_NAME,
    ]
    return next((c for c in candidates if (c / "package.json").is_file()), None)


def node_missing() -> str | None:
    """Why the launcher cannot run here, or None when node, npm and openssl are all present."""
    missing = [tool for tool in ("node", "npm", "openssl") if shutil.which(tool) is None]
    return f"{', '.join(missing)} not found on PATH" if missing else None


def prepare_launcher(source: Path, work_dir: Path, *, timeout_s: float = 600) -> Path:
    """Copy, install and build the launcher in ``work_dir/smart-launcher-v2`` (once); return it.

    A file lock keeps parallel test workers from building twice; a half-done build (no marker)
    is thrown away and redone.
    """
    target = work_dir / LAUNCHER_DIR_NAME
    if (target / _MARKER).exists():
        return target
    work_dir.mkdir(parents=True, exist_ok=True)
    with (work_dir / ".launcher.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / _MARKER).exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("node_modules", "build"))
        env = {**os.environ, "CI": "true", "GENERATE_SOURCEMAP": "false"}
        for step in (
            ["npm", "run", "cert"],
            ["npm", "ci", "--no-audit", "--no-fund"],
            ["npm", "run", "build"],
        ):
            done = subprocess.run(
                step,
                cwd=target,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
                raise SandboxError(f"launcher: `{' '.join(step)}` failed: {' | '.join(tail)}")
        (target / _MARKER).touch()
    return target


@dataclass(frozen=True, slots=True)
class Launcher:
    url: str  # e.g. http://127.0.0.1:41234
    fhir_url: str  # the SMART-protected FHIR R4 base it serves
    pid: int
    log_path: Path

    def ehr_launch_url(self, app_launch_url: str, launch: str) -> str:
        """What an EHR opens: the app's launch URL with ``iss`` and ``launch``."""
        from urllib.parse import urlencode

        return f"{app_launch_url}?{urlencode({'iss': self.fhir_url, 'launch': launch})}"

    def standalone_iss(self, launch: str) -> str:
        """A FHIR base whose authorization server applies ``launch``'s options (standalone)."""
        return f"{self.url}/v/r4/sim/{launch}/fhir"


def launch_code(
    patient: str = "",
    *,
    provider: str = "",
    launch_type: int = 0,
    skip_login: bool = True,
    skip_auth: bool = True,
    auth_error: str = "",
    pkce: str = "always",
) -> str:
    """The launcher's launch options (src/isomorphic/codec.ts): base64url of a JSON array.

    ``launch_type`` 0 is a provider EHR launch, 3 a patient standalone launch. ``pkce="always"``
    makes the launcher refuse a request without an S256 challenge.
    """
    pkce_index = ["none", "auto", "always"].index(pkce)
    values = [
        launch_type,
        patient,
        provider,
        "NONE",  # no encounter (the journal does not ask for one)
        int(skip_login),
        int(skip_auth),
        0,  # no simulated EHR frame
        "",
        "",
        "",
        "",
        auth_error,
        "",
        "",
        0,  # public client
        pkce_index,
        "",
    ]
    raw = json.dumps(values, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@contextlib.contextmanager
def running_launcher(
    built: Path,
    fhir_url: str,
    *,
    port: int | None = None,
    token_lifetime_min: float | None = None,
    ready_timeout_s: float = 60,
) -> Iterator[Launcher]:
    """Run the built launcher on loopback in front of ``fhir_url``; stop it on exit.

    ``token_lifetime_min`` shortens its access tokens (default 60 minutes), for expiry tests.
    """
    chosen = port or free_port()
    lifetime = {"ACCESS_TOKEN_LIFETIME": str(token_lifetime_min)} if token_lifetime_min else {}
    env = {
        **lifetime,
        **os.environ,
        "NODE_ENV": "production",
        "HOST": "127.0.0.1",
        "PORT": str(chosen),
        "SECRET": secrets.token_urlsafe(24),
        "FHIR_SERVER_R4": fhir_url.rstrip("/"),
        "FHIR_SERVER_R3": "",
        "FHIR_SERVER_R2": "",
        "SOURCE_VERSION": "local",
    }
    ts_node = built / "node_modules" / ".bin" / "ts-node"
    cmd = [str(ts_node), "--skipProject", "--transpile-only", "backend/index.ts"]
    with tempfile.NamedTemporaryFile(prefix="smart-launcher-", suffix=".log", delete=False) as log:
        log_path = Path(log.name)
    proc = spawn_logged(cmd, cwd=built, env=env, log_path=log_path)
    base = f"http://127.0.0.1:{chosen}"
    try:
        wait_http_ok(f"{base}/v/r4/fhir/.well-known/smart-configuration", ready_timeout_s, proc)
        yield Launcher(base, f"{base}/v/r4/fhir", proc.pid, log_path)
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)


def start_for_sandbox(stack: contextlib.ExitStack, fhir_url: str, service_url: str) -> list[str]:
    """Start the launcher for ``make sandbox`` when it can run here; return the banner lines
    that say how to launch the journal app (or why the launcher is not running).

    ``CDS_SANDBOX_LAUNCHER=0`` turns it off; ``CDS_SANDBOX_LAUNCHER_PORT`` (8093) picks the port;
    the build is kept in ``var/smart-launcher`` (git-ignored) so it happens once.
    """
    if os.environ.get("CDS_SANDBOX_LAUNCHER", "1") == "0":
        return ["  SMART launcher: off (CDS_SANDBOX_LAUNCHER=0)"]
    source = launcher_source()
    why = node_missing() or (
        None if source else "source not found: set CDS_SMART_LAUNCHER_SRC (docs/journal-app.md)"
    )
    port = int(os.environ.get("CDS_SANDBOX_LAUNCHER_PORT", "8093"))
    if why is None and port_in_use(port):
        why = f"port 127.0.0.1:{port} is in use (CDS_SANDBOX_LAUNCHER_PORT)"
    if why is not None or source is None:
        return [f"  SMART launcher: not started ({why})"]
    print("sandbox: preparing the SMART App Launcher (first run: npm ci + build) ...", flush=True)
    try:
        built = prepare_launcher(source, REPO_ROOT / "var" / "smart-launcher")
        launcher = stack.enter_context(running_launcher(built, fhir_url, port=port))
    except (SandboxError, OSError, subprocess.SubprocessError) as exc:
        return [f"  SMART launcher: not started ({exc})"]
    app = f"{service_url}/journal/launch"
    return [
        f"  SMART launcher: {launcher.url}/   (a simulated EHR; log {launcher.log_path})",
        "  Sleep-journal app, EHR launch for demo-02 (open in a browser):",
        f"    {launcher.ehr_launch_url(app, launch_code('demo-02'))}",
        f"  Standalone launch: open {app} and enter",
        f"    {launcher.standalone_iss(launch_code('demo-02', launch_type=3))}",
    ]
