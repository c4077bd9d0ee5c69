"""The launcher helpers without Node: the launch code's layout and the sandbox's fallbacks."""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

import pytest

from service.cli.launcher import launch_code, launcher_source, start_for_sandbox


def decoded(code: str) -> list[object]:
    value: list[object] = json.loads(base64.urlsafe_b64decode(code + "=" * (-len(code) % 4)))
    return value


def test_launch_code_follows_the_launchers_codec() -> None:
    # src/isomorphic/codec.ts: [type, patient, provider, encounter, skip_login, skip_auth,
    # sim_ehr, scope, redirect_uris, client_id, secret, auth_error, jwks_url, jwks,
    # client_type, pkce, fhir_server]
    values = decoded(launch_code("demo-02"))
    assert values[:7] == [0, "demo-02", "", "NONE", 1, 1, 0]
    assert values[11] == "" and values[14] == 0 and values[15] == 2  # public client, PKCE always
    assert len(values) == 17
    consent = decoded(launch_code("p", launch_type=1, skip_auth=False, auth_error="x"))
    assert consent[0] == 1 and consent[5] == 0 and consent[11] == "x"
    assert "=" not in launch_code("p") and "/" not in launch_code("p" * 50)


def test_sandbox_runs_without_the_launcher_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        monkeypatch.setenv("CDS_SANDBOX_LAUNCHER", "0")
        assert start_for_sandbox(stack, "http://x/fhir", "http://y") == [
            "  SMART launcher: off (CDS_SANDBOX_LAUNCHER=0)"
        ]
        monkeypatch.delenv("CDS_SANDBOX_LAUNCHER")
        monkeypatch.setenv("CDS_SMART_LAUNCHER_SRC", str(tmp_path / "missing"))
        monkeypatch.setattr("service.cli.launcher.launcher_source", lambda: None)
        (line,) = start_for_sandbox(stack, "http://x/fhir", "http://y")
        assert line.startswith("  SMART launcher: not started (")


def test_source_setting_is_used_when_it_holds_the_launcher(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "package.json").write_text("{}")
    monkeypatch.setenv("CDS_SMART_LAUNCHER_SRC", str(tmp_path))
    assert launcher_source() == tmp_path
