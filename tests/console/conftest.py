"""Fixtures for the preview-console browser tests.

A real stack on loopback: SEKMET (the sandbox FHIR server) with the demo patients, this service in
a real uvicorn server (background thread, free port, migrated temporary SQLite), and Debian's
headless Chromium driven by Selenium through Debian's chromedriver. Nothing is downloaded: the
browser and driver paths are fixed, and Selenium Manager is told to stay offline.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn

from service.cli.load import load_bundles
from service.cli.processes import free_port
from service.cli.sekmet import running_sekmet
from service.config import Settings
from service.db.migrate import upgrade_database
from service.demo import demo_patient_files, demo_shift_days
from service.main import create_app

CHROMIUM = Path(os.environ.get("CDS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CDS_TEST_CHROMEDRIVER", "/usr/bin/chromedriver"))
NO_BROWSER = (
    f"no Chromium at {CHROMIUM} or no chromedriver at {CHROMEDRIVER}: "
    "install Debian's packages (apt-get install chromium chromium-driver; .ci/run does)"
)
REPO_ROOT = Path(__file__).resolve().parents[2]
XSS_PATIENT_ID = "console-xss"
# Hostile free text where an EHR's data reaches the screen: patient name, problem text, drug text.
XSS_TEXT = (
    "<img src=x onerror=\"window.__pwned='img'\"> <script>window.__pwned='script'</script> "
    "[click me](javascript:window.__pwned='link') <a href=\"javascript:window.__pwned='a'\">a</a>"
)


def xss_patient_bundle() -> dict[str, Any]:
    """An RLS patient whose name, problem and medication texts carry script and HTML."""
    pid = XSS_PATIENT_ID
    subject = {"reference": f"Patient/{pid}"}

    def entry(resource: dict[str, Any]) -> dict[str, Any]:
        url = f"{resource['resourceType']}/{resource['id']}"
        return {"fullUrl": url, "resource": resource, "request": {"method": "PUT", "url": url}}

    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            entry(
                {
                    "resourceType": "Patient",
                    "id": pid,
                    "name": [{"use": "official", "family": "Xss", "given": [XSS_TEXT]}],
                    "gender": "male",
                    "birthDate": "1970-02-03",
                }
            ),
            entry(
                {
                    "resourceType": "Condition",
                    "id": f"{pid}-rls",
                    "clinicalStatus": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                "code": "active",
                            }
                        ]
                    },
                    "code": {
                        "coding": [{"system": "http://snomed.info/sct", "code": "32914008"}],
                        "text": f"Restless legs {XSS_TEXT}",
                    },
                    "subject": subject,
                    "onsetDateTime": "2026-09-01",
                }
            ),
            entry(
                {
                    "resourceType": "MedicationRequest",
                    "id": f"{pid}-sertraline",
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "36437",
                            }
                        ],
                        "text": f"sertraline {XSS_TEXT}",
                    },
                    "subject": subject,
                    "authoredOn": "2026-06-01",
                }
            ),
            entry(
                {
                    "resourceType": "Observation",
                    "id": f"{pid}-ferritin",
                    "status": "final",
                    "category": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/"
                                    "observation-category",
                                    "code": "laboratory",
                                }
                            ]
                        }
                    ],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "2276-4"}]},
                    "subject": subject,
                    "effectiveDateTime": "2026-11-10T08:30:00Z",
                    "valueQuantity": {
                        "value": 30,
                        "unit": "ng/mL",
                        "system": "http://unitsofmeasure.org",
                        "code": "ng/mL",
                    },
                }
            ),
        ],
    }


def browser_missing() -> bool:
    return not (CHROMIUM.is_file() and CHROMEDRIVER.is_file())


@dataclass(frozen=True)
class ConsoleStack:
    base_url: str  # this service, e.g. http://127.0.0.1:41234
    fhir_url: str  # SEKMET base
    database_file: Path
    settings: Settings


class _ThreadedServer(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@pytest.fixture(scope="module")
def console_fhir() -> Iterator[str]:
    """SEKMET with the demo patients (dates shifted, as ``make sandbox`` does) and the XSS one."""
    if browser_missing():
        pytest.skip(NO_BROWSER)
    with (
        running_sekmet(REPO_ROOT) as fhir,
        tempfile.TemporaryDirectory(prefix="console-fhir-") as tmp,
    ):
        load_bundles(fhir.base_url, demo_patient_files(), shift_days=demo_shift_days())
        xss_bundle = Path(tmp) / "xss-patient.json"
        xss_bundle.write_bytes(orjson.dumps(xss_patient_bundle()))
        load_bundles(fhir.base_url, [xss_bundle], shift_days=demo_shift_days())
        yield fhir.base_url


@pytest.fixture
def console_stack(console_fhir: str, tmp_path: Path) -> Iterator[ConsoleStack]:
    """This service under uvicorn on a free loopback port, with a fresh migrated SQLite each test
    (feedback from one test never suppresses another test's cards)."""
    db_file = tmp_path / "cds.db"
    port = free_port()
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{db_file}",
        host="127.0.0.1",
        port=port,
        public_base_url=f"http://127.0.0.1:{port}",
    )
    upgrade_database(settings)
    app = create_app(settings, configure_logging=False)
    server = _ThreadedServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
    thread.start()
    give_up = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > give_up:
            pytest.fail("the service did not start under uvicorn")
        time.sleep(0.05)
    try:
        yield ConsoleStack(f"http://127.0.0.1:{port}", console_fhir, db_file, settings)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def api(console_stack: ConsoleStack) -> Iterator[httpx.Client]:
    """Direct calls to the service, as the EHR would make them (the comparison baseline)."""
    with httpx.Client(base_url=console_stack.base_url, trust_env=False, timeout=20) as client:
        yield client


def _chrome_options(user_data_dir: str) -> Any:
    from selenium.webdriver.chrome.options import Options

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-extensions",
        "--disable-default-apps",
        "--hide-scrollbars",
        "--force-color-profile=srgb",
        "--window-size=1280,800",
        f"--user-data-dir={user_data_dir}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return options


@pytest.fixture
def browser(console_stack: ConsoleStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh headless Chromium (own profile directory) at a 1280x800 viewport."""
    selenium = pytest.importorskip("selenium", reason="selenium is not installed (test extra)")
    del selenium
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Never let Selenium Manager look for (or download) a browser or driver.
    monkeypatch.setenv("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="console-chromium-")
    driver = webdriver.Chrome(
        service=Service(executable_path=str(CHROMEDRIVER)), options=_chrome_options(profile)
    )
    try:
        set_viewport(driver, 1280, 800)
        driver.set_script_timeout(20)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def set_viewport(driver: Any, width: int, height: int) -> None:
    """Exact CSS viewport size (a window size would include browser chrome)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
