"""The preview console in a real headless Chromium, against a real FHIR server and service.

Each test opens ``/console`` the way an integrator would: type the FHIR server, load the patient
list, pick a demo patient, fire hooks. What the page shows is compared with what the service
answers to the same request made directly, and feedback is checked in the database.

``CDS_UPDATE_SCREENSHOT=1`` makes the end-to-end test also write ``docs/console.png`` (the README
screenshot); otherwise screenshots go to pytest's temporary directory only.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.demo import demo_shift_days
from tests.console.conftest import (
    NO_BROWSER,
    REPO_ROOT,
    XSS_PATIENT_ID,
    ConsoleStack,
    browser_missing,
    set_viewport,
)

HAVE_SELENIUM = importlib.util.find_spec("selenium") is not None
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(browser_missing(), reason=NO_BROWSER),
    pytest.mark.skipif(
        not HAVE_SELENIUM, reason="selenium is not installed (pip install -e '.[test]')"
    ),
]

if HAVE_SELENIUM:  # a test extra; the tests are skipped without it
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.webdriver import WebDriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webelement import WebElement
    from selenium.webdriver.support.ui import Select, WebDriverWait

DEMO = "demo-01"
USER = "Practitioner/example"


# --- page helpers ---------------------------------------------------------------------------


def wait_for(driver: WebDriver, condition: Any, timeout: float = 20, what: str = "") -> Any:
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition)
    except TimeoutException:
        status = driver.find_element(By.ID, "status").text
        raise AssertionError(
            f"timed out waiting for {what or condition} (status: {status!r})"
        ) from None


def by_id(driver: WebDriver, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def open_console(driver: WebDriver, stack: ConsoleStack) -> None:
    driver.get(f"{stack.base_url}/console")
    wait_for(
        driver,
        lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true",
        what="console start-up",
    )


def load_patients(driver: WebDriver, stack: ConsoleStack) -> None:
    field = by_id(driver, "fhir-server")
    field.clear()
    field.send_keys(stack.fhir_url)
    by_id(driver, "load-patients").click()
    wait_for(
        driver,
        lambda d: (
            d.find_element(By.ID, "patient").is_enabled()
            and len(Select(d.find_element(By.ID, "patient")).options) > 1
        ),
        what="patient list",
    )


def pick_patient(driver: WebDriver, patient_id: str) -> None:
    Select(by_id(driver, "patient")).select_by_value(patient_id)
    wait_for(
        driver,
        lambda d: (
            d.find_element(By.ID, "banner").is_displayed()
            and f"FHIR id {patient_id}" in d.find_element(By.ID, "banner-facts").text
            and d.find_element(By.ID, "fire-patient-view").is_enabled()
        ),
        what=f"chart of {patient_id}",
    )


def start(driver: WebDriver, stack: ConsoleStack, patient_id: str = DEMO) -> None:
    open_console(driver, stack)
    load_patients(driver, stack)
    pick_patient(driver, patient_id)


def cards_box(driver: WebDriver) -> WebElement:
    return by_id(driver, "cards")


def fire(driver: WebDriver, button_id: str | None = None, *, keys: str | None = None) -> str:
    """Click a hook button (or send ``keys`` to the focused one); wait for the new cards."""
    before = cards_box(driver).get_attribute("data-hook-instance")
    if keys is not None:
        driver.switch_to.active_element.send_keys(keys)
    else:
        assert button_id is not None
        by_id(driver, button_id).click()
    wait_for(
        driver,
        lambda d: (
            cards_box(d).get_attribute("aria-busy") == "false"
            and cards_box(d).get_attribute("data-hook-instance") not in (None, before)
        ),
        what="hook response",
    )
    instance = cards_box(driver).get_attribute("data-hook-instance")
    assert instance
    return instance


def shown_cards(driver: WebDriver) -> list[dict[str, Any]]:
    return [
        {
            "summary": card.find_element(By.CSS_SELECTOR, ".card-summary").text,
            "indicator": card.get_attribute("data-indicator"),
            "uuid": card.get_attribute("data-uuid"),
            "topic": card.get_attribute("data-topic"),
            "element": card,
        }
        for card in cards_box(driver).find_elements(By.CSS_SELECTOR, "article.card")
    ]


def card_with_topic(driver: WebDriver, topic: str) -> dict[str, Any]:
    found = [c for c in shown_cards(driver) if c["topic"] == topic]
    assert found, f"no {topic} card among {[c['summary'] for c in shown_cards(driver)]}"
    return found[0]


def shown_request(driver: WebDriver) -> dict[str, Any]:
    """The request the page sent, read back from the integrator panel."""
    by_id(driver, "tab-request").click()
    text = by_id(driver, "request-json").text
    head, _, body = text.partition("\n\n")
    assert head.startswith("POST /cds-services/")
    request: dict[str, Any] = json.loads(body)
    return request


def no_horizontal_scroll(driver: WebDriver) -> bool:
    return bool(
        driver.execute_script(
            "const e = document.documentElement;"
            "return e.scrollWidth <= e.clientWidth && document.body.scrollWidth <= e.clientWidth;"
        )
    )


def pwned(driver: WebDriver) -> Any:
    return driver.execute_script("return window.__pwned === undefined ? null : window.__pwned;")


# --- the service, called directly ---------------------------------------------------------


def call(api: httpx.Client, request: dict[str, Any]) -> list[dict[str, Any]]:
    replay = {**request, "hookInstance": str(uuid.uuid4())}
    response = api.post(f"/cds-services/sleep-movement-{request['hook']}", json=replay)
    assert response.status_code == 200, response.text
    cards: list[dict[str, Any]] = response.json()["cards"]
    return cards


def patient_view(stack: ConsoleStack, patient_id: str) -> dict[str, Any]:
    return {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": stack.fhir_url,
        "context": {"userId": USER, "patientId": patient_id},
    }


def same_cards(shown: list[dict[str, Any]], answered: list[dict[str, Any]]) -> None:
    """The page shows the API's cards: same number, order, summaries, indicators and topics."""
    assert [(c["summary"], c["indicator"], c["topic"]) for c in shown] == [
        (c["summary"], c["indicator"], c["source"]["topic"]["code"]) for c in answered
    ]


def feedback_rows(stack: ConsoleStack) -> list[dict[str, Any]]:
    with sqlite3.connect(stack.database_file) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT card_uuid, outcome, accepted_suggestions, override_reason_code,"
            " override_comment, service_id FROM feedback_item ORDER BY id"
        ).fetchall()
    return [dict(row) for row in rows]


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
    path = tmp_path / name
    assert driver.save_screenshot(str(path))
    return path


# --- tests ---------------------------------------------------------------------------------


def test_console_end_to_end(
    browser: WebDriver, console_stack: ConsoleStack, api: httpx.Client, tmp_path: Path
) -> None:
    driver = browser
    start(driver, console_stack, DEMO)
    assert driver.execute_script("return [innerWidth, innerHeight]") == [1280, 800]

    # Chart summary: the demo patient's problem, medication and ferritin with its (shifted) date.
    ferritin_day = (date(2026, 11, 10) + timedelta(days=demo_shift_days())).isoformat()
    assert "Restless legs syndrome" in by_id(driver, "chart-problems").text
    assert "sertraline 50 MG Oral Tablet" in by_id(driver, "chart-medications").text
    labs = [
        [cell.text for cell in row.find_elements(By.CSS_SELECTOR, "th, td")]
        for row in by_id(driver, "chart-labs").find_elements(By.CSS_SELECTOR, "tbody tr")
    ]
    assert ["Ferritin", "40 ng/mL", ferritin_day] in labs
    assert "Rosa Demo" in by_id(driver, "banner-name").text

    # patient-view: the page shows what the service answers to the same request.
    expected = call(api, patient_view(console_stack, DEMO))
    assert {c["source"]["topic"]["code"] for c in expected} >= {"lab-check", "medication-review"}
    fire(driver, "fire-patient-view")
    same_cards(shown_cards(driver), expected)
    sent = shown_request(driver)
    assert sent["hook"] == "patient-view" and sent["fhirServer"] == console_stack.fhir_url
    assert sent["context"] == {"userId": USER, "patientId": DEMO} and "prefetch" not in sent
    for card in shown_cards(driver):
        colour = card["element"].value_of_css_property("border-left-color")
        assert colour == {"warning": "rgba(229, 154, 0, 1)", "info": "rgba(31, 111, 209, 1)"}.get(
            card["indicator"], colour
        )
    shot = screenshot(driver, tmp_path, "console.png")
    if os.environ.get("CDS_UPDATE_SCREENSHOT") == "1":
        shutil.copyfile(shot, REPO_ROOT / "docs" / "console.png")
    first = shown_cards(driver)[0]["element"]
    source_link = first.find_element(By.CSS_SELECTOR, ".card-source a")
    assert source_link.get_attribute("href").startswith("https://")
    assert source_link.get_attribute("rel") == "noopener noreferrer"
    details = first.find_element(By.CSS_SELECTOR, "details.card-detail")
    assert details.get_attribute("open") is None  # several cards: details start folded
    details.find_element(By.TAG_NAME, "summary").click()
    assert first.find_element(By.CSS_SELECTOR, ".markdown strong").text  # Markdown rendered
    assert first.find_elements(By.CSS_SELECTOR, ".markdown ul li")

    # Accept a suggestion on the lab card: one "accepted" row naming that suggestion.
    lab = card_with_topic(driver, "lab-check")
    suggestion = lab["element"].find_element(By.CSS_SELECTOR, ".btn-suggestion")
    suggestion_uuid = suggestion.get_attribute("data-suggestion")
    accepted_label = suggestion.text
    suggestion.click()
    wait_for(driver, lambda d: "Accepted" in lab["element"].text, what="accepted state")
    rows = feedback_rows(console_stack)
    assert len(rows) == 1
    assert rows[0]["card_uuid"] == lab["uuid"] and rows[0]["outcome"] == "accepted"
    assert json.loads(rows[0]["accepted_suggestions"]) == [suggestion_uuid]
    assert rows[0]["service_id"] == "sleep-movement-patient-view"

    # Dismiss the medication card with a reason and a comment: one "overridden" row.
    med = card_with_topic(driver, "medication-review")
    med["element"].find_element(By.CSS_SELECTOR, ".btn-dismiss").click()
    dialog = by_id(driver, "dismiss-dialog")
    wait_for(driver, lambda d: dialog.is_displayed(), what="dismiss dialog")
    by_id(driver, "dismiss-confirm").click()  # no reason chosen yet: refused
    assert "Choose a reason" in by_id(driver, "dismiss-error").text
    reason = dialog.find_element(By.CSS_SELECTOR, "input[data-code='will-reassess']")
    reason.click()
    by_id(driver, "dismiss-comment").send_keys("Discuss at follow-up")
    driver.save_screenshot(str(tmp_path / "console-dismiss.png"))
    by_id(driver, "dismiss-confirm").click()
    wait_for(driver, lambda d: not dialog.is_displayed(), what="dialog closed")
    wait_for(driver, lambda d: "Dismissed" in med["element"].text, what="dismissed state")
    rows = feedback_rows(console_stack)
    assert len(rows) == 2
    assert rows[1]["card_uuid"] == med["uuid"] and rows[1]["outcome"] == "overridden"
    assert rows[1]["override_reason_code"] == "will-reassess"
    assert rows[1]["override_comment"] == "Discuss at follow-up"
    by_id(driver, "tab-feedback").click()
    assert med["uuid"] in by_id(driver, "feedback-json").text

    # Fire again: the dismissed card is hidden, and of the lab card only the accepted advice
    # (per rule, issue 14); the direct call agrees. The hidden list says why and until when.
    fire(driver, "fire-patient-view")
    topics = {c["topic"] for c in shown_cards(driver)}
    assert "medication-review" not in topics
    if "lab-check" in topics:
        again = card_with_topic(driver, "lab-check")["element"]
        labels = [b.text for b in again.find_elements(By.CSS_SELECTOR, ".btn-suggestion")]
        assert accepted_label not in labels
    same_cards(shown_cards(driver), call(api, patient_view(console_stack, DEMO)))
    hidden = by_id(driver, "hidden-cards")
    assert hidden.is_displayed()
    assert "overridden (will-reassess)" in hidden.text
    assert "suggestion accepted" in hidden.text and "hidden until" in hidden.text
    screenshot(driver, tmp_path, "console-suppressed.png")

    # order-select with sertraline: the drug card, as the service answers it.
    by_id(driver, "order-sertraline").click()
    fire(driver, "fire-order-select")
    drug = card_with_topic(driver, "medication-review")
    assert drug["indicator"] == "warning"
    assert drug["summary"].startswith("Reconsider sertraline:")
    request = shown_request(driver)
    assert request["context"]["selections"] == ["MedicationRequest/draft-sertraline"]
    draft = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert draft["medicationCodeableConcept"]["coding"][0]["code"] == "36437"
    same_cards(shown_cards(driver), call(api, request))
    # Accepting "Remove this draft order" takes sertraline off the order pad, as an EHR would.
    remove = [
        b
        for b in drug["element"].find_elements(By.CSS_SELECTOR, ".btn-suggestion")
        if b.text.startswith("Remove this draft order")
    ]
    assert remove
    remove[0].click()
    wait_for(driver, lambda d: not by_id(d, "order-sertraline").is_selected(), what="draft removed")
    assert feedback_rows(console_stack)[-1]["outcome"] == "accepted"

    # order-sign with polysomnography: the iron-studies card.
    by_id(driver, "order-polysomnography").click()
    fire(driver, "fire-order-sign")
    request = shown_request(driver)
    assert request["hook"] == "order-sign" and "selections" not in request["context"]
    study = request["context"]["draftOrders"]["entry"][0]["resource"]
    assert study["resourceType"] == "ServiceRequest"
    assert study["code"]["coding"][0]["code"] == "60554003"
    psg = card_with_topic(driver, "lab-check")
    assert psg["indicator"] == "info" and "Sleep study" in psg["summary"]
    assert psg["element"].value_of_css_property("border-left-color") == "rgba(31, 111, 209, 1)"
    same_cards(shown_cards(driver), call(api, request))

    # The integrator panel: the response JSON and the rule trace of this call.
    by_id(driver, "tab-response").click()
    response_text = by_id(driver, "response-json").text
    assert response_text.startswith("HTTP 200") and psg["uuid"] in response_text
    assert not by_id(driver, "pane-request").is_displayed()
    by_id(driver, "tab-trace").click()
    fired = [
        item.text
        for item in by_id(driver, "trace-rules").find_elements(
            By.CSS_SELECTOR, "li[data-status='fired']"
        )
    ]
    assert any("draft-psg-without-iron@" in text for text in fired)
    first_rule = by_id(driver, "trace-rules").find_element(By.CSS_SELECTOR, "details")
    first_rule.find_element(By.TAG_NAME, "summary").click()
    assert first_rule.find_element(By.CSS_SELECTOR, ".rule-body").text  # trace lines shown
    screenshot(driver, tmp_path, "console-order-sign.png")

    log = driver.get_log("browser")  # type: ignore[no-untyped-call]
    errors = [e for e in log if e["level"] == "SEVERE"]
    assert not errors, errors


def test_keyboard_only(browser: WebDriver, console_stack: ConsoleStack) -> None:
    driver = browser
    open_console(driver, console_stack)
    body = driver.find_element(By.TAG_NAME, "body")
    body.click()
    # Type the server and load the patients without the mouse.
    by_id(driver, "fhir-server").send_keys(console_stack.fhir_url, Keys.ENTER)
    wait_for(driver, lambda d: by_id(d, "patient").is_enabled(), what="patient list")
    pick_patient(driver, DEMO)  # a <select> is keyboard operable natively

    # Tab from the patient picker reaches the patient-view button; Enter fires it.
    driver.execute_script("arguments[0].focus()", by_id(driver, "patient"))
    for _ in range(20):
        if driver.switch_to.active_element.get_attribute("id") == "fire-patient-view":
            break
        driver.switch_to.active_element.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("id") == "fire-patient-view"
    fire(driver, keys=Keys.ENTER)
    assert shown_cards(driver)

    # Space ticks a draft order; Tab and Enter fire order-select.
    driver.switch_to.active_element.send_keys(Keys.TAB)  # first draft-order checkbox
    assert driver.switch_to.active_element.get_attribute("id") == "order-sertraline"
    driver.switch_to.active_element.send_keys(Keys.SPACE)
    assert by_id(driver, "order-sertraline").is_selected()
    for _ in range(len(by_id(driver, "draft-orders").find_elements(By.TAG_NAME, "input"))):
        driver.switch_to.active_element.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("id") == "fire-order-select"
    fire(driver, keys=Keys.ENTER)
    assert any(c["topic"] == "medication-review" for c in shown_cards(driver))

    # The dismiss dialog opens from the keyboard, traps focus on its reasons, closes on Escape.
    dismiss = shown_cards(driver)[0]["element"].find_element(By.CSS_SELECTOR, ".btn-dismiss")
    dismiss.send_keys(Keys.ENTER)
    wait_for(driver, lambda d: by_id(d, "dismiss-dialog").is_displayed(), what="dialog")
    assert driver.switch_to.active_element.get_attribute("name") == "override-reason"
    driver.switch_to.active_element.send_keys(Keys.ESCAPE)
    wait_for(driver, lambda d: not by_id(d, "dismiss-dialog").is_displayed(), what="closed")
    assert driver.switch_to.active_element == dismiss

    # The integrator tabs follow the WAI-ARIA pattern: arrow keys move between them.
    tab = by_id(driver, "tab-request")
    tab.click()
    tab.send_keys(Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element.get_attribute("id") == "tab-response"
    assert by_id(driver, "pane-response").is_displayed()


def test_narrow_window(browser: WebDriver, console_stack: ConsoleStack, tmp_path: Path) -> None:
    driver = browser
    set_viewport(driver, 420, 900)
    start(driver, console_stack, DEMO)
    assert no_horizontal_scroll(driver)
    fire(driver, "fire-patient-view")
    by_id(driver, "order-polysomnography").click()
    fire(driver, "fire-order-sign")
    assert shown_cards(driver)
    by_id(driver, "tab-response").click()
    assert no_horizontal_scroll(driver)
    width = driver.execute_script("return document.documentElement.clientWidth")
    for element_id in ("fire-patient-view", "fire-order-sign", "cards", "patient", "fhir-server"):
        rect = driver.execute_script(
            "const r = arguments[0].getBoundingClientRect(); return [r.left, r.right];",
            by_id(driver, element_id),
        )
        assert rect[0] >= 0 and rect[1] <= width, (element_id, rect, width)
    screenshot(driver, tmp_path, "console-narrow.png")


def test_hostile_fhir_text_is_shown_not_run(
    browser: WebDriver, console_stack: ConsoleStack, api: httpx.Client, tmp_path: Path
) -> None:
    """Free text from the EHR (name, problem, drug) with HTML and script: shown, never run."""
    driver = browser
    start(driver, console_stack, XSS_PATIENT_ID)
    assert "<script>" in by_id(driver, "banner-name").text
    assert "<img src=x" in by_id(driver, "chart-problems").text
    fire(driver, "fire-patient-view")
    same_cards(shown_cards(driver), call(api, patient_view(console_stack, XSS_PATIENT_ID)))
    for card in shown_cards(driver):
        details = card["element"].find_element(By.TAG_NAME, "details")
        if not details.get_attribute("open"):
            details.find_element(By.TAG_NAME, "summary").click()
    cards_text = cards_box(driver).text
    assert "<img src=x onerror=" in cards_text  # the evidence line, as text
    assert "[click me](javascript:" in cards_text or "click me" in cards_text
    for root in ("cards", "chart", "banner", "patient"):
        element = by_id(driver, root)
        assert not element.find_elements(By.CSS_SELECTOR, "img, script, svg, iframe, object")
        for link in element.find_elements(By.TAG_NAME, "a"):
            assert (link.get_attribute("href") or "").startswith(("https://", "http://"))
    assert pwned(driver) is None
    screenshot(driver, tmp_path, "console-xss.png")


def test_pasted_markdown_cannot_run_script(
    browser: WebDriver, console_stack: ConsoleStack, tmp_path: Path
) -> None:
    """Raw Markdown from any service (the Render JSON tab): script and javascript: stay text."""
    driver = browser
    open_console(driver, console_stack)
    hostile = {
        "cards": [
            {
                "uuid": "x1",
                "summary": "<img src=x onerror=\"window.__pwned='summary'\">",
                "indicator": "critical",
                "source": {"label": "<b>label</b>", "url": "javascript:window.__pwned='source'"},
                "detail": (
                    "Hello <script>window.__pwned='script'</script>\n\n"
                    "<img src=x onerror=\"window.__pwned='img'\">\n\n"
                    "- [bad](javascript:window.__pwned='md-link')\n"
                    "- [data](data:text/html,<script>parent.__pwned='data'</script>)\n"
                    "- [ok](https://example.org/guide) and **bold** and `<code>`\n\n"
                    "<a href=\"javascript:window.__pwned='a'\">raw anchor</a>"
                    " <iframe src=\"javascript:parent.__pwned='iframe'\"></iframe>"
                ),
                "suggestions": [{"label": "<svg onload=\"window.__pwned='svg'\">", "uuid": "s1"}],
                "links": [
                    {
                        "label": "evil",
                        "url": "javascript:window.__pwned='links'",
                        "type": "absolute",
                    },
                    {"label": "guide", "url": "https://example.org/", "type": "absolute"},
                ],
            }
        ]
    }
    by_id(driver, "tab-paste").click()
    driver.execute_script(
        "arguments[0].value = arguments[1];", by_id(driver, "paste-json"), json.dumps(hostile)
    )
    by_id(driver, "paste-render").click()
    wait_for(driver, lambda d: shown_cards(d), what="pasted card")
    card = shown_cards(driver)[0]
    assert card["indicator"] == "critical"
    assert card["element"].value_of_css_property("border-left-color") == "rgba(198, 40, 40, 1)"
    element = card["element"]
    assert not element.find_elements(By.CSS_SELECTOR, "img, script, svg, iframe, object, b")
    hrefs = sorted(a.get_attribute("href") for a in element.find_elements(By.TAG_NAME, "a"))
    assert hrefs == ["https://example.org/", "https://example.org/guide"]
    text = element.text
    for literal in (
        "<script>window.__pwned='script'</script>",
        "<img src=x",
        "<a href=\"javascript:window.__pwned='a'\">raw anchor</a>",
        "bad",
    ):
        assert literal in text
    assert element.find_element(By.CSS_SELECTOR, ".markdown strong").text == "bold"
    assert element.find_element(By.CSS_SELECTOR, ".markdown code").text == "<code>"
    for button in element.find_elements(By.TAG_NAME, "button"):
        assert not button.is_enabled()  # pasted cards send no feedback
    # Clicking everything clickable still runs nothing.
    for item in element.find_elements(By.CSS_SELECTOR, ".markdown li, .card-source span"):
        item.click()
    assert pwned(driver) is None
    assert driver.find_elements(By.CSS_SELECTOR, "body script:not([src])") == []
    screenshot(driver, tmp_path, "console-pasted.png")


def test_markdown_subset(browser: WebDriver, console_stack: ConsoleStack) -> None:
    """The renderer's subset, as the service writes card details."""
    driver = browser
    open_console(driver, console_stack)
    html = driver.execute_script(
        "const box = document.createElement('div');"
        "box.appendChild(window.SleepCdsConsole.renderMarkdown(arguments[0]));"
        "return box.innerHTML;",
        "**Title**\n\nLine one\ncontinues *here* and _there_, snake_case stays.\n"
        "x.__y = a__b__c and __real__ bold\n\n"
        "Evidence:\n- Ferritin 40 ng/mL\n- Escaped \\<b\\> and \\*stars\\*\n\n---\n\n"
        "1. first\n2. second\n\nSource: [AASM](https://doi.org/10.5664/jcsm.11390) "
        "(rule `x` v1)\n\n## Heading",
    )
    assert html == (
        "<p><strong>Title</strong></p>"
        "<p>Line one continues <em>here</em> and <em>there</em>, snake_case stays. "
        "x.__y = a__b__c and <strong>real</strong> bold</p>"
        "<p>Evidence:</p><ul><li>Ferritin 40 ng/mL</li><li>Escaped &lt;b&gt; and *stars*</li></ul>"
        "<hr><ol><li>first</li><li>second</li></ol>"
        '<p>Source: <a href="https://doi.org/10.5664/jcsm.11390" target="_blank" '
        'rel="noopener noreferrer">AASM</a> (rule <code>x</code> v1)</p>'
        "<h5>Heading</h5>"
    )
    urls = driver.execute_script(
        "return arguments[0].map(u => window.SleepCdsConsole.safeUrl(u));",
        [
            "https://a.example/x",
            "http://127.0.0.1/",
            "javascript:alert(1)",
            " JaVaScRiPt:x",
            "java\tscript:x",
            "data:text/html,x",
            "/relative",
            "//evil.example/x",
            "vbscript:x",
        ],
    )
    assert urls == ["https://a.example/x", "http://127.0.0.1/"] + [None] * 7


def test_switching_patient_resets_drafts_and_feedback_log(
    browser: WebDriver, console_stack: ConsoleStack
) -> None:
    """Ticked draft orders and the feedback log belong to one patient: after switching, "Select
    orders" must not send the previous patient's drafts, and the log starts empty."""
    driver = browser
    start(driver, console_stack)
    fire(driver, "fire-patient-view")
    card = shown_cards(driver)[0]
    card["element"].find_element(By.CSS_SELECTOR, ".btn-suggestion, .btn-dismiss").click()
    if by_id(driver, "dismiss-dialog").is_displayed():
        driver.find_element(By.CSS_SELECTOR, "#dismiss-form input[type=radio]").click()
        by_id(driver, "dismiss-confirm").click()
    wait_for(
        driver,
        lambda d: (
            "POST /cds-services/" in (by_id(d, "feedback-json").get_attribute("textContent") or "")
        ),
        what="feedback logged",
    )
    by_id(driver, "order-sertraline").click()
    assert by_id(driver, "order-sertraline").is_selected()

    other = next(
        o.get_attribute("value")
        for o in Select(by_id(driver, "patient")).options
        if o.get_attribute("value") not in ("", DEMO)
    )
    assert other is not None
    pick_patient(driver, other)
    assert not any(
        box.is_selected() for box in driver.find_elements(By.CSS_SELECTOR, "#draft-orders input")
    )
    assert by_id(driver, "feedback-json").get_attribute("textContent") == "No feedback sent yet."
    assert by_id(driver, "request-json").get_attribute("textContent") == "No call yet."

    by_id(driver, "order-sertraline").click()
    fire(driver, "fire-order-select")
    request = shown_request(driver)
    assert request["context"]["patientId"] == other
    drafts = request["context"]["draftOrders"]["entry"]
    assert [d["resource"]["subject"]["reference"] for d in drafts] == [f"Patient/{other}"]
    assert request["context"]["selections"] == ["MedicationRequest/draft-sertraline"]
