"""The journal app launched for real: the SMART App Launcher (a simulated EHR) in front of SEKMET,
this service under uvicorn, headless Chromium in between.

EHR launch, standalone launch, consent denied, token expiry, a refused FHIR server, and the round
trip the app exists for: a night entered in the app is stored on the EHR's FHIR server, and a
``patient-view`` call (prefetch and FHIR fallback) then gives the card the rules promise.

``CDS_UPDATE_SCREENSHOT=1`` also writes the README screenshots (docs/journal-*.png).
"""

from __future__ import annotations

import importlib.util
import os
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from service.cli.launcher import Launcher, launch_code, running_launcher
from service.config import REPO_ROOT
from tests.console.conftest import NO_BROWSER, ConsoleStack, browser_missing, set_viewport

HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(browser_missing(), reason=NO_BROWSER),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (test extra)"),
]

if HAVE_SELENIUM:
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

JOURNAL = "https://sleep-cds.example.org/fhir/Questionnaire/sleep-journal"
SERVICE = "sleep-movement-patient-view"
SCREENSHOTS = os.environ.get("CDS_UPDATE_SCREENSHOT") == "1"


# --- helpers ------------------------------------------------------------------------------------


def new_patient(fhir_url: str) -> str:
    """An adult with nothing on record, so only what the app writes can change the cards."""
    pid = f"journal-{uuid.uuid4().hex[:12]}"
    patient = {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": "Journal", "given": ["Jordan"]}],
        "gender": "female",
        "birthDate": "1985-04-12",
    }
    with httpx.Client(trust_env=False, timeout=20) as http:
        http.put(f"{fhir_url}/Patient/{pid}", json=patient).raise_for_status()
    return pid


def settled(driver: WebDriver, timeout: float = 30) -> str:
    """Wait until the app is ready or has said what went wrong; return the state."""

    def state(d: WebDriver) -> str | None:
        try:  # one script: the page may navigate between two separate reads
            path, value = d.execute_script(
                "return [location.pathname, document.body && document.body.dataset.state]"
            )
        except WebDriverException:
            return None
        if path not in ("/journal/", "/journal/launch"):
            return None
        return value if value in ("ready", "error") else None

    try:
        result: str | None = WebDriverWait(driver, timeout, poll_frequency=0.1).until(state)
    except TimeoutException:
        raise AssertionError(f"the app did not settle: {driver.current_url}") from None
    assert result is not None  # until() returns only a truthy value
    return result


def advice_text(driver: WebDriver) -> str:
    """The advice section's text (read in one step: the section is re-rendered as data arrive)."""
    return str(driver.execute_script("return document.getElementById('advice').textContent"))


def status(driver: WebDriver) -> str:
    return str(driver.find_element(By.ID, "status").text)


def smart_state(driver: WebDriver) -> dict[str, Any]:
    state: dict[str, Any] = driver.execute_script(
        "var k = JSON.parse(sessionStorage.getItem('SMART_KEY') || 'null');"
        "return k ? JSON.parse(sessionStorage.getItem(k)) : null;"
    )
    return state


def ehr_launch(driver: WebDriver, stack: ConsoleStack, launcher: Launcher, launch: str) -> str:
    driver.get(launcher.ehr_launch_url(f"{stack.base_url}/journal/launch", launch))
    return settled(driver)


def enter_night(driver: WebDriver, answers: dict[str, str]) -> None:
    """Tap the answers in, as a patient would on a phone."""
    for link_id, value in answers.items():
        box = driver.find_element(By.CSS_SELECTOR, f"fieldset[data-link-id='{link_id}']")
        if value in ("Yes", "No"):
            box.find_element(By.XPATH, f".//label[span='{value}']").click()
        else:
            control = box.find_element(By.CSS_SELECTOR, "input")
            control.clear()
            control.send_keys(value)
    driver.find_element(By.ID, "save").click()
    WebDriverWait(driver, 30, poll_frequency=0.1).until(
        lambda d: (
            d.find_element(By.TAG_NAME, "body").get_attribute("data-saved")
            or d.find_element(By.ID, "status").get_attribute("class") == "error"
        )
    )


def journal_entries(fhir_url: str, pid: str) -> list[dict[str, Any]]:
    with httpx.Client(trust_env=False, timeout=20) as http:
        bundle = http.get(
            f"{fhir_url}/QuestionnaireResponse", params={"patient": pid, "questionnaire": JOURNAL}
        ).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def patient_view(api: httpx.Client, pid: str, fhir_url: str, *, prefetch: bool) -> list[str]:
    """Card summaries of a hook call: with the EHR's prefetch, or fetched from the FHIR server."""
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/example", "patientId": pid},
    }
    if prefetch:
        discovery = api.get("/cds-services").json()
        templates = next(s for s in discovery["services"] if s["id"] == SERVICE)["prefetch"]
        with httpx.Client(trust_env=False, timeout=20) as http:
            body["prefetch"] = {
                key: http.get(f"{fhir_url}/{query.replace('{{context.patientId}}', pid)}").json()
                for key, query in templates.items()
            }
    else:
        body["fhirServer"] = fhir_url
    answer = api.post(f"/cds-services/{SERVICE}", json=body)
    assert answer.status_code == 200, answer.text
    return [card["summary"] for card in answer.json()["cards"]]


def screenshot(driver: WebDriver, name: str, tmp_path: Path) -> None:
    folder = REPO_ROOT / "docs" if SCREENSHOTS else tmp_path
    driver.save_screenshot(str(folder / name))


# --- the launches -------------------------------------------------------------------------------


def test_ehr_launch_round_trip_changes_the_cards(
    browser: WebDriver,
    console_stack: ConsoleStack,
    launcher: Launcher,
    api: httpx.Client,
    tmp_path: Path,
) -> None:
    fhir = console_stack.fhir_url
    pid = new_patient(fhir)
    for prefetch in (True, False):
        assert not any("caffeine" in s for s in patient_view(api, pid, fhir, prefetch=prefetch))

    set_viewport(browser, 390, 844)  # a phone
    assert ehr_launch(browser, console_stack, launcher, launch_code(pid)) == "ready", status(
        browser
    )
    assert browser.find_element(By.ID, "patient").text == "Jordan Journal · born 1985-04-12"
    # After the redirect the address bar holds no code or state; the token is only in
    # sessionStorage (where fhirclient keeps it), granted with the scopes the app asked for.
    assert browser.execute_script("return location.search") == ""
    state = smart_state(browser)
    assert state["tokenResponse"]["access_token"] and state["codeVerifier"]  # PKCE was used
    assert state["serverUrl"] == launcher.fhir_url
    granted = set(state["tokenResponse"]["scope"].split())
    assert "launch" in granted and "patient/QuestionnaireResponse.crs" in granted
    assert not any(s.startswith(("user/", "system/", "openid", "offline")) for s in granted)

    enter_night(
        browser,
        {"jerk-count": "3", "total-sleep-h": "7", "caffeine-after-14": "Yes", "stress-level": "4"},
    )
    night = (date.today() - timedelta(days=1)).isoformat()
    assert status(browser) == f"Saved: the night of {night}."
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "journal-entry-phone.png", tmp_path)

    (saved,) = journal_entries(fhir, pid)
    get_fhir_model_class("QuestionnaireResponse").model_validate(saved)
    assert saved["status"] == "completed" and saved["questionnaire"] == JOURNAL
    assert saved["subject"] == {"reference": f"Patient/{pid}"}
    answers = {i["linkId"]: i["answer"][0] for i in saved["item"]}
    assert answers["night-date"] == {"valueDate": night}
    assert answers["caffeine-after-14"] == {"valueBoolean": True}
    assert answers["jerk-count"] == {"valueInteger": 3}

    # The round trip: the EHR's next patient-view call gives the lifestyle card, both ways.
    for prefetch in (True, False):
        summaries = patient_view(api, pid, fhir, prefetch=prefetch)
        assert any("caffeine after 2 pm" in s for s in summaries), (prefetch, summaries)
    # ...and the app states the same advice in its review.
    WebDriverWait(browser, 30).until(lambda d: "caffeine after 2 pm" in advice_text(d))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-nights") == "1"


def test_review_of_a_journal_week(
    browser: WebDriver, console_stack: ConsoleStack, launcher: Launcher, tmp_path: Path
) -> None:
    """demo-02 has a week of nights with triggers: the review charts them and states the card."""
    assert ehr_launch(browser, console_stack, launcher, launch_code("demo-02")) == "ready"
    WebDriverWait(browser, 30).until(lambda d: "caffeine after 2 pm" in advice_text(d))
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-nights") == "7"
    chart = browser.find_element(By.CSS_SELECTOR, "#chart svg")
    assert len(chart.find_elements(By.CSS_SELECTOR, "rect.bar")) == 7  # jerks, one bar a night
    assert len(chart.find_elements(By.CSS_SELECTOR, "circle.sleep-dot")) == 7
    labels = [e.text for e in chart.find_elements(By.CSS_SELECTOR, "text.row-label")]
    for trigger in ("Caffeine after 2 pm", "Late exercise", "Stress (0-10)", "Alcohol (drinks)"):
        assert trigger in labels
    table = browser.execute_script(
        "return Array.from(document.querySelectorAll('details.nights tbody tr'))"
        ".map(r => Array.from(r.children).map(c => c.textContent))"
    )
    assert len(table) == 7 and table[0][0] > table[-1][0]  # newest night first
    weeks = browser.find_element(By.ID, "weeks").text
    assert "Nights recorded 7 0" in weeks
    set_viewport(browser, 1280, 1400)  # a desktop, tall enough for labs and advice
    screenshot(browser, "journal-review-desktop.png", tmp_path)
    set_viewport(browser, 390, 844)
    browser.find_element(By.ID, "tab-review").click()
    screenshot(browser, "journal-review-phone.png", tmp_path)


def test_standalone_launch(
    browser: WebDriver, console_stack: ConsoleStack, launcher: Launcher
) -> None:
    pid = new_patient(console_stack.fhir_url)
    browser.get(f"{console_stack.base_url}/journal/launch")
    form = WebDriverWait(browser, 20).until(lambda d: d.find_element(By.ID, "standalone"))
    WebDriverWait(browser, 20).until(lambda d: form.is_displayed())
    # The patient signs in at the launcher's standalone address (the options pick the patient).
    browser.find_element(By.ID, "iss").send_keys(
        launcher.standalone_iss(launch_code(pid, launch_type=3))
    )
    browser.find_element(By.ID, "signin").click()
    assert settled(browser) == "ready", status(browser)
    assert "Jordan Journal" in browser.find_element(By.ID, "patient").text
    granted = set(smart_state(browser)["tokenResponse"]["scope"].split())
    assert "launch/patient" in granted and "launch" not in granted


def test_consent_denied(
    browser: WebDriver, console_stack: ConsoleStack, launcher: Launcher
) -> None:
    pid = new_patient(console_stack.fhir_url)
    browser.get(
        launcher.ehr_launch_url(
            f"{console_stack.base_url}/journal/launch",
            launch_code(pid, launch_type=1, skip_auth=False),  # patient portal: asks consent
        )
    )
    deny = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "deny"))
    deny.click()
    # The launcher ends the flow on its own page ("Unauthorized") and never returns a code.
    WebDriverWait(browser, 20).until(lambda d: "Unauthorized" in d.page_source)
    assert browser.current_url.startswith(launcher.url)
    # An authorization server that follows RFC 6749 §4.1.2.1 redirects back with
    # error=access_denied instead: the app says so in plain words.
    browser.get(f"{console_stack.base_url}/journal/")  # same tab: the app's pending state
    pending = browser.execute_script("return JSON.parse(sessionStorage.getItem('SMART_KEY'))")
    browser.get(
        f"{console_stack.base_url}/journal/?error=access_denied"
        f"&error_description=The+user+denied+access&state={pending}"
    )
    assert settled(browser) == "error"
    assert status(browser).startswith("Access was not granted")
    assert journal_entries(console_stack.fhir_url, pid) == []


def test_token_expiry_is_said_in_plain_words(
    browser: WebDriver, console_stack: ConsoleStack, launcher_build: Path
) -> None:
    """A launcher whose access tokens live 12 seconds: once the token has expired, saving is
    refused by the EHR and the app says so (and asks for a new launch) instead of failing."""
    pid = new_patient(console_stack.fhir_url)
    with running_launcher(launcher_build, console_stack.fhir_url, token_lifetime_min=0.2) as short:
        assert ehr_launch(browser, console_stack, short, launch_code(pid)) == "ready"
        expires_at = smart_state(browser)["expiresAt"]
        assert expires_at - time.time() <= 13
        time.sleep(max(0.0, expires_at - time.time()) + 1.5)
        enter_night(browser, {"jerk-count": "2"})
    assert status(browser).startswith("Your access to the health record has expired")
    assert journal_entries(console_stack.fhir_url, pid) == []
    assert "access_token" not in browser.current_url


def test_unregistered_fhir_server_is_refused_before_any_redirect(
    browser: WebDriver, console_stack: ConsoleStack
) -> None:
    browser.get(
        f"{console_stack.base_url}/journal/launch?iss=http%3A%2F%2Ffhir.example.org%2Ffhir"
        "&launch=abc"
    )
    assert settled(browser) == "error"
    assert "https" in status(browser)
    assert browser.current_url.startswith(f"{console_stack.base_url}/journal/launch")
