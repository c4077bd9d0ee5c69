"""Feedback you can trust (issue 14): each observed defect, through HTTP with real JWTs from two
issuers, on SQLite and PostgreSQL; and a property test over arbitrary feedback sequences.

Two EHRs (issuers A and B) call the service for the *same patient id*. Cards are made by real
hook calls and feedback goes through the real feedback endpoint, signed by the issuer's key.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, event, text

from service import metrics
from service.config import REPO_ROOT, Settings
from tests.conftest import FrozenClock
from tests.factories import (
    LOCAL,
    RLS,
    WEAKNESS,
    cards_by_topic,
    condition,
    ec_key,
    feedback_item,
    ferritin,
    issuer,
    issuers_file,
    patient_view,
    signed_token,
)

BASE = "http://testserver"
PV = "/cds-services/sleep-movement-patient-view"
PV_ID = "sleep-movement-patient-view"
OS = "/cds-services/sleep-movement-order-select"
OSIGN = "/cds-services/sleep-movement-order-sign"
A, B = "https://ehr-a.example.org", "https://ehr-b.example.org"
C = "https://ehr-c.example.org"  # sends no feedback in the property test: its view is fixed
KEYS = {iss: ec_key() for iss in (A, B, C)}


def token(iss: str, path: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {signed_token(KEYS[iss], iss, BASE + path, **claims)}"}


def registry(tmp_path: Path) -> Path:
    return issuers_file(tmp_path, *(issuer(iss, key) for iss, key in KEYS.items()))


@pytest.fixture
def two_ehrs(
    app_factory: Callable[..., FastAPI], database_url: str, tmp_path: Path
) -> Iterator[TestClient]:
    app = app_factory(
        database_url,
        trusted_issuers_file=registry(tmp_path),
        public_base_url=BASE,
        analytics_enabled=True,
        admin_token="admin-token-for-tests",
        feedback_confirm_wait_s=0.0,
    )
    with TestClient(app) as client:
        yield client


def red_flag_record(pid: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """RLS with low ferritin and new weakness: a critical neurology card and a lab card."""
    return [condition(pid, RLS), condition(pid, WEAKNESS, onset="2026-11-24")], [ferritin(pid)]


def view(
    client: TestClient,
    iss: str,
    pid: str,
    conditions: list[dict[str, Any]] | None = None,
    labs: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """One patient-view call by issuer ``iss``; the cards by topic."""
    if conditions is None:
        conditions, labs = red_flag_record(pid)
    body = patient_view(pid, conditions=conditions, observations=labs or [])
    return cards_by_topic(client.post(PV, json=body, headers=token(iss, PV)))


def rules_of(card: dict[str, Any] | None) -> list[str]:
    return re.findall(r"\(rule ([^ ]+) v", card["detail"]) if card else []


def send(client: TestClient, iss: str, *items: dict[str, Any], path: str = PV) -> Any:
    return client.post(
        f"{path}/feedback", json={"feedback": list(items)}, headers=token(iss, f"{path}/feedback")
    )


def override(
    card: dict[str, Any], when: str, reason: str = "not-clinically-relevant"
) -> dict[str, Any]:
    return feedback_item(card["uuid"], when=when, reason=reason)


def accept(card: dict[str, Any], when: str, index: int = 0) -> dict[str, Any]:
    suggestion = card["suggestions"][index]["uuid"]
    return feedback_item(card["uuid"], outcome="accepted", when=when, suggestion=suggestion)


def feedback_rows(database_url: str) -> int:
    engine = create_engine(Settings(database_url=database_url).sync_database_url())
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM feedback_item")).scalar_one())
    finally:
        engine.dispose()


# --- 1 and 2: server time ------------------------------------------------------------------


def test_1_far_future_and_far_past_timestamps_are_400s_and_hooks_keep_answering(
    two_ehrs: TestClient, clock: FrozenClock, database_url: str
) -> None:
    card = view(two_ehrs, A, "p1")["lab-check"]
    for when, why in (
        ("9999-12-30T00:00:00Z", "after the service's clock"),
        ("0001-01-01T00:00:00Z", "before the card was issued"),
        ((clock.now + timedelta(minutes=6)).isoformat(), "after the service's clock"),
        ((clock.now - timedelta(minutes=6)).isoformat(), "before the card was issued"),
    ):
        response = send(two_ehrs, A, override(card, when))
        assert response.status_code == 400, when
        assert f"feedback.0.outcomeTimestamp: more than 5 minutes {why}" in response.text
    assert feedback_rows(database_url) == 0
    assert "lab-check" in view(two_ehrs, A, "p1")  # 200, nothing hidden


def test_2_future_dated_override_hides_a_red_flag_at_most_24h_and_newer_feedback_wins(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    cards = view(two_ehrs, A, "p1")
    red = cards["neurology-referral"]
    assert red["indicator"] == "critical"
    ahead = (clock.now + timedelta(minutes=5)).isoformat()  # the most a client clock may lead
    assert send(two_ehrs, A, override(red, ahead)).status_code == 200
    assert "neurology-referral" not in view(two_ehrs, A, "p1")
    clock.now += timedelta(hours=24)  # 24 h after receipt, not after the client's timestamp
    assert "neurology-referral" in view(two_ehrs, A, "p1")
    # Later genuine feedback replaces earlier feedback on the same rule (the newest received
    # wins, not the newest timestamp): "patient declined" (180 d), then "will reassess" (14 d).
    lab = view(two_ehrs, A, "p1")["lab-check"]
    assert (
        send(two_ehrs, A, override(lab, clock.now.isoformat(), "patient-declined")).status_code
        == 200
    )
    clock.now += timedelta(minutes=1)
    lab_rules = view(two_ehrs, A, "p1").get("lab-check")
    assert lab_rules is None
    hidden_at = clock.now
    # The earlier card is still a real card of this issuer: a second decision on it.
    assert (
        send(two_ehrs, A, override(lab, hidden_at.isoformat(), "will-reassess")).status_code == 200
    )
    clock.now += timedelta(days=15)
    assert "lab-check" in view(two_ehrs, A, "p1")


# --- 3: accepted feedback on a red flag ----------------------------------------------------


def test_3_accepting_refer_to_neurology_hides_the_red_flag_at_most_24h(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    red = view(two_ehrs, A, "p1")["neurology-referral"]
    assert red["suggestions"][0]["label"].startswith("Refer")
    assert send(two_ehrs, A, accept(red, clock.now.isoformat())).status_code == 200
    assert "neurology-referral" not in view(two_ehrs, A, "p1")
    clock.now += timedelta(hours=23, minutes=59)
    assert "neurology-referral" not in view(two_ehrs, A, "p1")
    clock.now += timedelta(minutes=1)
    assert "neurology-referral" in view(two_ehrs, A, "p1")  # no referral exists: back


# --- 4: per rule, not per card ----------------------------------------------------------------


def test_4_accepting_one_suggestion_keeps_the_other_advice_of_the_merged_card(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    lab = view(two_ehrs, A, "p1")["lab-check"]
    assert {"rls-iron-studies", "rls-iron-repletion"} <= set(rules_of(lab))
    assert lab["suggestions"][0]["label"].startswith("Order iron studies")
    assert send(two_ehrs, A, accept(lab, clock.now.isoformat())).status_code == 200
    rebuilt = view(two_ehrs, A, "p1")["lab-check"]
    assert "rls-iron-repletion" in rules_of(rebuilt)
    assert "rls-iron-studies" not in rules_of(rebuilt)
    # Worse evidence (a lower ferritin) brings the held advice back at once.
    worse = view(
        two_ehrs,
        A,
        "p1",
        [condition("p1", RLS), condition("p1", WEAKNESS, onset="2026-11-24")],
        [ferritin("p1"), ferritin("p1", 12, "2026-11-20")],
    )
    assert "rls-iron-repletion" in rules_of(worse["lab-check"])


# --- 5: accepted "remove this draft" ------------------------------------------------------------


def scenario(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REPO_ROOT / "tests" / "scenarios" / name).read_text())
    return data


def drug_call(client: TestClient, iss: str, path: str, hook: str) -> dict[str, dict[str, Any]]:
    data = scenario("order-select-ssri-selected.json")
    context: dict[str, Any] = {
        "patientId": data["patient_id"],
        "userId": "Practitioner/u1",
        "draftOrders": data["draftOrders"],
    }
    if hook == "order-select":
        context["selections"] = data["selections"]
    prefetch = {**data["prefetch"], "medicationRequests": None, "medicationStatements": None}
    body = {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "context": context,
        "prefetch": prefetch,
    }
    response = client.post(path, json=body, headers=token(iss, path))
    assert response.status_code == 200, response.text
    return {c["source"]["topic"]["code"]: c for c in response.json()["cards"]}


def test_5_accepting_remove_the_draft_never_hides_the_warning_while_the_drug_is_still_drafted(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    card = drug_call(two_ehrs, A, OS, "order-select")["medication-review"]
    remove = next(
        i for i, s in enumerate(card["suggestions"]) if s["label"].startswith("Remove this draft")
    )
    assert (
        send(two_ehrs, A, accept(card, clock.now.isoformat(), remove), path=OS).status_code == 200
    )
    # The clinician signs sertraline anyway: the warning shows at order-sign...
    assert "medication-review" in drug_call(two_ehrs, A, OSIGN, "order-sign")
    # ... and at order-select, while the drug is still among the drafts.
    assert "medication-review" in drug_call(two_ehrs, A, OS, "order-select")


# --- 6: scoped to its EHR, and only real cards count ------------------------------------------


def test_6_one_ehrs_feedback_never_changes_what_another_ehr_sees(
    two_ehrs: TestClient, clock: FrozenClock, database_url: str
) -> None:
    mine, theirs = view(two_ehrs, A, "p1"), view(two_ehrs, B, "p1")
    now = clock.now.isoformat()
    assert send(two_ehrs, A, override(mine["lab-check"], now)).status_code == 200
    assert "lab-check" not in view(two_ehrs, A, "p1")
    assert "lab-check" in view(two_ehrs, B, "p1")  # same patient id, other EHR: unchanged
    # B naming A's card, A naming a card never issued, an unknown suggestion id: ignored, and
    # said so; nothing of it is stored.
    before = feedback_rows(database_url)
    counted = metrics.sample("cds_feedback_items_total", service=PV_ID, result="ignored")
    answer = send(two_ehrs, B, override(mine["lab-check"], now))
    assert answer.json() == {
        "stored": 0,
        "duplicates": 0,
        "ignored": [{"item": 0, "card": mine["lab-check"]["uuid"], "reason": "unknown-card"}],
    }
    ghost = {**override(theirs["lab-check"], now), "card": str(uuid.uuid4())}
    fake = {**accept(theirs["lab-check"], now), "acceptedSuggestions": [{"id": "nope"}]}
    answer = send(two_ehrs, B, ghost, fake)
    assert [i["reason"] for i in answer.json()["ignored"]] == ["unknown-card", "unknown-suggestion"]
    assert feedback_rows(database_url) == before
    assert (
        metrics.sample("cds_feedback_items_total", service=PV_ID, result="ignored") == counted + 3
    )
    assert "lab-check" in view(two_ehrs, B, "p1")


def test_6_items_per_request_and_per_issuer_rate_are_bounded(
    app_factory: Callable[..., FastAPI], database_url: str, tmp_path: Path, clock: FrozenClock
) -> None:
    app = app_factory(
        database_url,
        trusted_issuers_file=registry(tmp_path),
        public_base_url=BASE,
        feedback_rate_per_minute=30,
        feedback_confirm_wait_s=0.0,
    )
    with TestClient(app) as client:
        card = view(client, A, "p1")["lab-check"]
        item = override(card, clock.now.isoformat())
        too_many = send(client, A, *[item] * 21)
        assert too_many.status_code == 400 and "at most 20 items" in too_many.text
        assert send(client, A, *[item] * 20).status_code == 200
        assert send(client, A, *[item] * 10).status_code == 200
        throttled = send(client, A, item)
        assert throttled.status_code == 429
        assert throttled.json()["issue"][0]["code"] == "throttled"
        assert (
            send(
                client, B, override(view(client, B, "p1")["lab-check"], clock.now.isoformat())
            ).status_code
            == 200
        )


# --- 7: analytics per issuer --------------------------------------------------------------------


def test_7_analytics_shows_a_hook_jwt_only_its_own_issuers_figures(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    for pid in ("p1", "p2"):
        view(two_ehrs, A, pid)
    b_cards = view(two_ehrs, B, "p3")
    decided = (clock.now + timedelta(seconds=30)).isoformat()
    clock.now += timedelta(minutes=1)
    assert send(two_ehrs, B, override(b_cards["lab-check"], decided)).status_code == 200
    params = {"from": "2026-11-23", "to": "2026-11-30"}
    url = "/analytics/cards"
    mine = two_ehrs.get(url, params=params, headers=token(A, url)).json()["total"]
    theirs = two_ehrs.get(url, params=params, headers=token(B, url)).json()["total"]
    everyone = two_ehrs.get(
        url, params=params, headers={"Authorization": "Bearer admin-token-for-tests"}
    ).json()["total"]
    assert (mine["shown"], mine["overridden"]) == (4, 0)
    assert (theirs["shown"], theirs["overridden"]) == (2, 1)
    assert theirs["medianSecondsToDecision"] == 30.0
    assert (everyone["shown"], everyone["overridden"]) == (6, 1)
    assert two_ehrs.get(url, params=params).status_code == 401


def test_7_a_clamped_timestamp_cannot_skew_the_median_time_to_decision(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    card = view(two_ehrs, A, "p1")["lab-check"]
    clock.now += timedelta(seconds=20)
    # The client's clock runs 4 min fast: its timestamp lies after receipt. The decision is
    # counted at receipt (20 s), not at the client's 260 s.
    ahead = (clock.now + timedelta(minutes=4)).isoformat()
    assert send(two_ehrs, A, override(card, ahead)).status_code == 200
    url = "/analytics/cards"
    total = two_ehrs.get(
        url, params={"from": "2026-11-23", "to": "2026-11-30"}, headers=token(A, url)
    ).json()["total"]
    assert total["medianSecondsToDecision"] == 20.0


# --- 8: cost independent of history -------------------------------------------------------------


def test_8_the_suppression_lookup_never_reads_the_card_history(
    two_ehrs: TestClient, clock: FrozenClock
) -> None:
    card = view(two_ehrs, A, "p1")["lab-check"]
    assert send(two_ehrs, A, override(card, clock.now.isoformat())).status_code == 200
    for _ in range(3):
        view(two_ehrs, A, "p1")
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    db = two_ehrs.app.state.context.db  # type: ignore[attr-defined]
    # The group-commit writer runs on its own engine on SQLite (service/db/batch.py).
    engines = [db.engine.sync_engine, *([db.thread_engine] if db.thread_engine else [])]
    for engine in engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        assert "lab-check" not in view(two_ehrs, A, "p1")
    finally:
        for engine in engines:
            event.remove(engine, "before_cursor_execute", seen)
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert any("suppression" in s for s in reads), statements
    assert not any("card_shown" in s or "feedback_item" in s for s in reads), reads


# --- the property ---------------------------------------------------------------------------


START = datetime(2026, 11, 25, 9, 0, tzinfo=UTC)
ACTIONS = st.lists(
    st.tuples(
        st.sampled_from([A, B]),  # who sends the item
        st.sampled_from(["accepted", "overridden"]),
        st.sampled_from(["a-red", "a-lab", "b-red", "b-lab", "c-red", "ghost"]),
        st.one_of(
            st.integers(min_value=-400, max_value=400).map(lambda s: ("offset", s)),
            st.sampled_from([("raw", "9999-12-30T00:00:00Z"), ("raw", "0001-01-01T00:00:00Z")]),
        ),
        st.sampled_from(["real", "fake"]),
        st.integers(min_value=0, max_value=30 * 60),  # minutes the clock moves on afterwards
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture
def sqlite_two_ehrs(app_factory: Callable[..., FastAPI], tmp_path: Path) -> Iterator[TestClient]:
    app = app_factory(
        trusted_issuers_file=registry(tmp_path),
        public_base_url=BASE,
        feedback_rate_per_minute=100_000,
        feedback_confirm_wait_s=0.0,
    )
    with TestClient(app) as client:
        yield client


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(actions=ACTIONS)
def test_property_red_flags_stay_visible_no_5xx_and_other_ehrs_are_untouched(
    sqlite_two_ehrs: TestClient, clock: FrozenClock, actions: list[Any]
) -> None:
    """Any feedback sequence from EHRs A and B (any outcome, timestamp, card id, suggestion id):
    no 5xx; each EHR's red flag shows again 24 h after the last feedback it sent was received;
    EHR C, which sent nothing, sees exactly what it saw before, throughout."""
    client = sqlite_two_ehrs
    clock.now = START  # each example starts afresh (a new patient id, the weakness still new)
    pid = f"p-{uuid.uuid4().hex[:10]}"
    cards = {iss: view(client, iss, pid) for iss in (A, B, C)}
    c_before = {t: rules_of(c) for t, c in cards[C].items()}
    targets = {
        "a-red": cards[A]["neurology-referral"],
        "a-lab": cards[A]["lab-check"],
        "b-red": cards[B]["neurology-referral"],
        "b-lab": cards[B]["lab-check"],
        "c-red": cards[C]["neurology-referral"],
        "ghost": {**cards[A]["lab-check"], "uuid": str(uuid.uuid4())},
    }
    last_received: dict[str, Any] = {}
    for sender, outcome, target, stamp, suggestion, wait in actions:
        card = targets[target]
        when = (
            (clock.now + timedelta(seconds=stamp[1])).isoformat()
            if stamp[0] == "offset"
            else stamp[1]
        )
        item: dict[str, Any] = {"card": card["uuid"], "outcome": outcome, "outcomeTimestamp": when}
        if outcome == "accepted":
            sid = card["suggestions"][0]["uuid"] if suggestion == "real" else str(uuid.uuid4())
            item["acceptedSuggestions"] = [{"id": sid}]
        else:
            item["overrideReason"] = {
                "reason": {"system": LOCAL, "code": "not-clinically-relevant"}
            }
        response = send(client, sender, item)
        assert response.status_code < 500, response.text
        if response.status_code == 200 and response.json()["stored"]:
            last_received[sender] = clock.now
        for iss in (A, B):
            since = last_received.get(iss)
            if since is None or clock.now >= since + timedelta(hours=24):
                assert "neurology-referral" in view(client, iss, pid), iss
        assert {t: rules_of(c) for t, c in view(client, C, pid).items()} == c_before
        clock.now += timedelta(minutes=wait)
    if last_received:
        clock.now = max(clock.now, *(t + timedelta(hours=24) for t in last_received.values()))
    for iss in (A, B):
        assert "neurology-referral" in view(client, iss, pid)
    assert {t: rules_of(c) for t, c in view(client, C, pid).items()} == c_before


def test_feedback_that_overtakes_the_audit_write_is_still_recognised(
    two_ehrs: TestClient, clock: FrozenClock, database_url: str
) -> None:
    """The audit row is written after the response; feedback may arrive first. The replica that
    issued the card knows it at once (here the audit write never happens at all)."""
    group_commit = two_ehrs.app.state.context.db.group_commit  # type: ignore[attr-defined]
    real_audit = group_commit.audit

    async def never_written(record: Any) -> None:
        raise ConnectionError("audit write lost")

    group_commit.audit = never_written
    try:
        card = view(two_ehrs, A, "p1")["lab-check"]
    finally:
        group_commit.audit = real_audit
    answer = send(two_ehrs, A, override(card, clock.now.isoformat()))
    assert answer.json() == {"stored": 1, "duplicates": 0, "ignored": []}
    assert "lab-check" not in view(two_ehrs, A, "p1")
    # Another issuer cannot use the remembered card either.
    other = send(two_ehrs, B, override(card, clock.now.isoformat()))
    assert other.json()["ignored"][0]["reason"] == "unknown-card"
