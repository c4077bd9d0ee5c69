"""Benchmark the deployed service against a same-run baseline: ``make bench``.

What one run does, on loopback only:

1. Builds the request bodies (``bench/data.py``): a typical ~60-resource prefetch for every demo
   patient (plus one synthetic patient), a heavy record (2,000 Observations, 200 medications,
   50 conditions) and a tenth of it, order-sign with draft orders, and patient-view with no
   prefetch at all.
2. Starts the real FHIR server (SEKMET, ``service/cli/sekmet.py``) and loads those records into it,
   for the no-prefetch case.
3. Starts the service as deployed: ``sleep-cds serve`` (uvicorn, uvloop, httptools, one worker,
   INFO logs), JWT on (a fresh ES384 key and an inline-JWKS registry), a fresh migrated database.
   Starts the baseline (``bench/baseline_app.py``) on the same server stack.
4. For every case and concurrency: the baseline with the same bodies, then the service, each after
   a warm-up. Every service request carries its own pre-signed token (unique ``jti``).
5. Soak: 60 s of mixed typical and heavy calls while the worker's RSS is sampled.
6. In-process engine timings (no HTTP, JWT or database) at 0.1x, 1x and 10x the heavy record.

It prints Markdown tables and writes them, with the raw numbers, to ``bench/results/``.
Nothing here asserts a time: targets are reported as met or not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402

from bench import data  # noqa: E402
from bench import tokens as tok  # noqa: E402

PATIENT_VIEW = "/cds-services/sleep-movement-patient-view"
ORDER_SIGN = "/cds-services/sleep-movement-order-sign"
LUA = REPO / "bench" / "cycle.lua"
LOADGEN = REPO / "bench" / "loadgen.py"
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --- processes we own ----------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The server process and its descendants (uvicorn's workers with ``--workers N``)."""
        children: dict[int, list[int]] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(stat.parent.name))
        found, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def workers(self) -> list[int]:
        """The processes that serve requests: the children with ``--workers N``, else itself."""
        tree = self.pids()
        return [p for p in tree if p != self.proc.pid] or [self.proc.pid]

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process and its workers so far."""
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / CLK_TCK

    def quiesce(self, timeout_s: float = 120.0) -> None:
        """Wait until the server has finished what earlier runs left queued (a closed-loop run
        stops with up to ``concurrency`` requests in flight, plus their background audit rows)."""
        give_up = time.monotonic() + timeout_s
        last = self.cpu_s()
        while time.monotonic() < give_up:
            time.sleep(0.3)
            now = self.cpu_s()
            if now - last < 0.01:
                return
            last = now

    def rss_mb(self) -> float:
        """The largest worker's RSS (the target is per worker)."""
        largest = 0.0
        for pid in self.workers():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        largest = max(largest, int(line.split()[1]) / 1024)
        return largest


def _free_port() -> int:
    from service.cli.processes import free_port

    return free_port()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    from service.cli.processes import stop_process

    stop_process(proc)


def _tail(path: Path, lines: int = 20) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def start_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    workdir: Path,
    cwd: Path = REPO,
) -> Iterator[Server]:
    """Start ``cmd`` in ``cwd`` (``-m`` imports from there), logging to ``workdir``, and wait
    for its ``/healthz``."""
    from service.cli.errors import SandboxError
    from service.cli.processes import wait_http_ok

    log_path = workdir / f"{name}.log"
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = Server(name, proc, port, log_path)
    try:
        try:
            wait_http_ok(f"{server.url}/healthz", 60.0, proc)
        except SandboxError as exc:
            raise SystemExit(f"bench: {name} did not start: {exc}\n{_tail(log_path)}") from exc
        yield server
    finally:
        _stop(proc)


def _cds_command() -> list[str]:
    script = Path(sys.executable).parent / "sleep-cds"
    return [str(script)] if script.exists() else [sys.executable, "-m", "service.cli"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "SEKMET_"))}


@contextlib.contextmanager
def database(url: str | None, workdir: Path) -> Iterator[str]:
    """A fresh database: a temporary SQLite file, or a new schema in the given PostgreSQL."""
    if not url:
        yield f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(url.replace("+asyncpg", "+psycopg"), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        separator = "&" if "?" in url else "?"
        yield f"{url}{separator}options=-csearch_path%3D{schema}"
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


# --- load generation -----------------------------------------------------------------------------


@dataclass
class RunResult:
    case: str
    target: str
    concurrency: int
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    degraded: int
    exhausted: bool
    cpu_ms_per_req: float
    rss_mb: float
    loadgen_cpu_pct: float
    first_bad: str = ""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def drive(
    server: Server,
    case: str,
    path: str,
    bodies_file: Path,
    tokens_file: Path,
    concurrency: int,
    duration_s: int,
    mode: str,
    generator: str,
) -> RunResult:
    """One closed-loop run; returns what the load generator and /proc saw."""
    if generator == "wrk":
        threads = min(2, concurrency)
        cmd = [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{duration_s}s",
            "--timeout",
            "30s",
            "-s",
            str(LUA),
            server.url,
            "--",
            str(bodies_file),
            str(tokens_file),
            path,
            str(threads),
            mode,
        ]
    else:
        cmd = [
            sys.executable,
            str(LOADGEN),
            server.url,
            path,
            str(bodies_file),
            str(tokens_file),
            str(concurrency),
            str(duration_s),
            mode,
        ]
    server.quiesce()
    cpu0, gen0, wall0 = server.cpu_s(), _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - wall0
    gen1 = _children_cpu()
    server.quiesce()  # the requests still in flight when the generator stopped finish here
    cpu1 = server.cpu_s()
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
    if line is None:
        raise SystemExit(f"bench: load generator failed: {done.stdout[-500:]} {done.stderr[-500:]}")
    raw = orjson.loads(line[6:])
    requests = int(raw["requests"])
    seconds = raw["duration_us"] / 1e6
    errors = int(raw["bad"]) + sum(
        int(raw[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
    )
    return RunResult(
        case=case,
        target=server.name,
        concurrency=concurrency,
        requests=requests,
        seconds=round(seconds, 3),
        rps=round(requests / seconds, 1) if seconds else 0.0,
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        errors=errors,
        degraded=int(raw.get("degraded", 0)),
        exhausted=bool(raw["exhausted"]),
        # Up to ``concurrency`` requests were still in flight at the end; their CPU is in the
        # delta (measured after quiescing), so they count as served for this figure.
        cpu_ms_per_req=round((cpu1 - cpu0) * 1000 / (requests + concurrency), 3)
        if requests
        else 0.0,
        rss_mb=round(server.rss_mb(), 1),
        loadgen_cpu_pct=round((gen1 - gen0) / wall * 100, 1),
        first_bad=str(raw.get("first_bad", "")),
    )


# --- the cases -----------------------------------------------------------------------------------


@dataclass
class Case:
    key: str
    label: str
    path: str
    bodies: list[bytes]
    resources: int
    concurrencies: tuple[int, ...]
    note: str = ""
    results: dict[str, list[RunResult]] = field(default_factory=dict)

    @property
    def body_kb(self) -> float:
        return statistics.median(len(b) for b in self.bodies) / 1024


def _dump(body: dict[str, Any]) -> bytes:
    return orjson.dumps(body)


def build_cases(
    discovery: dict[str, Any],
    fhir_base: str | None,
    concurrencies: tuple[int, ...],
    as_of: dt.date,
) -> tuple[list[Case], dict[str, list[data.Record]]]:
    templates = {s["hook"]: s["prefetch"] for s in discovery["services"]}
    typical = data.typical_records(as_of)
    codes = data.observation_codes(templates["patient-view"])
    heavy = data.heavy_record(as_of, 1.0, codes)
    tenth = data.heavy_record(as_of, 0.1, codes)

    def bodies(hook: str, records: Sequence[data.Record], copies: int, **kw: Any) -> list[bytes]:
        out = []
        for _ in range(copies):  # distinct hookInstance per body
            for record in records:
                prefetch = data.group_prefetch(templates[hook], record)
                drafts = data.draft_orders(record.patient_id) if hook != "patient-view" else ()
                out.append(
                    _dump(
                        data.hook_request(
                            hook, record.patient_id, prefetch=prefetch, drafts=drafts, **kw
                        )
                    )
                )
        return out

    def median_resources(raw: list[bytes]) -> int:
        return int(statistics.median(data.count_resources(orjson.loads(b)) for b in raw))

    cases: list[Case] = []
    typical_bodies = bodies("patient-view", typical, 8)
    cases.append(
        Case(
            "typical",
            f"patient-view, typical prefetch ({len(typical)} patients)",
            PATIENT_VIEW,
            typical_bodies,
            median_resources(typical_bodies),
            concurrencies,
            "each demo patient padded to ~60 resources, plus one synthetic patient",
        )
    )
    order_bodies = bodies("order-sign", typical, 8)
    cases.append(
        Case(
            "order-sign",
            "order-sign, 3 draft orders",
            ORDER_SIGN,
            order_bodies,
            median_resources(order_bodies),
            concurrencies,
            "typical prefetch for the order-sign keys; an SSRI, a polysomnography, a refill",
        )
    )
    heavy_bodies = bodies("patient-view", [heavy], 4)
    cases.append(
        Case(
            "heavy",
            "patient-view, heavy record",
            PATIENT_VIEW,
            heavy_bodies,
            median_resources(heavy_bodies),
            concurrencies,
            "2,000 Observations, 200 medications, 50 conditions",
        )
    )
    tenth_bodies = bodies("patient-view", [tenth], 4)
    cases.append(
        Case(
            "heavy-tenth",
            "patient-view, 1/10 of the heavy record",
            PATIENT_VIEW,
            tenth_bodies,
            median_resources(tenth_bodies),
            (1,),
            "for the linear-growth check",
        )
    )
    if fhir_base is not None:
        raw = [
            _dump(data.hook_request("patient-view", r.patient_id, fhir_server=fhir_base))
            for _ in range(8)
            for r in typical
        ]
        cases.append(
            Case(
                "no-prefetch",
                "patient-view, no prefetch (real FHIR server)",
                PATIENT_VIEW,
                raw,
                int(statistics.median(len(r.resources) for r in typical)),
                concurrencies,
                "the service fetches the typical records from SEKMET",
            )
        )
    return cases, {"typical": typical, "heavy": [heavy], "tenth": [tenth]}


# --- the FHIR server's own latency (for the no-prefetch case) -------------------------------


def _render(template: str, patient_id: str) -> str:
    return (
        template.replace("{{context.patientId}}", patient_id)
        .replace("{{context.userId}}", "Practitioner/example")
        .replace("{{userPractitionerId}}", "example")
    )


async def _fhir_alone(
    base: str, queries: list[list[str]], concurrency: int, seconds: float
) -> list[float]:
    """Per hook call, the wall time of the same parallel searches the service runs."""
    limits = httpx.Limits(max_connections=20, max_keepalive_connections=10)
    timings: list[float] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(
        base_url=base, limits=limits, timeout=10.0, trust_env=False
    ) as client:

        async def one(query: str) -> None:
            response = await client.get(
                f"/{query}",
                headers={
                    "Accept": "application/fhir+json",
                    "Authorization": "Bearer bench-fhir-token",
                },
            )
            response.raise_for_status()
            orjson.loads(response.content)

        async def worker(offset: int) -> None:
            i = offset
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                await asyncio.gather(*(one(q) for q in queries[i % len(queries)]))
                timings.append(time.perf_counter() - started)
                i += 1

        await asyncio.gather(*(worker(n) for n in range(concurrency)))
    return timings


def fhir_alone(
    base: str,
    discovery: dict[str, Any],
    records: Sequence[data.Record],
    concurrency: int,
    seconds: float,
) -> dict[str, float]:
    templates = next(s["prefetch"] for s in discovery["services"] if s["hook"] == "patient-view")
    queries = [[_render(t, r.patient_id) for t in templates.values()] for r in records]
    timings = sorted(asyncio.run(_fhir_alone(base, queries, concurrency, seconds)))
    if not timings:
        return {"calls": 0, "p50_ms": 0.0, "p99_ms": 0.0}
    return {
        "calls": len(timings),
        "p50_ms": round(timings[len(timings) // 2] * 1000, 2),
        "p99_ms": round(timings[min(len(timings) - 1, int(len(timings) * 0.99))] * 1000, 2),
    }


# --- in-process engine timing (no HTTP, JWT, database) ---------------------------------------


def engine_timings(bodies: dict[str, bytes], repeat: int) -> dict[str, dict[str, float]]:
    """Median CPU ms for what the route does with a body: parse, validate, read, evaluate,
    compose (thread CPU time, so other processes on the machine do not inflate it)."""
    from service.api.jsonbody import decode_hook_request
    from service.api.routes import hook_call
    from service.cdshooks.discovery import SERVICES
    from service.config import Settings
    from service.engine.pipeline import HookPipeline
    from service.knowledge.base import load_knowledge
    from service.main import tune_collector

    settings = Settings()
    kb = load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir)
    pipeline = HookPipeline(kb)
    spec = {s.hook: s for s in SERVICES}
    today = data.today()
    out: dict[str, dict[str, float]] = {}
    tune_collector()  # as in the served worker: the knowledge base frozen, young objects batched

    async def once(raw: bytes) -> int:
        body = decode_hook_request(raw, max_depth=settings.max_json_depth)
        call = hook_call(spec[body.hook], body)
        result = await pipeline.run(call, today)
        return len(result.cards)

    async def measure() -> None:
        for name, raw in bodies.items():
            await once(raw)  # warm
            times = []
            count = repeat if len(raw) < 1_000_000 else max(3, repeat // 10)
            for _ in range(count):
                started = time.thread_time()  # CPU time: other processes do not inflate it
                cards = await once(raw)
                times.append(time.thread_time() - started)
            resources = data.count_resources(orjson.loads(raw))
            out[name] = {
                "resources": resources,
                "body_kb": round(len(raw) / 1024, 1),
                "median_ms": round(statistics.median(times) * 1000, 3),
                "cards": cards,
            }

    asyncio.run(measure())
    return out


def engine_bodies(discovery: dict[str, Any], as_of: dt.date, x10: bool) -> dict[str, bytes]:
    """patient-view bodies for the in-process timings: each typical record, heavy at 0.1/1/10x."""
    templates = next(s["prefetch"] for s in discovery["services"] if s["hook"] == "patient-view")
    bodies: dict[str, bytes] = {}
    for record in data.typical_records(as_of):
        bodies[f"typical {record.name}"] = _dump(
            data.hook_request(
                "patient-view",
                record.patient_id,
                prefetch=data.group_prefetch(templates, record),
            )
        )
    for scale in (0.1, 1.0, 10.0) if x10 else (0.1, 1.0):
        record = data.heavy_record(as_of, scale, data.observation_codes(templates))
        bodies[f"heavy x{scale:g}"] = _dump(
            data.hook_request(
                "patient-view",
                record.patient_id,
                prefetch=data.group_prefetch(templates, record),
            )
        )
    return bodies


def engine_only(args: argparse.Namespace) -> dict[str, Any]:
    """``--engine-only``: the in-process timings without starting any server (quick A/B)."""
    from service.api.discovery import build_discovery
    from service.config import Settings
    from service.knowledge.base import load_knowledge

    settings = Settings()
    discovery = build_discovery(load_knowledge(settings.fhir_profiles_dir, settings.knowledge_dir))
    timings = engine_timings(
        engine_bodies(discovery, data.today(), args.engine_x10), args.engine_repeat
    )
    return {"engine": timings}


# --- reporting -----------------------------------------------------------------------------------


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = subprocess.run(["free", "-h"], capture_output=True, text=True, check=False).stdout
    wrk = shutil.which("wrk")
    wrk_version = (
        subprocess.run(
            ["wrk", "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
        if wrk
        else "not installed"
    )
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "free_h": mem.strip(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version.strip(),
    }


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def markdown(report: dict[str, Any]) -> str:
    lines = []
    cfg = report["config"]
    lines.append(
        f"Run {report['started']} | load generator: {cfg['generator']} | database: "
        f"{cfg['database']} | {cfg['duration_s']} s per point after {cfg['warmup_s']} s warm-up"
        f" | {cfg.get('workers', 1)} worker(s) each"
    )
    lines.append("")
    lines.append(
        "| Case | Resources | Body KB | Conc. | p50 ms | p99 ms | req/s | Baseline req/s "
        "| Ratio | Svc CPU ms/req | Errors |"
    )
    lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for case in report["cases"]:
        for point in case["points"]:
            svc, base = point["service"], point.get("baseline")
            ratio = f"{svc['rps'] / base['rps']:.0%}" if base and base["rps"] else "-"
            problems = svc["errors"] + (base["errors"] if base else 0)
            flags = []
            if problems:
                flags.append(str(problems))
            if svc["degraded"]:
                flags.append(f"{svc['degraded']} degraded")
            if svc["exhausted"]:
                flags.append("tokens ran out")
            lines.append(
                f"| {case['label']} | {case['resources']} | {_fmt(case['body_kb'])} "
                f"| {point['concurrency']} | {_fmt(svc['p50_ms'], 2)} | {_fmt(svc['p99_ms'], 2)} "
                f"| {_fmt(svc['rps'], 0)} | {_fmt(base['rps'], 0) if base else '-'} | {ratio} "
                f"| {_fmt(svc['cpu_ms_per_req'], 2)} | {', '.join(flags) or 0} |"
            )
    if report.get("fhir_alone"):
        lines += ["", "No prefetch: the service's own share of the latency", ""]
        lines.append(
            "| Conc. | End to end p50 ms | FHIR searches alone p50 ms | Service share p50 ms "
            "| Service CPU ms/req |"
        )
        lines.append("|---:|---:|---:|---:|---:|")
        no_pf = next((c for c in report["cases"] if c["key"] == "no-prefetch"), None)
        for point in no_pf["points"] if no_pf else []:
            alone = report["fhir_alone"].get(str(point["concurrency"]))
            if not alone:
                continue
            svc = point["service"]
            lines.append(
                f"| {point['concurrency']} | {_fmt(svc['p50_ms'], 2)} | {_fmt(alone['p50_ms'], 2)} "
                f"| {_fmt(svc['p50_ms'] - alone['p50_ms'], 2)} "
                f"| {_fmt(svc['cpu_ms_per_req'], 2)} |"
            )
    if report.get("engine"):
        lines += [
            "",
            "In-process engine time (parse, validate, read, rules, cards; no HTTP/JWT/DB)",
            "",
        ]
        lines.append("| Body | Resources | Body KB | Median ms | Cards |")
        lines.append("|---|---:|---:|---:|---:|")
        for name, row in report["engine"].items():
            lines.append(
                f"| {name} | {row['resources']} | {_fmt(row['body_kb'])} "
                f"| {_fmt(row['median_ms'], 3)} | {row['cards']} |"
            )
    if report.get("soak"):
        soak = report["soak"]
        lines += [
            "",
            f"Soak (a fresh worker, idle RSS {soak.get('rss_idle_mb', '?')} MB): "
            f"{soak['seconds']} s at concurrency {soak['concurrency']}, typical calls with one "
            f"heavy call in 21 ({soak['requests']} calls, {soak['errors']} errors, "
            f"p50 {soak['p50_ms']:.1f} ms, p99 {soak['p99_ms']:.1f} ms): worker RSS "
            f"{soak['rss_start_mb']} MB after warm-up, {soak['rss_end_mb']} MB at the end, "
            f"max {soak['rss_max_mb']} MB, slope {soak['rss_slope_mb_per_min']} MB/min; "
            f"high-water {soak.get('rss_middle_max_mb', '?')} MB in the middle third, "
            f"{soak.get('rss_last_max_mb', '?')} MB in the last.",
        ]
    if report.get("rss_peak_points_mb"):
        lines += [
            "",
            f"Worker RSS of the first worker: {report.get('rss_idle_mb')} MB idle, "
            f"{report['rss_peak_points_mb']} MB at its highest after a point, "
            f"{report.get('rss_end_mb')} MB at the end.",
        ]
    if report.get("targets"):
        lines += ["", "| Target | Measured | Met |", "|---|---|---|"]
        for target in report["targets"]:
            lines.append(
                f"| {target['target']} | {target['measured']} | "
                f"{'yes' if target['met'] else 'NO'} |"
            )
    return "\n".join(lines) + "\n"


def evaluate_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    cases = {c["key"]: c for c in report["cases"]}
    targets: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool) -> None:
        targets.append({"target": target, "measured": measured, "met": met})

    def point(key: str, conc: int) -> dict[str, Any] | None:
        case = cases.get(key)
        return next((p for p in case["points"] if p["concurrency"] == conc), None) if case else None

    # Issue 17's targets: same-run ratios against the baseline, so they hold on a loaded machine.
    for conc in (1, 16, 64):
        p = point("typical", conc)
        if p and p.get("baseline") and p["baseline"]["rps"]:
            ratio = p["service"]["rps"] / p["baseline"]["rps"]
            add(
                f"typical: throughput >= 50% of baseline (conc. {conc})",
                f"{ratio:.0%} ({p['service']['rps']:.0f} / {p['baseline']['rps']:.0f} req/s; "
                f"CPU {p['service']['cpu_ms_per_req']:.2f} / "
                f"{p['baseline']['cpu_ms_per_req']:.2f} ms/req)",
                ratio >= 0.5,
            )
    p = point("typical", 16)
    if p and p.get("baseline"):
        svc, base = p["service"]["p99_ms"], p["baseline"]["p99_ms"]
        add(
            "typical: p99 <= 2.5x baseline p99 (conc. 16)",
            f"{svc:.1f} ms vs {base:.1f} ms ({svc / max(base, 1e-9):.1f}x)",
            svc <= 2.5 * base,
        )
    p = point("heavy", 1)
    if p and p.get("baseline"):
        svc, base = p["service"]["p50_ms"], p["baseline"]["p50_ms"]
        add(
            "heavy: p50 <= baseline p50 (conc. 1)",
            f"{svc:.1f} ms vs {base:.1f} ms",
            svc <= base,
        )
    tenth = point("heavy-tenth", 1)
    if p and tenth:
        ratio = p["service"]["p50_ms"] / tenth["service"]["p50_ms"]
        cpu = p["service"]["cpu_ms_per_req"] / max(tenth["service"]["cpu_ms_per_req"], 1e-9)
        add(
            "heavy: 10x resources <= 12x time (HTTP p50, conc. 1)",
            f"{ratio:.1f}x (CPU/req {cpu:.1f}x)",
            ratio <= 12,
        )
    engine = report.get("engine") or {}
    if "heavy x1" in engine and "heavy x0.1" in engine and "heavy x10" in engine:
        a = engine["heavy x1"]["median_ms"] / engine["heavy x0.1"]["median_ms"]
        b = engine["heavy x10"]["median_ms"] / engine["heavy x1"]["median_ms"]
        add(
            "engine only: 10x resources <= 12x time",
            f"0.1x->1x: {a:.1f}x; 1x->10x: {b:.1f}x",
            a <= 12 and b <= 12,
        )
    no_prefetch = point("no-prefetch", 1)
    alone = (report.get("fhir_alone") or {}).get("1")
    if no_prefetch and alone:
        share = no_prefetch["service"]["p50_ms"] - alone["p50_ms"]
        add(
            "no prefetch: service share <= 10 ms p50 (conc. 1)",
            f"{share:.1f} ms ({no_prefetch['service']['p50_ms']:.1f} - {alone['p50_ms']:.1f} ms)",
            share <= 10,
        )
    soak = report.get("soak")
    if soak:
        add("worker RSS < 250 MB", f"max {soak['rss_max_mb']} MB", soak["rss_max_mb"] < 250)
        # Flat: after warm-up the high-water mark stops rising (memory given back is not a leak).
        middle, last = soak["rss_middle_max_mb"], soak["rss_last_max_mb"]
        add(
            "worker RSS flat over the soak (high-water, last third vs middle third)",
            f"{middle} -> {last} MB (slope after warm-up {soak['rss_slope_mb_per_min']} MB/min)",
            last - middle <= max(10.0, 0.05 * middle),
        )
    return targets


# --- the run -------------------------------------------------------------------------------------


def _write_lines(path: Path, items: Sequence[bytes | str]) -> Path:
    with path.open("wb") as f:
        for item in items:
            f.write(item if isinstance(item, bytes) else item.encode())
            f.write(b"\n")
    return path


def _slope(samples: list[tuple[float, float]]) -> float:
    """Least-squares RSS slope in MB per minute."""
    if len(samples) < 3:
        return 0.0
    xs, ys = [s[0] for s in samples], [s[1] for s in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den * 60 if den else 0.0


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.key = tok.new_key()
        self.generator = args.generator
        if self.generator == "auto":
            self.generator = "wrk" if shutil.which("wrk") else "python"

    def tokens_file(self, service: Server, path: str, count: int) -> Path:
        audience = f"{service.url}{path}"
        signed = tok.sign_tokens(self.key, audience, count)
        return _write_lines(self.workdir / f"tokens-{uuid.uuid4().hex[:8]}.txt", signed)

    def run_service(self, service: Server, case: Case, bodies_file: Path, conc: int) -> RunResult:
        args = self.args
        rate_cap = 2500 * args.workers  # a ceiling for one worker verifying ES384 tokens
        warm = self.tokens_file(service, case.path, int(rate_cap * args.warmup) + 2 * conc)
        warm_run = drive(
            service,
            case.key,
            case.path,
            bodies_file,
            warm,
            conc,
            args.warmup,
            "unique",
            self.generator,
        )
        rate = max(warm_run.rps, 1.0)
        count = int(rate * args.duration * 1.6) + 4 * conc + 20
        for _ in range(3):
            tokens_file = self.tokens_file(service, case.path, count)
            result = drive(
                service,
                case.key,
                case.path,
                bodies_file,
                tokens_file,
                conc,
                args.duration,
                "unique",
                self.generator,
            )
            if not result.exhausted:
                return result
            count *= 2
        return result

    def run_baseline(
        self, baseline: Server, case: Case, bodies_file: Path, conc: int, service: Server
    ) -> RunResult:
        args = self.args
        tokens_file = self.tokens_file(service, case.path, 64)
        drive(
            baseline,
            case.key,
            case.path,
            bodies_file,
            tokens_file,
            conc,
            args.warmup,
            "reuse",
            self.generator,
        )
        return drive(
            baseline,
            case.key,
            case.path,
            bodies_file,
            tokens_file,
            conc,
            args.duration,
            "reuse",
            self.generator,
        )

    def check(self, service: Server, case: Case) -> dict[str, Any]:
        """One call before timing: it must answer 200 with a card list."""
        token = tok.sign_tokens(self.key, f"{service.url}{case.path}", 1)[0]
        response = httpx.post(
            f"{service.url}{case.path}",
            content=case.bodies[0],
            timeout=30.0,
            trust_env=False,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        if response.status_code != 200:
            raise SystemExit(
                f"bench: {case.key} answered {response.status_code}: {response.text[:500]}\n"
                f"{_tail(service.log_path)}"
            )
        cards = response.json()["cards"]
        return {"cards": len(cards), "summaries": [c["summary"] for c in cards]}

    def soak(self, service: Server, typical: Case, heavy: Case, rate: float) -> dict[str, Any]:
        args = self.args
        bodies = []
        for i, body in enumerate(typical.bodies * 3):
            bodies.append(body)
            if i % 20 == 19:
                bodies.append(heavy.bodies[i % len(heavy.bodies)])
        bodies_file = _write_lines(self.workdir / "soak-bodies.txt", bodies)
        tokens_file = self.tokens_file(
            service, PATIENT_VIEW, int(max(rate, 1.0) * args.soak * 1.6) + 200
        )
        samples: list[tuple[float, float]] = []
        stop = threading.Event()
        started = time.perf_counter()

        def sample() -> None:
            while not stop.is_set():
                samples.append((time.perf_counter() - started, service.rss_mb()))
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = drive(
            service,
            "soak",
            PATIENT_VIEW,
            bodies_file,
            tokens_file,
            16,
            args.soak,
            "unique",
            self.generator,
        )
        stop.set()
        sampler.join()
        # The first third is warm-up: RSS climbs to the high-water of 16 concurrent calls (a
        # heavy one among them) and the allocator keeps those pages. A leak shows as a high-water
        # mark that keeps rising after that, so the last third is compared with the middle one.
        third = args.soak / 3
        steady = [s for s in samples if s[0] >= third] or samples
        middle = [m for t, m in steady if t < 2 * third] or [steady[0][1]]
        last = [m for t, m in steady if t >= 2 * third] or [steady[-1][1]]
        return {
            "seconds": args.soak,
            "concurrency": 16,
            "requests": result.requests,
            "errors": result.errors,
            "rps": result.rps,
            "p50_ms": result.p50_ms,
            "p99_ms": result.p99_ms,
            "rss_start_mb": round(steady[0][1], 1),
            "rss_end_mb": round(steady[-1][1], 1),
            "rss_max_mb": round(max(s[1] for s in samples), 1),
            "rss_slope_mb_per_min": round(_slope(steady), 2),
            "rss_middle_max_mb": round(max(middle), 1),
            "rss_last_max_mb": round(max(last), 1),
            "samples": [(round(t, 1), round(m, 1)) for t, m in samples],
        }

    def profile(self, service: Server, case: Case, bodies_file: Path) -> dict[str, Any] | None:
        """py-spy on the worker during a concurrency-16 run of ``case`` (if py-spy is here)."""
        candidates = [Path(sys.executable).parent / "py-spy", REPO / ".venv-bench/bin/py-spy"]
        pyspy = shutil.which("py-spy") or next((str(p) for p in candidates if p.exists()), None)
        if not pyspy:
            print("bench: py-spy not found, no profile", file=sys.stderr)
            return None
        out = self.args.results_dir / f"profile-{case.key}-{time.strftime('%Y%m%d-%H%M%S')}"
        seconds = self.args.duration + self.args.warmup
        native = bool(os.environ.get("BENCH_PYSPY_NATIVE"))
        log = (self.workdir / "py-spy.log").open("wb")
        spy = subprocess.Popen(
            [
                pyspy,
                "record",
                "-p",
                str(service.proc.pid),
                *(["--subprocesses"] if self.args.workers > 1 else []),
                "-d",
                str(seconds + 1),
                "-r",
                "250",
                "-f",
                "raw",
                "-o",
                f"{out}.txt",
                "--gil",
                # --native (C frames: orjson, sqlite, OpenSSL) pauses the process per sample.
                *(["--native"] if native else ["--nonblocking"]),
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        time.sleep(1.0)
        self.run_service(service, case, bodies_file, 16)
        spy.wait(timeout=seconds + 30)
        log.close()
        if not Path(f"{out}.txt").exists():
            print(f"bench: py-spy failed: {_tail(self.workdir / 'py-spy.log')}", file=sys.stderr)
            return None
        from bench.profile_summary import summarise

        summary = summarise(Path(f"{out}.txt"), 25)
        Path(f"{out}-summary.txt").write_text(summary)
        return {"collapsed": f"{out}.txt", "summary": summary}

    def run(self) -> dict[str, Any]:
        from service.cli.load import load_bundles
        from service.cli.sekmet import running_sekmet

        args = self.args
        concurrencies = tuple(int(c) for c in args.concurrency.split(","))
        as_of = data.today()
        report: dict[str, Any] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]),
            "machine": machine(),
            "config": {
                "generator": self.generator,
                "duration_s": args.duration,
                "warmup_s": args.warmup,
                "concurrency": list(concurrencies),
                "database": "PostgreSQL" if args.database_url else "SQLite (temporary file)",
                "workers": args.workers,
            },
            "cases": [],
        }
        with contextlib.ExitStack() as stack:
            fhir_base = None
            if not args.no_fhir:
                print("bench: starting the FHIR server (SEKMET) ...", file=sys.stderr, flush=True)
                sekmet = stack.enter_context(running_sekmet(REPO))
                fhir_base = sekmet.base_url
                records = data.typical_records(as_of)
                files = []
                for record in records:
                    path = self.workdir / f"load-{record.patient_id}.json"
                    path.write_bytes(orjson.dumps(data.transaction_bundle(record.resources)))
                    files.append(path)
                load_bundles(fhir_base, files)
            registry = self.workdir / "issuers.json"
            tok.write_registry(registry, self.key, [fhir_base] if fhir_base else [])
            db_url = stack.enter_context(database(args.database_url, self.workdir))

            def service_env(port: int) -> dict[str, str]:
                env = _clean_env()
                env.update(
                    {
                        "CDS_HOST": "127.0.0.1",
                        "CDS_PORT": str(port),
                        "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
                        "CDS_TRUSTED_ISSUERS_FILE": str(registry),
                        "CDS_DATABASE_URL": db_url,
                        "CDS_LOG_LEVEL": "INFO",
                    }
                )
                return env

            workers = ["--workers", str(args.workers)] if args.workers > 1 else []
            serve = [*_cds_command(), "serve", *workers]
            if args.experiment:
                # Not the deployed command: the same server with some Python run first (a tuned
                # collector, a patched function), to measure a change before making it.
                serve = [
                    sys.executable,
                    "-c",
                    f"import gc, sys\n{args.experiment}\n"
                    f"from service.cli.main import main\nsys.exit(main(['serve', *{workers!r}]))",
                ]
                report["config"]["experiment"] = args.experiment
            port = _free_port()
            migrate = subprocess.run(
                [*_cds_command(), "migrate"],
                env=service_env(port),
                cwd=REPO,
                capture_output=True,
                text=True,
                check=False,
            )
            if migrate.returncode != 0:
                raise SystemExit(f"bench: migrate failed: {migrate.stderr[-1000:]}")
            print("bench: starting the service and the baseline ...", file=sys.stderr, flush=True)
            service = stack.enter_context(
                start_server("service", serve, service_env(port), port, self.workdir)
            )
            base_port = _free_port()
            baseline = stack.enter_context(
                start_server(
                    "baseline",
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "bench.baseline_app:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(base_port),
                        "--loop",
                        "uvloop",
                        "--http",
                        "httptools",
                        "--no-access-log",
                        "--no-server-header",
                        "--log-level",
                        "warning",
                        *workers,
                    ],
                    _clean_env(),
                    base_port,
                    self.workdir,
                )
            )
            discovery_token = tok.sign_tokens(self.key, f"{service.url}/cds-services", 1)[0]
            discovery = httpx.get(
                f"{service.url}/cds-services",
                trust_env=False,
                headers={"Authorization": f"Bearer {discovery_token}"},
            ).json()
            cases, records = build_cases(discovery, fhir_base, concurrencies, as_of)
            wanted = set(args.cases.split(",")) if args.cases else None
            cases = [c for c in cases if wanted is None or c.key in wanted]
            report["rss_idle_mb"] = round(service.rss_mb(), 1)
            for case in cases:
                check = self.check(service, case)
                bodies_file = _write_lines(self.workdir / f"bodies-{case.key}.txt", case.bodies)
                entry: dict[str, Any] = {
                    "key": case.key,
                    "label": case.label,
                    "path": case.path,
                    "resources": case.resources,
                    "body_kb": round(case.body_kb, 1),
                    "bodies": len(case.bodies),
                    "note": case.note,
                    "check": check,
                    "points": [],
                }
                for conc in case.concurrencies:
                    print(
                        f"bench: {case.key} at concurrency {conc} ...", file=sys.stderr, flush=True
                    )
                    base = self.run_baseline(baseline, case, bodies_file, conc, service)
                    svc = self.run_service(service, case, bodies_file, conc)
                    entry["points"].append(
                        {"concurrency": conc, "service": vars(svc), "baseline": vars(base)}
                    )
                report["cases"].append(entry)
            if fhir_base is not None and any(c.key == "no-prefetch" for c in cases):
                report["fhir_alone"] = {
                    str(conc): fhir_alone(
                        fhir_base,
                        discovery,
                        records["typical"],
                        conc,
                        min(4.0, float(args.duration)),
                    )
                    for conc in concurrencies
                }
            by_key = {c.key: c for c in cases}
            if args.profile and args.profile in by_key:
                case = by_key[args.profile]
                report["profile"] = self.profile(
                    service, case, self.workdir / f"bodies-{case.key}.txt"
                )
            if args.soak and "typical" in by_key and "heavy" in by_key:
                # A fresh worker: the points above leave the first one at its high-water mark
                # (64 heavy bodies at once), which says nothing about steady state.
                print(
                    f"bench: soak for {args.soak} s (fresh worker) ...", file=sys.stderr, flush=True
                )
                typical_rate = next(
                    (
                        p["service"]["rps"]
                        for c in report["cases"]
                        if c["key"] == "typical"
                        for p in c["points"]
                        if p["concurrency"] == 16
                    ),
                    1500.0,
                )
                soak_port = _free_port()
                with start_server(
                    "soak", serve, service_env(soak_port), soak_port, self.workdir
                ) as fresh:
                    idle = round(fresh.rss_mb(), 1)
                    report["soak"] = self.soak(
                        fresh, by_key["typical"], by_key["heavy"], typical_rate
                    )
                    report["soak"]["rss_idle_mb"] = idle
            report["rss_end_mb"] = round(service.rss_mb(), 1)
            report["rss_peak_points_mb"] = max(
                (p["service"]["rss_mb"] for c in report["cases"] for p in c["points"]),
                default=0.0,
            )
            lines = service.log_path.read_text(errors="replace").splitlines()
            # A client that goes away mid-request (the load generator stopping at the end of a
            # run) is logged by the service as an error; counted apart, it is not a failure.
            disconnects = [line for line in lines if "ClientDisconnect" in line]
            errors = [
                line
                for line in lines
                if ('"level":"error"' in line or "Traceback" in line)
                and "ClientDisconnect" not in line
            ]
            report["service_log_client_disconnects"] = len(disconnects)
            report["service_log_errors"] = len(errors)
            if errors:  # keep the log for the post-mortem (it holds no PHI or tokens)
                shutil.copy(
                    service.log_path, args.results_dir / f"service-{time.strftime('%H%M%S')}.log"
                )
            report["service_log_error_samples"] = list(
                dict.fromkeys(
                    orjson.loads(e).get("msg", e) if e.startswith("{") else e for e in errors
                )
            )[:10]
        if args.engine_repeat:
            print("bench: in-process engine timings ...", file=sys.stderr, flush=True)
            report["engine"] = engine_timings(
                engine_bodies(discovery, as_of, args.engine_x10), args.engine_repeat
            )
        report["targets"] = evaluate_targets(report)
        return report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per point (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per point")
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--soak", type=int, default=180, help="soak seconds, the first third warm-up (0: none)"
    )
    parser.add_argument("--cases", default="", help="comma-separated case keys (default: all)")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--database-url",
        default="",
        help="PostgreSQL URL (a fresh schema is created); default temp SQLite",
    )
    parser.add_argument("--no-fhir", action="store_true", help="skip the no-prefetch case")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="typical",
        default=None,
        metavar="CASE",
        help="py-spy one case at concurrency 16 (default: typical)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="uvicorn worker processes for both the service and the baseline (default 1)",
    )
    parser.add_argument(
        "--engine-repeat", type=int, default=30, help="in-process engine timing repeats (0: skip)"
    )
    parser.add_argument(
        "--no-engine-x10",
        dest="engine_x10",
        action="store_false",
        help="skip the 10x heavy record in the engine timings",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI: 1 s points, no warm-up, no soak, tiny engine repeats",
    )
    parser.add_argument(
        "--experiment",
        default="",
        help="Python run in the worker before serving, e.g. 'gc.set_threshold(50_000, 20, 100)'"
        " (not the deployed configuration: for measuring a change before making it)",
    )
    parser.add_argument(
        "--engine-only", action="store_true", help="only the in-process engine timings (no servers)"
    )
    parser.add_argument("--out", default="", help="write the report JSON here as well")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where reports go (bench/results)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.soak = 1, 1, 0
        args.engine_repeat, args.engine_x10 = 2, False
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.engine_only:
        report = engine_only(args)
        total = sum(r["median_ms"] for k, r in report["engine"].items() if k.startswith("typ"))
        typical = [k for k in report["engine"] if k.startswith("typ")]
        for name, row in report["engine"].items():
            print(
                f"{name:55s} {row['resources']:6d} res {row['median_ms']:9.3f} ms "
                f"{row['cards']} cards"
            )
        print(f"typical mean {total / max(1, len(typical)):.3f} ms")
        if args.out:
            Path(args.out).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        return 0
    with tempfile.TemporaryDirectory(prefix="sleep-cds-bench-") as tmp:
        report = Bench(args, Path(tmp)).run()
    text = markdown(report)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.results_dir / f"bench-{stamp}.json").write_bytes(
        orjson.dumps(report, option=orjson.OPT_INDENT_2)
    )
    (args.results_dir / f"bench-{stamp}.md").write_text(text)
    if args.out:
        Path(args.out).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
