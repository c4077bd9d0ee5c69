"""Card analytics: the numbers match exactly the cards shown and the feedback sent.

Cards are made through real hook calls at controlled clock times, feedback goes through the real
feedback endpoint, and the report is read from the endpoint (JSON and CSV) and from the CLI, on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service import analytics
from service.cli.main import main as cli_main
from tests.conftest import FrozenClock
from tests.factories import (
    FERRITIN,
    MAGNESIUM,
    RLS,
    WEAKNESS,
    cards_by_topic,
    condition,
    ec_key,
    feedback_item,
    issuer,
    issuers_file,
    observation,
    patient_view,
    signed_token,
)

PV = "/cds-services/sleep-movement-patient-view"
URL = "/analytics/cards"
PERIOD = {"from": "2026-11-23", "to": "2026-12-07"}  # ISO weeks 2026-W48 and 2026-W49


# --- making cards and feedback through the API --------------------------------------------------


def low_ferritin(pid: str) -> dict[str, Any]:
    return observation(pid, FERRITIN, 40, "ng/mL", "2026-11-01")


def low_magnesium(pid: str) -> dict[str, Any]:
    return observation(pid, MAGNESIUM, 1.2, "mg/dL", "2026-11-20")


def show(
    client: TestClient, pid: str, conditions: list[dict[str, Any]], labs: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """One patient-view call; the cards shown, by topic."""
    body = patient_view(pid, conditions=conditions, observations=labs)
    return cards_by_topic(client.post(PV, json=body))


def send(client: TestClient, *items: dict[str, Any]) -> None:
    response = client.post(f"{PV}/feedback", json={"feedback": list(items)})
    assert response.status_code == 200, response.text


def accepted(card: dict[str, Any], at: datetime) -> dict[str, Any]:
    suggestion = card["suggestions"][0]["uuid"]
    return feedback_item(
        card["uuid"], outcome="accepted", when=at.isoformat(), suggestion=suggestion
    )


def overridden(card: dict[str, Any], at: datetime, reason: str | None) -> dict[str, Any]:
    return feedback_item(card["uuid"], when=at.isoformat(), reason=reason)


W48 = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)  # a Wednesday in ISO week 2026-W48
W49 = W48 + timedelta(days=7)


def play_scenario(client: TestClient, clock: FrozenClock) -> None:
    """Eight cards in the period, one before it; feedback as annotated (seconds after shown)."""
    s = timedelta(seconds=1)
    clock.now = datetime(2026, 11, 16, 9, 0, tzinfo=UTC)  # before the period: never counted
    early = show(client, "pz", [condition("pz", RLS)], [low_ferritin("pz")])
    clock.now += 60 * s  # feedback arrives after the decision it reports
    send(client, accepted(early["lab-check"], clock.now - 50 * s))

    clock.now = W48
    la = show(client, "pa", [condition("pa", RLS)], [low_ferritin("pa")])["lab-check"]
    lb = show(client, "pb", [condition("pb", RLS)], [low_ferritin("pb")])["lab-check"]
    lc = show(client, "pc", [condition("pc", RLS)], [low_ferritin("pc"), low_magnesium("pc")])[
        "lab-check"
    ]
    d = show(
        client,
        "pd",
        [condition("pd", RLS), condition("pd", WEAKNESS, onset="2026-11-24")],
        [],
    )
    ld, nd = d["lab-check"], d["neurology-referral"]
    clock.now = W48 + 3600 * s  # the feedback below is received an hour after the cards
    # la: overridden first, then accepted: the latest feedback (accepted, 600 s) counts.
    send(client, overridden(la, W48 + 60 * s, "will-reassess"))
    send(client, accepted(la, W48 + 600 * s))
    send(
        client,
        overridden(lb, W48 + 120 * s, "already-addressed"),  # 120 s
        accepted(lc, W48 + 30 * s),  # 30 s
        overridden(ld, W48 + 300 * s, "already-addressed"),  # 300 s
        accepted(nd, W48 + 90 * s),  # 90 s
    )

    clock.now = W49
    le = show(client, "pe", [condition("pe", RLS)], [low_ferritin("pe")])["lab-check"]
    f = show(
        client,
        "pf",
        [condition("pf", RLS), condition("pf", WEAKNESS, onset="2026-12-01")],
        [],
    )
    lf = f["lab-check"]
    assert "neurology-referral" in f  # shown, never answered
    clock.now = W49 + 7200 * s
    send(
        client,
        overridden(le, W49 + 45 * s, "patient-declined"),  # 45 s
        overridden(lf, W49 + 3600 * s, None),  # 3600 s, no reason given
        {  # feedback on a card this service never showed: ignored
            "card": str(uuid.uuid4()),
            "outcome": "accepted",
            "acceptedSuggestions": [{"id": "x"}],
            "outcomeTimestamp": W49.isoformat(),
        },
    )


def rule_row(topic: dict[str, Any], rule_id: str) -> dict[str, Any]:
    rows = [r for r in topic["rules"] if r["ruleId"] == rule_id]
    assert len(rows) == 1, [r["rule"] for r in topic["rules"]]
    row: dict[str, Any] = rows[0]
    return row


def weekly(numbers: dict[str, Any]) -> list[tuple[str, int, int, int, float | None]]:
    return [
        (w["week"], w["shown"], w["accepted"], w["overridden"], w["acceptanceRate"])
        for w in numbers["weekly"]
    ]


def numbers(n: dict[str, Any]) -> tuple[Any, ...]:
    return (
        n["shown"],
        n["accepted"],
        n["overridden"],
        n["noFeedback"],
        n["acceptanceRate"],
        n["decided"],
        n["medianSecondsToDecision"],
        [(r["code"], r["count"]) for r in n["topOverrideReasons"]],
    )


def enabled(app_factory: Callable[..., FastAPI], database_url: str, **kw: Any) -> FastAPI:
    return app_factory(database_url, analytics_enabled=True, **kw)


@pytest.fixture
def report_client(
    app_factory: Callable[..., FastAPI], database_url: str, clock: FrozenClock
) -> Iterator[TestClient]:
    with TestClient(enabled(app_factory, database_url)) as client:
        play_scenario(client, clock)
        yield client


# --- the numbers --------------------------------------------------------------------------------


def test_report_counts_exactly_what_was_shown_and_answered(report_client: TestClient) -> None:
    response = report_client.get(URL, params=PERIOD)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    data = response.json()
    assert data["period"] == {
        "from": "2026-11-23",
        "to": "2026-12-07",
        "toExclusive": True,
        "days": 14,
    }
    assert [w["week"] for w in data["weeks"]] == ["2026-W48", "2026-W49"]

    # 8 cards; accepted la lc nd; overridden lb ld le lf; nf unanswered.
    # Decision times 600 120 30 300 90 45 3600 → median 120; the "will-reassess" was superseded.
    reasons = [("already-addressed", 2), ("patient-declined", 1), (None, 1)]
    assert numbers(data["total"]) == (8, 3, 4, 1, 0.375, 7, 120.0, reasons)
    assert weekly(data["total"]) == [
        ("2026-W48", 5, 3, 2, 0.6),
        ("2026-W49", 3, 0, 2, 0.0),
    ]

    topics = {t["topic"]: t for t in data["topics"]}
    assert list(topics) == ["lab-check", "neurology-referral"]  # most cards first
    lab_check, neurology = topics["lab-check"], topics["neurology-referral"]
    # Lab cards la lb lc ld le lf: times 600 120 30 300 45 3600 → median (120 + 300) / 2.
    assert numbers(lab_check) == (6, 2, 4, 0, 0.3333, 6, 210.0, reasons)
    assert numbers(neurology) == (2, 1, 0, 1, 0.5, 1, 90.0, [])
    assert weekly(neurology) == [("2026-W48", 1, 1, 0, 1.0), ("2026-W49", 1, 0, 0, 0.0)]

    # Every lab card carries rls-iron-studies: the rule's numbers are the topic's.
    studies = rule_row(lab_check, "rls-iron-studies")
    assert studies["rule"] == f"rls-iron-studies@{studies['version']}"
    assert numbers(studies) == numbers(lab_check)
    assert weekly(studies) == [("2026-W48", 4, 2, 2, 0.5), ("2026-W49", 2, 0, 2, 0.0)]
    # Only lc had low magnesium: that card counts for low-magnesium too (and once in the topic).
    assert numbers(rule_row(lab_check, "low-magnesium")) == (1, 1, 0, 0, 1.0, 1, 30.0, [])
    assert weekly(rule_row(lab_check, "low-magnesium")) == [
        ("2026-W48", 1, 1, 0, 1.0),
        ("2026-W49", 0, 0, 0, None),
    ]
    assert sum(r["shown"] for r in lab_check["rules"]) > lab_check["shown"]
    assert numbers(rule_row(neurology, "neuro-red-flag")) == numbers(neurology)
    # No PHI in the report: no patient ids, no comments.
    for pid in ("pa", "pb", "pc", "pd", "pe", "pf", "pz"):
        assert f'"{pid}"' not in response.text and f"Patient/{pid}" not in response.text


def test_the_period_is_half_open_and_shown_time_decides(report_client: TestClient) -> None:
    week_48 = report_client.get(URL, params={"from": "2026-11-23", "to": "2026-11-30"}).json()
    assert numbers(week_48["total"])[:5] == (5, 3, 2, 0, 0.6)
    before = report_client.get(URL, params={"from": "2026-11-16", "to": "2026-11-23"}).json()
    assert numbers(before["total"])[:3] == (1, 1, 0)  # the early card, answered
    # Ending on the day the W49 cards were shown leaves them out; the next day includes them.
    upto = report_client.get(URL, params={"from": "2026-11-23", "to": W49.date().isoformat()})
    assert upto.json()["total"]["shown"] == 5
    nothing = report_client.get(URL, params={"from": "2027-01-04", "to": "2027-01-11"}).json()
    assert numbers(nothing["total"]) == (0, 0, 0, 0, None, 0, None, [])
    assert nothing["topics"] == []


def test_csv_has_the_same_numbers(report_client: TestClient) -> None:
    data = report_client.get(URL, params=PERIOD).json()
    response = report_client.get(URL, params={**PERIOD, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert rows[0]["level"] == "total"

    def as_numbers(row: dict[str, str]) -> tuple[Any, ...]:
        reasons = []
        for i in (1, 2, 3):
            if row[f"override_reason_{i}"]:
                code = row[f"override_reason_{i}"]
                reasons.append(
                    (
                        None if code == analytics.NO_REASON else code,
                        int(row[f"override_reason_{i}_count"]),
                    )
                )
        rate = float(row["acceptance_rate"]) if row["acceptance_rate"] else None
        median = (
            float(row["median_seconds_to_decision"]) if row["median_seconds_to_decision"] else None
        )
        counts = [int(row[k]) for k in ("shown", "accepted", "overridden", "no_feedback")]
        return (*counts, rate, int(row["decided"]), median, reasons)

    summary = {(r["level"], r["topic"], r["rule"]): r for r in rows if not r["week"]}
    assert as_numbers(summary[("total", "", "")]) == numbers(data["total"])
    expected_keys = {("total", "", "")}
    for topic in data["topics"]:
        expected_keys.add(("topic", topic["topic"], ""))
        assert as_numbers(summary[("topic", topic["topic"], "")]) == numbers(topic)
        for rule in topic["rules"]:
            expected_keys.add(("rule", topic["topic"], rule["rule"]))
            assert as_numbers(summary[("rule", topic["topic"], rule["rule"])]) == numbers(rule)
    assert set(summary) == expected_keys

    weeks = [r for r in rows if r["level"] == "total" and r["week"]]
    assert [
        (
            r["week"],
            int(r["shown"]),
            int(r["accepted"]),
            int(r["overridden"]),
            float(r["acceptance_rate"]),
        )
        for r in weeks
    ] == weekly(data["total"])


def test_cli_prints_the_same_json_and_csv(
    report_client: TestClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = report_client.get(URL, params=PERIOD)
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    capsys.readouterr()
    assert cli_main(["analytics", "--from", PERIOD["from"], "--to", PERIOD["to"]]) == 0
    assert json.loads(capsys.readouterr().out) == api.json()
    args = ["analytics", "--from", PERIOD["from"], "--to", PERIOD["to"], "--format", "csv"]
    assert cli_main(args) == 0
    api_csv = report_client.get(URL, params={**PERIOD, "format": "csv"}).text
    assert capsys.readouterr().out == api_csv


def test_cli_chart_is_a_png_and_an_html_page(
    report_client: TestClient,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("CDS_DATABASE_URL", database_url)
    png = tmp_path / "acceptance.png"
    period = ["--from", PERIOD["from"], "--to", PERIOD["to"]]
    assert cli_main(["analytics", *period, "--chart", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 30_000  # a drawn chart, not an empty canvas
    assert "chart written to" in capsys.readouterr().err
    page = tmp_path / "acceptance.html"
    assert cli_main(["analytics", *period, "--chart", str(page)]) == 0
    text = page.read_text()
    assert "<svg" in text and "rls-iron-studies@" in text and "<table>" in text


def test_cli_without_matplotlib_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert cli_main(["analytics", "--chart", str(tmp_path / "c.png")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "pip install" in err and "[report]" in err
    assert not (tmp_path / "c.png").exists()


def test_cli_errors_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["analytics", "--from", "2026-13-01"]) == 1
    assert "YYYY-MM-DD" in capsys.readouterr().err
    missing = tmp_path / "nope.db"
    monkeypatch.setenv("CDS_DATABASE_URL", f"sqlite+aiosqlite:///{missing}")
    assert cli_main(["analytics"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "migrate" in err
    assert not missing.exists()  # a report never creates an empty database
    unmigrated = tmp_path / "empty.db"
    unmigrated.touch()
    secret_url = f"sqlite+aiosqlite:///{unmigrated}"
    monkeypatch.setenv("CDS_DATABASE_URL", secret_url)
    assert cli_main(["analytics"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "migrate" in err
    assert secret_url not in err


# --- switching it on, protecting it, refusing bad requests --------------------------------------


def test_off_by_default_is_a_404_operation_outcome(client: TestClient) -> None:
    response = client.get(URL, params=PERIOD)
    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


def test_admin_token_is_required_when_set(
    app_factory: Callable[..., FastAPI], database_url: str
) -> None:
    secret = "s3cret-admin-token-for-tests"
    with TestClient(enabled(app_factory, database_url, admin_token=secret)) as client:
        refused = [
            client.get(URL, params=PERIOD),
            client.get(URL, params=PERIOD, headers={"Authorization": "Bearer wrong"}),
            client.get(URL, params=PERIOD, headers={"Authorization": f"Basic {secret}"}),
            client.get(URL, params=PERIOD, headers={"Authorization": f"Bearer {secret}x"}),
        ]
        for response in refused:
            assert response.status_code == 401
            assert response.json()["resourceType"] == "OperationOutcome"
            assert secret not in response.text
        ok = client.get(URL, params=PERIOD, headers={"Authorization": f"Bearer {secret}"})
        assert ok.status_code == 200
        assert ok.json()["total"]["shown"] == 0


def test_disabled_wins_over_the_admin_token(app_factory: Callable[..., FastAPI]) -> None:
    with TestClient(app_factory(admin_token="t0ken-t0ken")) as client:
        response = client.get(URL, headers={"Authorization": "Bearer t0ken-t0ken"})
        assert response.status_code == 404


BASE = "http://testserver"
ISS = "https://ehr.example.com"


def test_without_admin_token_it_needs_the_hooks_jwt(
    app_factory: Callable[..., FastAPI], tmp_path: Path
) -> None:
    key = ec_key()
    registry = issuers_file(tmp_path, issuer(ISS, key))
    app = app_factory(trusted_issuers_file=registry, public_base_url=BASE, analytics_enabled=True)
    token = signed_token(key, ISS, BASE + URL)
    with TestClient(app) as client:
        assert client.get(URL).status_code == 401
        response = client.get(URL, headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    "params",
    [
        {"from": "2026-11-31", "to": "2026-12-07"},
        {"from": "23/11/2026", "to": "2026-12-07"},
        {"from": "2026-11-23T00:00", "to": "2026-12-07"},
        {"from": "2026-12-07", "to": "2026-12-07"},
        {"from": "2026-12-08", "to": "2026-12-07"},
        {"from": "2025-01-01", "to": "2026-12-07"},
        {"from": "2026-11-23", "to": "2026-12-07", "format": "xml"},
    ],
)
def test_bad_dates_and_formats_are_400s(
    app_factory: Callable[..., FastAPI], params: dict[str, str]
) -> None:
    with TestClient(app_factory(analytics_enabled=True)) as client:
        response = client.get(URL, params=params)
        assert response.status_code == 400, params
        assert response.json()["resourceType"] == "OperationOutcome"


def test_default_period_is_the_twelve_weeks_up_to_today(
    app_factory: Callable[..., FastAPI], clock: FrozenClock
) -> None:
    with TestClient(app_factory(analytics_enabled=True)) as client:
        period = client.get(URL).json()["period"]
    today = clock.now.date()
    assert period["to"] == (today + timedelta(days=1)).isoformat()
    assert period["days"] == 84


# --- the pure parts -----------------------------------------------------------------------------


def test_aggregate_counts_a_card_once_per_rule_and_once_per_topic() -> None:
    shown = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    rows = [
        analytics.CardRow("lab-check", "a@1,b@1", shown, "accepted", shown + timedelta(seconds=4)),
        analytics.CardRow(
            "lab-check", "a@1", shown, "overridden", shown + timedelta(seconds=8), "x"
        ),
        analytics.CardRow("lab-check", "b@1,b@1", shown),  # a rule listed twice counts once
        # The EHR's clock is a little behind: a negative time counts as 0.
        analytics.CardRow("other", "c@2", shown, "overridden", shown - timedelta(seconds=3), "y"),
    ]
    report = analytics.aggregate(rows, date(2026, 11, 23), date(2026, 11, 30))
    topic = report.topics["lab-check"]
    assert (topic.shown, topic.accepted, topic.overridden) == (3, 1, 1)
    assert (topic.rules["a@1"].shown, topic.rules["b@1"].shown) == (2, 2)
    assert topic.median_seconds == 6.0
    assert report.total.median_seconds == 4.0  # 4, 8, 0
    assert report.topics["other"].top_reasons() == [("y", 1)]
    assert report.total.top_reasons() == [("x", 1), ("y", 1)]


def test_csv_neutralises_spreadsheet_formulas() -> None:
    shown = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
    rows = [analytics.CardRow("t", "r@1", shown, "overridden", shown, "=HYPERLINK(1)")]
    text = analytics.render_csv(analytics.aggregate(rows, date(2026, 11, 23), date(2026, 11, 24)))
    assert "'=HYPERLINK(1)" in text
    assert ",=HYPERLINK" not in text
