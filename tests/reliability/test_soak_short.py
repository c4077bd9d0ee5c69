"""The soak (bench/soak.py, ``make soak``) for 10 s in CI: mixed hook calls and feedback at
concurrency 32 on loopback against the service as a real process. Zero errors, p99 reported,
resident memory within 10 % of what it was after the warm-up."""

from __future__ import annotations

import pytest

from bench.soak import run_soak

pytestmark = pytest.mark.integration


def test_short_soak_has_no_errors_and_flat_memory() -> None:
    summary = run_soak(duration_s=10.0, concurrency=32, warmup_s=3.0)
    overall = summary["overall"]
    print(
        f"soak 10 s: {overall['requests']} requests, {overall['rps']} rps, "
        f"p50 {overall['p50_ms']} ms, p99 {overall['p99_ms']} ms, "
        f"RSS {summary['rss_mb_after_warmup']} -> {summary['rss_mb_end']} MB"
    )
    assert summary["errors"] == 0, summary["error_kinds"]
    assert set(summary["by_kind"]) == {"patient-view", "order-sign", "feedback"}
    assert overall["requests"] > 100
    assert summary["rss_growth"] < 0.10, summary["rss_mb_curve"]
