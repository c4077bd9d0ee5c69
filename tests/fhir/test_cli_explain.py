"""``sleep-cds explain`` against SEKMET (demo patients) and the real app under uvicorn in a thread.

The demo bundles are loaded unshifted and the app's clock is the ``clock`` fixture (the demo
anchor, 2026-11-25), so the outcomes are those the demo README lists.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import uvicorn
from fastapi import FastAPI

import service.demo
from service.cli.explain import cmd_explain, format_explain
from service.cli.load import load_bundles
from service.cli.main import build_parser
from service.cli.main import main as sleep_cds
from service.config import Settings
from service.demo import demo_patient_files
from service.knowledge.base import load_knowledge
from tests.conftest import PATIENT_VIEW_KEYS
from tests.fixtures.bad_fhir import closed_port_url

pytestmark = pytest.mark.integration

DRAFTS = Path(service.demo.__file__).resolve().parent / "drafts"
PV = "sleep-movement-patient-view"
KB = load_knowledge(Settings().fhir_profiles_dir, Settings().knowledge_dir)
# Rule counts follow the knowledge base: adding a rule must not break these tests.
RULES = {hook: len(KB.rules_for(hook)) for hook in ("patient-view", "order-select", "order-sign")}
PAEDIATRIC_IRON = next(r for r in KB.rules if r.id == "pediatric-rls-iron")


class ThreadedApp:
    """The app under a real uvicorn server in a daemon thread (the CLI needs a socket)."""

    def __init__(self, app: FastAPI) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        give_up = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > give_up or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def demo_fhir(fhir_server: str) -> str:
    load_bundles(fhir_server, demo_patient_files())
    return fhir_server


@pytest.fixture
def service_url(app_factory: Callable[..., FastAPI]) -> Iterator[str]:
    with ThreadedApp(app_factory()) as url:
        yield url


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = sleep_cds(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_explain_is_a_sleep_cds_subcommand() -> None:
    args = build_parser().parse_args(
        ["explain", "order-select", "--patient", "p1", "--fhir-server", "http://x/fhir"]
    )
    assert args.func is cmd_explain
    assert (args.hook, args.prefetch, args.json, args.status) == ("order-select", True, False, None)


def test_patient_view_rules_are_explained(
    demo_fhir: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["patient-view", "--patient", "demo-06", "--fhir-server", demo_fhir]
    code, out, err = _run(capsys, *argv, "--service", service_url)
    assert code == 0, err
    assert f"== {PV} (patient-view, explain): HTTP 200 in " in out
    assert "   prefetch sent: patient, conditions, observations, symptoms, " in out
    assert "   cards (1):" in out
    assert "[WARNING] sleep-study-referral: Leg kicks in sleep with daytime sleepiness" in out
    not_fired = RULES["patient-view"] - 3
    assert f"   rules: 2 fired, 0 not-evaluable, {not_fired} not-fired, 1 not-applicable" in out
    fired = [line for line in out.splitlines() if line.startswith("   FIRED")]
    assert [line.split()[1].split("@")[0] for line in fired] == [
        "osa-evaluation",
        "plmd-polysomnography",
    ]
    assert "(sleep-study-referral, warning)  Suspected periodic limb movement disorder" in out
    assert "       evidence: Epworth Sleepiness Scale 14 points on 2026-11-12" in out
    assert "       trace: lab Epworth Sleepiness Scale > 10 {score}: true" in out
    kicks = [line for line in out.splitlines() if line.startswith("       evidence: Sleep journal")]
    assert any("kicks" in line.lower() and "5 of 7 nights" in line for line in kicks), kicks
    assert "\\>" not in out  # Markdown escapes of the card detail are undone for the terminal
    assert out.rstrip().endswith(
        f"   NOT-APPLICABLE  pediatric-rls-iron@{PAEDIATRIC_IRON.version}  (lab-check)  Child with "
        "restless legs and ferritin under 50 ng/mL\n       reason: population"
    )
    assert "order-sign" not in out  # only the patient-view service was explained


def test_no_prefetch_json_shows_the_service_s_own_fetches(
    demo_fhir: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["patient-view", "--patient", "demo-05", "--fhir-server", demo_fhir]
    code, out, err = _run(capsys, *argv, "--service", service_url, "--no-prefetch", "--json")
    assert code == 0, err
    answer: dict[str, Any] = orjson.loads(out)[PV]
    assert set(answer["fetches"]) == set(PATIENT_VIEW_KEYS)
    assert set(answer["fetches"].values()) == {"ok"}
    status = {r["rule"].split("@")[0]: r for r in answer["rules"]}
    assert status["rls-iron-studies"]["status"] == "fired"
    assert "No Ferritin result on file" in status["rls-iron-studies"]["evidence"]
    # RLS without cramps, diuretics or PPIs: electrolytes are not part of the RLS work-up.
    assert status["missing-key-labs"]["status"] == "not-fired"
    assert status["abnormal-tsh"]["status"] == "not-fired"
    assert status["abnormal-tsh"]["reason"] == "conditions not met"
    assert [c["indicator"] for c in answer["cards"]] == ["warning"]


def test_status_filter_and_no_trace(
    demo_fhir: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["patient-view", "--patient", "demo-09", "--fhir-server", demo_fhir, "--no-trace"]
    code, out, err = _run(capsys, *argv, "--service", service_url, "--status", "not-applicable")
    assert code == 0, err
    assert "   cards: none" in out
    total = RULES["patient-view"]
    assert f"   rules: 0 fired, 0 not-evaluable, 0 not-fired, {total} not-applicable" in out
    heads = [line for line in out.splitlines() if line.startswith("   NOT-")]
    assert len(heads) == total and all(h.startswith("   NOT-APPLICABLE") for h in heads)
    # every rule but the paediatric one (age) is stopped by the complaint gate
    assert out.count("reason: no sleep-movement complaint in the record") == total - 1
    assert "trace:" not in out


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_order_hooks_with_a_draft(
    hook: str, demo_fhir: str, service_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    draft = str(DRAFTS / "demo-06-home-sleep-test.json")
    argv = [hook, "--patient", "demo-06", "--fhir-server", demo_fhir, "--draft", draft]
    code, out, err = _run(capsys, *argv, "--service", service_url, "--status", "fired")
    assert code == 0, err
    assert (
        "   FIRED           draft-home-test-for-plmd@1.0.0  (sleep-study-referral, warning)" in out
    )
    assert "       evidence: Draft order: Home sleep apnea test" in out
    assert "NOT-FIRED" not in out
    not_fired = RULES[hook] - 1
    assert f"   rules: 1 fired, 0 not-evaluable, {not_fired} not-fired, 0 not-applicable" in out


def test_explain_endpoint_disabled_is_one_line(
    demo_fhir: str, app_factory: Callable[..., FastAPI], capsys: pytest.CaptureFixture[str]
) -> None:
    with ThreadedApp(app_factory(explain_enabled=False)) as url:
        argv = ["patient-view", "--patient", "demo-01", "--fhir-server", demo_fhir]
        code, out, err = _run(capsys, *argv, "--service", url, "--no-prefetch")
    assert code == 1
    assert out == ""
    assert err == (
        f"sleep-cds: POST {url}/cds-services/{PV}/explain -> HTTP 404: The explain endpoint is "
        "not enabled (the explain endpoint is on in local mode; elsewhere set "
        "CDS_EXPLAIN_ENABLED=true)\n"
    )


def test_usage_errors_are_one_line(demo_fhir: str, capsys: pytest.CaptureFixture[str]) -> None:
    down = closed_port_url().removesuffix("/fhir")
    code, _, err = _run(
        capsys,
        "patient-view",
        "--patient",
        "demo-01",
        "--fhir-server",
        demo_fhir,
        "--service",
        down,
    )
    assert code == 1
    assert (
        err
        == f"sleep-cds: GET {down}/cds-services failed: connection refused or host unreachable\n"
    )
    code, _, err = _run(capsys, "patient-view", "--patient", "bad id!", "--fhir-server", demo_fhir)
    assert code == 1 and err.startswith("sleep-cds: --patient 'bad id!' is not a FHIR id")
    code, _, err = _run(capsys, "order-sign", "--patient", "demo-01", "--fhir-server", demo_fhir)
    assert code == 1 and err == "sleep-cds: order-sign needs at least one --draft FILE\n"


def test_format_explain_handles_a_sparse_answer() -> None:
    rule = {"rule": "x@1", "status": "not-evaluable", "evidence": [r"a \>= 2 \_b\_ \\"]}
    text = format_explain({"rules": [rule]})
    assert "   cards: none" in text
    assert "   NOT-EVALUABLE   x@1  (?)  " in text
    assert "       evidence: a >= 2 _b_ \\\n" in text + "\n"
