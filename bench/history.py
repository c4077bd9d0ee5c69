"""Does a hook call cost more for a patient with a long history? ``python bench/history.py``.

Issue 14, defect 8: the suppression lookup once joined every card ever shown to the patient with
the feedback table, so a patient with 41,000 earlier calls made every call slower. This mode:

1. starts the service as deployed (``sleep-cds serve``, JWT on, a fresh migrated database);
2. makes one real patient-view call for the long-stay patient and clones its audit rows
   (``hook_call`` + ``card_shown``, same card keys) ``--history`` times straight into the
   database, with expired feedback on one card in twenty (what years of use leave behind);
3. measures, in alternating blocks at concurrency 1, calls for that patient and calls for
   patients never seen before (a fresh id each call): client latency and the server's CPU per call.

``--repo`` runs the server from another checkout (e.g. a worktree of an older commit) to measure
"before" with the same harness. Prints one Markdown table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import orjson  # noqa: E402

from bench import run  # noqa: E402
from bench import tokens as tok  # noqa: E402

PV = "/cds-services/sleep-movement-patient-view"
ACTIVE = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
    ]
}


def body(pid: str) -> bytes:
    """RLS, new weakness and a low ferritin: a critical card and a lab card (small prefetch, so
    the database's share of the call is as large as it gets)."""

    def condition(code: str, onset: str | None = None) -> dict[str, Any]:
        resource: dict[str, Any] = {
            "resourceType": "Condition",
            "id": f"{pid}-{code}",
            "clinicalStatus": ACTIVE,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"},
        }
        if onset:
            resource["onsetDateTime"] = onset
        return resource

    today = datetime.now(UTC).date()
    ferritin = {
        "resourceType": "Observation",
        "id": f"{pid}-ferritin",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": (today - timedelta(days=20)).isoformat(),
        "valueQuantity": {"value": 40, "unit": "ng/mL", "system": "http://unitsofmeasure.org"},
    }

    def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r} for r in resources],
        }

    prefetch = {
        "patient": {"resourceType": "Patient", "id": pid, "birthDate": "1970-01-01"},
        "conditions": bundle(
            [condition("32914008"), condition("26544005", (today - timedelta(days=1)).isoformat())]
        ),
        "observations": bundle([ferritin]),
        "symptoms": None,
        "medicationRequests": None,
        "medicationStatements": None,
        "journal": None,
    }
    return orjson.dumps(
        {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "context": {"patientId": pid, "userId": "Practitioner/bench"},
            "prefetch": prefetch,
        }
    )


def seed_history(sync_url: str, patient: str, copies: int) -> int:
    """Clone the patient's audit rows ``copies`` times; returns the card rows added. The cloned
    cards keep the card keys of the real call (same evidence), as a long stay does."""
    from sqlalchemy import create_engine, text

    engine = create_engine(sync_url)
    try:
        with engine.begin() as conn:
            call = conn.execute(
                text("SELECT service_id, hook FROM hook_call WHERE patient_id = :p"),
                {"p": patient},
            ).first()
            cards = conn.execute(
                text(
                    "SELECT service_id, card_key, topic, indicator, rules FROM card_shown "
                    "WHERE patient_id = :p"
                ),
                {"p": patient},
            ).all()
            assert call is not None and cards, "the seed call left no audit row"
            start = datetime.now(UTC) - timedelta(days=365)
            added = 0
            for first in range(0, copies, 5000):
                calls, rows, feedback = [], [], []
                for i in range(first, min(first + 5000, copies)):
                    when = start + timedelta(minutes=i)
                    calls.append(
                        {
                            "h": uuid.uuid4().hex,
                            "s": call[0],
                            "k": call[1],
                            "p": patient,
                            "t": when,
                            "c": len(cards),
                        }
                    )
                    for card in cards:
                        card_uuid = str(uuid.uuid4())
                        rows.append(
                            {
                                "u": card_uuid,
                                "s": card[0],
                                "p": patient,
                                "k": card[1],
                                "t": card[2],
                                "i": card[3],
                                "r": card[4],
                                "w": when,
                            }
                        )
                        if i % 20 == 0:  # old, expired feedback on one card in twenty
                            feedback.append(
                                {"key": uuid.uuid4().hex, "s": card[0], "u": card_uuid, "w": when}
                            )
                conn.execute(
                    text(
                        "INSERT INTO hook_call (hook_instance, service_id, hook, patient_id, "
                        "called_at, latency_ms, card_count) VALUES (:h, :s, :k, :p, :t, 1.0, :c)"
                    ),
                    calls,
                )
                conn.execute(
                    text(
                        "INSERT INTO card_shown (uuid, service_id, patient_id, card_key, topic, "
                        "indicator, rules, shown_at) VALUES (:u, :s, :p, :k, :t, :i, :r, :w)"
                    ),
                    rows,
                )
                conn.execute(
                    text(
                        "INSERT INTO feedback_item (item_key, service_id, card_uuid, outcome, "
                        "outcome_at, accepted_suggestions, override_reason_code, received_at) "
                        "VALUES (:key, :s, :u, 'overridden', :w, '[]', 'will-reassess', :w)"
                    ),
                    feedback,
                )
                added += len(rows)
            return added
    finally:
        engine.dispose()


def measure(
    client: httpx.Client, server: run.Server, tokens: Iterator[str], pid: str | None, n: int
) -> tuple[list[float], float]:
    """``n`` calls (``pid`` None: a new patient each call): latencies (ms), server CPU ms/call."""
    latencies = []
    cpu = server.cpu_s()
    for _ in range(n):
        content = body(pid or f"new-{uuid.uuid4().hex[:12]}")
        started = time.perf_counter()
        response = client.post(
            PV,
            content=content,
            headers={"Authorization": f"Bearer {next(tokens)}", "Content-Type": "application/json"},
        )
        latencies.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text[:300]
    time.sleep(0.05)  # the audit rows written after the responses count too
    return latencies, (server.cpu_s() - cpu) * 1000 / n


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--history", type=int, default=50_000, help="earlier calls of the long-stay patient"
    )
    parser.add_argument("--calls", type=int, default=200, help="calls per block")
    parser.add_argument("--blocks", type=int, default=3, help="alternating blocks per patient kind")
    parser.add_argument("--database-url", default="", help="PostgreSQL URL (default: SQLite)")
    parser.add_argument("--repo", default="", help="serve from this checkout instead")
    args = parser.parse_args(argv)
    repo = Path(args.repo).resolve() if args.repo else REPO
    key = tok.new_key()
    with (
        tempfile.TemporaryDirectory(prefix="bench-history-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        workdir = Path(tmp)
        registry = workdir / "issuers.json"
        tok.write_registry(registry, key, [])
        db_url = stack.enter_context(run.database(args.database_url or None, workdir))
        port = run._free_port()
        env = run._clean_env() | {
            "CDS_HOST": "127.0.0.1",
            "CDS_PORT": str(port),
            "CDS_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "CDS_TRUSTED_ISSUERS_FILE": str(registry),
            "CDS_DATABASE_URL": db_url,
            "CDS_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(repo),
        }
        import subprocess

        cli = [sys.executable, "-m", "service.cli"]
        subprocess.run([*cli, "migrate"], env=env, cwd=repo, check=True, capture_output=True)
        server = stack.enter_context(
            run.start_server("service", [*cli, "serve"], env, port, workdir, cwd=repo)
        )
        total = 1 + 2 * args.blocks * args.calls + 50
        tokens = iter(tok.sign_tokens(key, f"{server.url}{PV}", total))
        client = stack.enter_context(httpx.Client(base_url=server.url, timeout=30.0))
        first = client.post(
            PV,
            content=body("long-stay"),
            headers={"Authorization": f"Bearer {next(tokens)}", "Content-Type": "application/json"},
        )
        assert first.status_code == 200 and first.json()["cards"], first.text[:500]
        time.sleep(1.0)  # the audit row is written after the response
        from service.config import Settings

        sync_url = Settings(database_url=db_url).sync_database_url()
        seeded = time.perf_counter()
        try:
            added = seed_history(sync_url, "long-stay", args.history)
        except AssertionError:
            print(run._tail(server.log_path, 30), file=sys.stderr)
            raise
        print(
            f"seeded {args.history} calls ({added} cards) in {time.perf_counter() - seeded:.1f} s",
            file=sys.stderr,
        )
        measure(client, server, tokens, "long-stay", 25)  # warm-up
        measure(client, server, tokens, None, 25)
        results: dict[str, tuple[list[float], list[float]]] = {
            "long-stay": ([], []),
            "new": ([], []),
        }
        for _ in range(args.blocks):
            for kind, pid in (("long-stay", "long-stay"), ("new", None)):
                lat, cpu = measure(client, server, tokens, pid, args.calls)
                results[kind][0].extend(lat)
                results[kind][1].append(cpu)
    backend = "PostgreSQL" if args.database_url else "SQLite"
    print(
        f"\n| patient ({backend}, {args.history} earlier calls) "
        "| p50 ms | p90 ms | server CPU ms/call |"
    )
    print("|---|---|---|---|")
    for kind, (lat, cpus) in results.items():
        lat.sort()
        p90 = lat[int(len(lat) * 0.9)]
        print(
            f"| {kind} | {statistics.median(lat):.2f} | {p90:.2f} | {statistics.median(cpus):.2f} |"
        )
    ratio = statistics.median(results["long-stay"][1]) / statistics.median(results["new"][1])
    p50 = statistics.median(results["long-stay"][0]) / statistics.median(results["new"][0])
    print(f"\nCPU per call, long-stay / new: {ratio:.2f}; p50 long-stay / new: {p50:.2f}")
    # Issue 17: a call for a patient with a long history is within 10% of a new patient's.
    met = ratio <= 1.10 and p50 <= 1.10
    print(f"Target: long-stay at most 10% slower than new (CPU and p50): {'yes' if met else 'NO'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
