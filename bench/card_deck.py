"""The card deck: every answer the service gives to a fixed set of requests, as bytes to compare.

Restructuring and performance work must not change a single card. This script posts every
clinical scenario (``tests/scenarios``) and the benchmark's bodies (each typical record, the
order-sign drafts, a tenth of the heavy record) to the service in-process, with the clock frozen,
and writes the answers as canonical JSON lines. Random uuids are replaced by their order of first
appearance, so two runs of the same code give the same bytes.

    .venv/bin/python bench/card_deck.py --out /tmp/before.jsonl
    ... change ...
    .venv/bin/python bench/card_deck.py --out /tmp/after.jsonl
    cmp /tmp/before.jsonl /tmp/after.jsonl
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import data  # noqa: E402

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SCENARIOS = ROOT / "tests" / "scenarios"
BENCH_DAY = dt.date(2026, 6, 1)


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, 9, 0, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


def _scenario_body(scenario: dict[str, Any], number: int) -> dict[str, Any]:
    context: dict[str, Any] = {
        "userId": scenario.get("user_id", "Practitioner/scenario-clinician"),
        "patientId": scenario["patient_id"],
    }
    for key in ("draftOrders", "selections"):
        if key in scenario:
            context[key] = scenario[key]
    body: dict[str, Any] = {
        "hook": scenario["hook"],
        "hookInstance": f"00000000-0000-4000-8000-{number:012d}",
        "context": context,
    }
    if "prefetch" in scenario:
        body["prefetch"] = scenario["prefetch"]
    return body


def requests(discovery: dict[str, Any]) -> Iterator[tuple[str, dt.date, dict[str, Any]]]:
    """(name, as_of, body) for every request of the deck, in a fixed order."""
    number = 0
    for path in sorted(SCENARIOS.glob("*.json")):
        scenario = json.loads(path.read_text())
        number += 1
        yield path.stem, dt.date.fromisoformat(scenario["as_of"]), _scenario_body(scenario, number)
    templates = {s["hook"]: s.get("prefetch") or {} for s in discovery["services"]}
    for record in data.typical_records(BENCH_DAY):
        number += 1
        prefetch = data.group_prefetch(templates["patient-view"], record)
        yield (
            f"bench typical {record.name}",
            BENCH_DAY,
            data.hook_request(
                "patient-view",
                record.patient_id,
                prefetch=prefetch,
                hook_instance=f"00000000-0000-4000-8000-{number:012d}",
            ),
        )
        number += 1
        yield (
            f"bench order-sign {record.name}",
            BENCH_DAY,
            data.hook_request(
                "order-sign",
                record.patient_id,
                prefetch=data.group_prefetch(templates["order-sign"], record),
                drafts=data.draft_orders(record.patient_id),
                hook_instance=f"00000000-0000-4000-8000-{number:012d}",
            ),
        )
    heavy = data.heavy_record(BENCH_DAY, 0.1, data.observation_codes(templates["patient-view"]))
    number += 1
    yield (
        "bench heavy x0.1",
        BENCH_DAY,
        data.hook_request(
            "patient-view",
            heavy.patient_id,
            prefetch=data.group_prefetch(templates["patient-view"], heavy),
            hook_instance=f"00000000-0000-4000-8000-{number:012d}",
        ),
    )


def _normalise(text: str) -> str:
    seen: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        return seen.setdefault(match.group(0), f"uuid-{len(seen) + 1}")

    return UUID.sub(replace, text)


def deck() -> list[str]:
    import warnings

    with warnings.catch_warnings():  # starlette's note about httpx2 is not ours to act on
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    from service.config import Settings
    from service.db.migrate import upgrade_database
    from service.main import create_app

    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url=f"sqlite+aiosqlite:///{tmp}/deck.db", allowed_hosts=["testserver"]
        )
        upgrade_database(settings)
        clock = Clock()
        app = create_app(settings, clock=clock, configure_logging=False)
        with TestClient(app) as client:
            discovery = client.get("/cds-services").json()
            ids = {s["hook"]: s["id"] for s in discovery["services"]}
            for name, as_of, body in requests(discovery):
                clock.now = dt.datetime.combine(as_of, dt.time(9, 0), tzinfo=dt.UTC)
                response = client.post(f"/cds-services/{ids[body['hook']]}", json=body)
                answer = {"name": name, "status": response.status_code, "body": response.json()}
                lines.append(_normalise(json.dumps(answer, sort_keys=True, ensure_ascii=False)))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the JSON lines")
    args = parser.parse_args(argv)
    lines = deck()
    text = "\n".join(lines) + "\n"
    args.out.write_text(text, encoding="utf-8")
    digest = hashlib.sha256(text.encode()).hexdigest()
    cards = sum(len(json.loads(line)["body"].get("cards", [])) for line in lines)
    print(f"{len(lines)} requests, {cards} cards, sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
