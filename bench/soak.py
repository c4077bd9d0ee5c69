"""Soak test: the service under a steady mixed load on loopback, watching errors, latency and RSS.

    make soak                                   # 60 s at concurrency 32 (SOAK_ARGS to change)
    python bench/soak.py --duration 60 --concurrency 32 --json soak.json

It starts the service itself (``python -m service.cli serve``, what ``sleep-cds serve`` runs) on a
free loopback port with a fresh SQLite database (``--database-url`` for another one, e.g. a
PostgreSQL), then drives it from ``--concurrency`` connections for ``--duration`` seconds:
about 70 % patient-view calls (500 synthetic patients, ferritin values that give different cards),
10 % order-sign calls with a draft order, 20 % feedback on cards received earlier (accepted and
overridden, so suppression reads real history). The first ``--warmup`` seconds are not measured.

Pass criteria (exit status 1 otherwise): zero errors (every answer a 2xx), and resident memory at
the end within ``--max-rss-growth`` (10 %) of what it was right after the warm-up. It prints p50,
p90, p99 and max latency per kind of request and overall, and the RSS curve. Only loopback is
ever contacted; the run stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
PV = "/cds-services/sleep-movement-patient-view"
OSIGN = "/cds-services/sleep-movement-order-sign"
PATIENTS = 500
LOCAL_CS = "https://sleep-cds.example.org/fhir/CodeSystem/sleep-cds"
ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}


# --- request bodies ----------------------------------------------------------------------------


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r} for r in resources],
    }


def _prefetch(patient: int) -> dict[str, Any]:
    pid = f"soak-{patient}"
    subject = {"reference": f"Patient/{pid}"}
    ferritin = 20 + (patient * 7) % 180  # 20..199 ng/mL: some low, some normal
    return {
        "patient": {
            "resourceType": "Patient",
            "id": pid,
            "birthDate": f"{1940 + patient % 60}-03-01",
        },
        "conditions": _bundle(
            {
                "resourceType": "Condition",
                "id": f"rls-{patient}",
                "clinicalStatus": ACTIVE,
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "32914008"}]},
                "subject": subject,
                "onsetDateTime": "2025-06-01",
            }
        ),
        "observations": _bundle(
            {
                "resourceType": "Observation",
                "id": f"fer-{patient}",
                "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                "subject": subject,
                "effectiveDateTime": "2026-10-01",
                "valueQuantity": {
                    "value": ferritin,
                    "system": "http://unitsofmeasure.org",
                    "code": "ng/mL",
                },
            }
        ),
        "symptoms": None,
        "medicationRequests": None,
        "medicationStatements": None,
        "journal": None,
    }


def hook_body(hook: str, patient: int) -> dict[str, Any]:
    pid = f"soak-{patient}"
    context: dict[str, Any] = {"patientId": pid, "userId": "Practitioner/soak"}
    if hook == "order-sign":
        context["draftOrders"] = _bundle(
            {
                "resourceType": "ServiceRequest",
                "id": f"draft-{patient}",
                "status": "draft",
                "intent": "order",
                "code": {"coding": [{"system": "http://loinc.org", "code": "28633-6"}]},
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": _prefetch(patient),
    }


def feedback_body(card: dict[str, Any], accept: bool) -> dict[str, Any]:
    item: dict[str, Any] = {
        "card": card["uuid"],
        "outcomeTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    suggestions = card.get("suggestions") or []
    if accept and suggestions and suggestions[0].get("uuid"):
        item["outcome"] = "accepted"
        item["acceptedSuggestions"] = [{"id": suggestions[0]["uuid"]}]
    else:
        item["outcome"] = "overridden"
        item["overrideReason"] = {"reason": {"system": LOCAL_CS, "code": "not-clinically-relevant"}}
    return {"feedback": [item]}


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS not found")


@contextlib.contextmanager
def running_service(database_url: str | None, workdir: Path):  # type: ignore[no-untyped-def]
    """Migrate, start the service on a free loopback port, yield (base URL, pid), stop it."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "CDS_DATABASE_URL": database_url or f"sqlite+aiosqlite:///{workdir / 'soak.db'}",
        "CDS_HOST": "127.0.0.1",
        "CDS_PORT": str(port),
        "CDS_PUBLIC_BASE_URL": base_url,
        "CDS_LOG_LEVEL": "INFO",
        # One local caller sends every feedback item here (a fifth of the load, about 70 a second
        # at full speed): the per-issuer limit (600 a minute) is for EHRs, not for this soak.
        "CDS_FEEDBACK_RATE_PER_MINUTE": "1000000",
    }
    env.pop("CDS_TRUSTED_ISSUERS_FILE", None)
    cli = [sys.executable, "-m", "service.cli"]
    subprocess.run([*cli, "migrate"], cwd=REPO_ROOT, env=env, check=True, capture_output=True)
    log = open(workdir / "service.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([*cli, "serve"], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start; see {workdir / 'service.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        yield base_url, proc.pid
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


# --- the load ----------------------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    rss: list[tuple[float, int]] = field(default_factory=list)

    def record(self, kind: str, seconds: float, measured: bool) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if measured:
            self.latencies.setdefault(kind, []).append(seconds)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def drive(
    base_url: str,
    pid: int,
    *,
    duration_s: float,
    warmup_s: float,
    concurrency: int,
    seed: int,
) -> Stats:
    stats = Stats()
    cards: list[dict[str, Any]] = []
    started = time.monotonic()
    measure_from = started + warmup_s
    stop_at = started + duration_s

    async def worker(client: httpx.AsyncClient, number: int) -> None:
        rnd = random.Random(seed * 1000 + number)
        while (now := time.monotonic()) < stop_at:
            roll = rnd.random()
            if roll < 0.2 and cards:
                kind, path = "feedback", f"{PV}/feedback"
                body = feedback_body(cards[rnd.randrange(len(cards))], accept=rnd.random() < 0.3)
            elif roll < 0.3:
                kind, path = "order-sign", OSIGN
                body = hook_body("order-sign", rnd.randrange(PATIENTS))
            else:
                kind, path = "patient-view", PV
                body = hook_body("patient-view", rnd.randrange(PATIENTS))
            sent = time.perf_counter()
            try:
                response = await client.post(path, json=body)
            except httpx.HTTPError as exc:
                stats.error(f"{kind}: {type(exc).__name__}")
                continue
            seconds = time.perf_counter() - sent
            if not 200 <= response.status_code < 300:
                stats.error(f"{kind}: HTTP {response.status_code}")
                continue
            stats.record(kind, seconds, now >= measure_from)
            if kind != "feedback":
                cards.extend(response.json()["cards"])
                del cards[:-2000]  # keep the most recent cards only

    async def sample_rss() -> None:
        while time.monotonic() < stop_at:
            with contextlib.suppress(OSError, RuntimeError):
                stats.rss.append((time.monotonic() - started, rss_bytes(pid)))
            await asyncio.sleep(1.0)
        stats.rss.append((time.monotonic() - started, rss_bytes(pid)))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=30.0) as client:
        await asyncio.gather(sample_rss(), *(worker(client, i) for i in range(concurrency)))
    return stats


def summarize(
    stats: Stats, *, duration_s: float, warmup_s: float, concurrency: int
) -> dict[str, Any]:
    measured = duration_s - warmup_s
    every = [s for values in stats.latencies.values() for s in values]

    def row(values: list[float]) -> dict[str, float]:
        return {
            "requests": len(values),
            "rps": round(len(values) / measured, 1),
            "p50_ms": round(percentile(values, 50) * 1000, 1),
            "p90_ms": round(percentile(values, 90) * 1000, 1),
            "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values, default=0.0) * 1000, 1),
        }

    after_warmup = [rss for t, rss in stats.rss if t >= warmup_s]
    baseline = after_warmup[0] if after_warmup else 0
    final = stats.rss[-1][1] if stats.rss else 0
    return {
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "concurrency": concurrency,
        "errors": sum(stats.errors.values()),
        "error_kinds": stats.errors,
        "overall": row(every),
        "by_kind": {kind: row(values) for kind, values in sorted(stats.latencies.items())},
        "rss_mb_after_warmup": round(baseline / 2**20, 1),
        "rss_mb_end": round(final / 2**20, 1),
        "rss_growth": round((final - baseline) / baseline, 4) if baseline else None,
        "rss_mb_curve": [round(rss / 2**20, 1) for _, rss in stats.rss],
    }


def run_soak(
    *,
    duration_s: float = 60.0,
    concurrency: int = 32,
    warmup_s: float | None = None,
    database_url: str | None = None,
    seed: int = 7,
) -> dict[str, Any]:
    warmup = warmup_s if warmup_s is not None else min(15.0, max(3.0, duration_s / 5))
    with (
        tempfile.TemporaryDirectory(prefix="cds-soak-") as tmp,
        running_service(database_url, Path(tmp)) as (base_url, pid),
    ):
        stats = asyncio.run(
            drive(
                base_url,
                pid,
                duration_s=duration_s,
                warmup_s=warmup,
                concurrency=concurrency,
                seed=seed,
            )
        )
    return summarize(stats, duration_s=duration_s, warmup_s=warmup, concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load (60)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (32)")
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured seconds (duration/5, 3..15)"
    )
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--max-rss-growth", type=float, default=0.10, help="fail above (0.10)")
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = parser.parse_args(argv)
    summary = run_soak(
        duration_s=args.duration,
        concurrency=args.concurrency,
        warmup_s=args.warmup,
        database_url=args.database_url,
    )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    overall = summary["overall"]
    print(
        f"soak {summary['duration_s']:.0f} s at concurrency {summary['concurrency']} "
        f"(first {summary['warmup_s']:.0f} s not measured)"
    )
    for kind, row in {**summary["by_kind"], "overall": overall}.items():
        print(
            f"  {kind:13s} {row['requests']:7d} req {row['rps']:8.1f} rps"
            f"  p50 {row['p50_ms']:7.1f} ms  p90 {row['p90_ms']:7.1f} ms"
            f"  p99 {row['p99_ms']:7.1f} ms  max {row['max_ms']:7.1f} ms"
        )
    print(f"  errors        {summary['errors']} {summary['error_kinds'] or ''}")
    growth = summary["rss_growth"]
    print(
        f"  RSS           {summary['rss_mb_after_warmup']} MB after warm-up -> "
        f"{summary['rss_mb_end']} MB at the end ({(growth or 0) * 100:+.1f} %)"
    )
    failed = summary["errors"] > 0 or growth is None or growth >= args.max_rss_growth
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
