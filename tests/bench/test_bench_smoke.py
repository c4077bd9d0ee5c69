"""The benchmark harness keeps working: one tiny run of ``bench/run.py`` with every case.

It asserts that the table has every case at every concurrency, with requests served and no
errors. It asserts nothing about time: CI machines are too noisy for that, and the numbers that
matter are in docs/performance.md, from a full run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service.cli.errors import SandboxError
from service.cli.sekmet import ensure_sekmet_venv

REPO = Path(__file__).resolve().parents[2]
CASES = {"typical", "order-sign", "heavy", "heavy-tenth", "no-prefetch"}

pytestmark = pytest.mark.integration


def test_bench_runs_every_case_without_errors(tmp_path: Path) -> None:
    try:
        ensure_sekmet_venv(REPO)  # the real FHIR server for the no-prefetch case
    except SandboxError as exc:
        pytest.skip(f"FHIR server unavailable: {exc}")
    report_path = tmp_path / "report.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--quick",
            "--concurrency",
            "1,2",
            "--engine-repeat",
            "1",
            "--results-dir",
            str(tmp_path),
            "--out",
            str(report_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(report_path.read_text())

    assert {case["key"] for case in report["cases"]} == CASES
    for case in report["cases"]:
        assert case["label"] in done.stdout  # the printed table has a row for it
        # Every benchmarked record is a sleep-movement patient: timing a call that answers no
        # card would measure the complaint gate, not the rules.
        assert case["check"]["cards"] >= 1, case["key"]
        assert all(len(summary) < 140 for summary in case["check"]["summaries"])
        expected = [1] if case["key"] == "heavy-tenth" else [1, 2]
        assert [point["concurrency"] for point in case["points"]] == expected
        for point in case["points"]:
            for target in ("service", "baseline"):
                run = point[target]
                assert run["requests"] > 0, (case["key"], target, run)
                assert run["errors"] == 0, (case["key"], target, run["first_bad"])
                assert not run["exhausted"], (case["key"], target)
    assert report["service_log_errors"] == 0, report["service_log_error_samples"]
    assert report["engine"]  # the in-process timings ran too
