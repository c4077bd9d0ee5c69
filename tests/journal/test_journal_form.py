"""Questionnaire → form in headless Chromium, and the QuestionnaireResponse the form builds.

The page is opened without a launch: the form is rendered from the Questionnaire before any
SMART step, so what it renders (and the response it would save) can be checked on its own.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import date, timedelta
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from service.config import REPO_ROOT
from tests.console.conftest import NO_BROWSER, ConsoleStack, browser_missing, set_viewport

HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(browser_missing(), reason=NO_BROWSER),
    pytest.mark.skipif(not HAVE_SELENIUM, reason="selenium is not installed (test extra)"),
]

if HAVE_SELENIUM:
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

QUESTIONNAIRE = json.loads(
    (REPO_ROOT / "fhir_profiles" / "Questionnaire-sleep-journal.json").read_text()
)
ITEMS = {item["linkId"]: item for item in QUESTIONNAIRE["item"]}
ANSWER_KEY = {
    "date": "valueDate",
    "time": "valueTime",
    "integer": "valueInteger",
    "decimal": "valueDecimal",
    "boolean": "valueBoolean",
    "choice": "valueCoding",
    "string": "valueString",
}


def extension(item: dict[str, Any], name: str) -> Any:
    for ext in item.get("extension", []):
        if ext["url"].endswith("/" + name):
            return next(v for k, v in ext.items() if k.startswith("value"))
    return None


def open_form(driver: WebDriver, stack: ConsoleStack) -> None:
    driver.get(f"{stack.base_url}/journal/")
    WebDriverWait(driver, 20).until(
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-form") == "ready"
    )


def field(driver: WebDriver, link_id: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f"fieldset[data-link-id='{link_id}']")


def test_every_item_type_renders_as_its_control(
    browser: WebDriver, console_stack: ConsoleStack
) -> None:
    open_form(browser, console_stack)
    rendered = [
        f.get_attribute("data-link-id")
        for f in browser.find_elements(By.CSS_SELECTOR, "#night fieldset")
    ]
    assert rendered == list(ITEMS)  # every item, in the Questionnaire's order
    assert {item["type"] for item in ITEMS.values()} == set(ANSWER_KEY)  # all types covered
    for link_id, item in ITEMS.items():
        box = field(browser, link_id)
        legend = box.find_element(By.TAG_NAME, "legend").text
        assert legend.startswith(item["text"].strip())
        assert ("(required)" in legend) == bool(item.get("required"))
        kind = item["type"]
        if kind in ("date", "time"):
            control = box.find_element(By.CSS_SELECTOR, f"input[type={kind}]")
            assert (control.get_dom_attribute("required") is not None) == bool(item.get("required"))
        elif kind in ("integer", "decimal"):
            control = box.find_element(By.CSS_SELECTOR, "input[type=number]")
            assert control.get_dom_attribute("step") == ("1" if kind == "integer" else "0.5")
            for name, attribute in (("minValue", "min"), ("maxValue", "max")):
                bound = extension(item, name)
                shown = control.get_dom_attribute(attribute)
                assert (shown is None) if bound is None else (float(shown) == bound)
            unit = extension(item, "questionnaire-unit")
            if unit:
                assert box.find_element(By.CLASS_NAME, "unit").text == unit["display"]
            assert len(box.find_elements(By.CSS_SELECTOR, "button.step")) == 2  # big +/- targets
        elif kind == "boolean":
            labels = [e.text for e in box.find_elements(By.CSS_SELECTOR, "label.choice")]
            assert labels == ["Yes", "No"]
            assert not any(r.is_selected() for r in box.find_elements(By.TAG_NAME, "input"))
        elif kind == "choice":
            labels = [e.text for e in box.find_elements(By.CSS_SELECTOR, "label.choice")]
            assert labels == [o["valueCoding"]["display"] for o in item["answerOption"]]
        elif kind == "string":
            box.find_element(By.TAG_NAME, "textarea")
    night = field(browser, "night-date").find_element(By.TAG_NAME, "input")
    assert night.get_attribute("value") == (date.today() - timedelta(days=1)).isoformat()
    # Touch targets: every radio label and stepper at least 44 CSS px high on a phone.
    set_viewport(browser, 390, 844)
    heights = browser.execute_script(
        "return Array.from(document.querySelectorAll('.choice span, .step, #save'))"
        ".map(e => e.getBoundingClientRect().height)"
    )
    assert heights and min(heights) >= 44, heights


def fill(driver: WebDriver, answers: dict[str, Any]) -> None:
    for link_id, value in answers.items():
        item = ITEMS[link_id]
        box = field(driver, link_id)
        if item["type"] == "boolean":
            box.find_element(By.XPATH, f".//label[span='{'Yes' if value else 'No'}']").click()
        elif item["type"] == "choice":
            box.find_element(By.XPATH, f".//label[span='{value}']").click()
        elif item["type"] in ("date", "time"):
            driver.execute_script(
                "arguments[0].value = arguments[1]", box.find_element(By.TAG_NAME, "input"), value
            )
        else:
            control = box.find_element(By.CSS_SELECTOR, "input, textarea")
            control.clear()
            control.send_keys(str(value))


def test_filled_form_builds_a_valid_questionnaire_response(
    browser: WebDriver, console_stack: ConsoleStack
) -> None:
    open_form(browser, console_stack)
    answers = {
        "night-date": "2026-11-30",
        "bedtime": "23:15",
        "sleep-onset-latency-min": 25,
        "total-sleep-h": 6.5,
        "jerk-count": 4,
        "jerk-timing": "While falling asleep",
        "seizure-features": False,
        "caffeine-after-14": True,
        "stress-level": 7,
        "alcohol-drinks": 0,
        "partner-observed-kicks": "No bed partner",
        "new-medicines": "magnesium <b>citrate</b>",
    }
    fill(browser, answers)
    built = browser.execute_script("return window.SleepJournal.buildResponse('demo-02')")
    assert "problems" not in built, built
    response = built["resource"]
    get_fhir_model_class("QuestionnaireResponse").model_validate(response)  # valid FHIR
    assert response["status"] == "completed"
    assert response["questionnaire"] == QUESTIONNAIRE["url"]
    assert response["subject"] == {"reference": "Patient/demo-02"}
    assert response["source"] == {"reference": "Patient/demo-02"}  # what the patient reports
    assert response["authored"].endswith("Z") and len(response["authored"]) >= 20
    saved = {i["linkId"]: i["answer"][0] for i in response["item"]}
    assert set(saved) == set(answers)  # unanswered items are left out, not sent empty
    for link_id, answer in saved.items():
        (key,) = answer.keys()
        assert key == ANSWER_KEY[ITEMS[link_id]["type"]], link_id
    assert saved["bedtime"] == {"valueTime": "23:15:00"}
    assert saved["total-sleep-h"] == {"valueDecimal": 6.5}
    assert saved["caffeine-after-14"] == {"valueBoolean": True}
    assert saved["jerk-timing"]["valueCoding"]["code"] == "falling-asleep"
    assert saved["new-medicines"] == {"valueString": "magnesium <b>citrate</b>"}  # text, kept


def test_required_and_range_are_checked_before_saving(
    browser: WebDriver, console_stack: ConsoleStack
) -> None:
    open_form(browser, console_stack)
    browser.execute_script("document.getElementById('q-night-date').value = ''")
    fill(browser, {"stress-level": 11, "total-sleep-h": 25, "jerk-count": 2.5})
    built = browser.execute_script("return window.SleepJournal.buildResponse('demo-02')")
    problems = " ".join(built["problems"])
    assert "night-date: This is required." in problems
    assert "stress-level: Enter a number from 0 to 10." in problems
    assert "total-sleep-h: Enter a number from 0 to 24." in problems
    assert "jerk-count: Enter a whole number." in problems
    shown = browser.find_element(By.ID, "err-stress-level")
    assert shown.is_displayed() and shown.text == "Enter a number from 0 to 10."
    status = browser.find_element(By.ID, "status").text
    assert "health record" in status  # opened without a launch: says how to open it


PLAIN_WORDS = [
    ("{status: 401, message: 'Unauthorized'}", "Your access to the health record has expired"),
    ("{status: 403, message: 'Forbidden'}", "The health record did not allow this"),
    ("new Error('access_denied: The user denied access')", "Access was not granted"),
    ("new TypeError('Failed to fetch')", "The health record could not be reached"),
    (
        "{status: 422, message: 'Unprocessable\\nat line 3'}",
        "The health record refused the request (HTTP 422): Unprocessable",
    ),
]


def test_errors_are_put_in_plain_words(browser: WebDriver, console_stack: ConsoleStack) -> None:
    """Consent declined, token expired, write refused, server down: what the user reads."""
    open_form(browser, console_stack)
    for error, words in PLAIN_WORDS:
        said = browser.execute_script(f"return window.SleepJournal.plainError({error})")
        assert said.startswith(words), said
        assert "\n" not in said and "at line" not in said  # no stack or second line
