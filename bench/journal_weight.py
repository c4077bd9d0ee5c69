"""Page weight and time to first render of the journal app, in headless Chromium.

Usage: start ``make sandbox`` (with the SMART launcher), then
    .venv/bin/python bench/journal_weight.py "<the EHR launch URL the sandbox prints>"

Counts bytes on the wire (Chromium's encodedDataLength, all origins: this service, the launcher's
authorization and FHIR endpoints) for the app page loaded after the redirect, and reads
first-contentful-paint and the time until the review and advice are on screen. Cold cache,
loopback network, 2 shared CPU cores: the numbers show relative cost, not a phone on 4G.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any


def one_run(url: str, width: int, height: int) -> dict[str, Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        f"--user-data-dir={tempfile.mkdtemp()}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.execute_cdp_cmd("Network.enable", {})
        driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
        driver.get(url)
        give_up = time.monotonic() + 60
        while time.monotonic() < give_up:
            done = driver.execute_script(
                "return location.pathname === '/journal/' && document.body.dataset.advice"
            )
            if done:
                break
            time.sleep(0.05)
        timing = driver.execute_script(
            "const nav = performance.getEntriesByType('navigation')[0];"
            "const fcp = performance.getEntriesByName('first-contentful-paint')[0];"
            "return {fcp: fcp ? fcp.startTime : null, dcl: nav.domContentLoadedEventEnd,"
            " now: performance.now()}"
        )
        # Bytes per request of the app page (after the redirect back from the authorization server).
        urls: dict[str, str] = {}
        sizes: dict[str, float] = {}
        app_started = False
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent":
                url_ = params["request"]["url"]
                if params.get("type") == "Document" and "/journal/?" in url_:
                    app_started = True
                    urls.clear()
                    sizes.clear()
                urls[params["requestId"]] = url_
            elif message["method"] == "Network.loadingFinished" and app_started:
                sizes[params["requestId"]] = params["encodedDataLength"]
        rows = sorted(((urls.get(k, "?"), v) for k, v in sizes.items()), key=lambda r: -r[1])
        return {
            "fcp_ms": timing["fcp"],
            "ready_ms": timing["now"],
            "bytes": sum(sizes.values()),
            "requests": len(sizes),
            "rows": rows,
        }
    finally:
        driver.quit()


def main() -> int:
    url = sys.argv[1]
    for width, height, label in ((390, 844, "phone"), (1280, 800, "desktop")):
        runs = [one_run(url, width, height) for _ in range(5)]
        fcp = statistics.median(r["fcp_ms"] for r in runs)
        ready = statistics.median(r["ready_ms"] for r in runs)
        print(
            f"{label}: {runs[0]['requests']} requests, {runs[0]['bytes'] / 1024:.1f} KiB on the"
            f" wire; first contentful paint median {fcp:.0f} ms, review + advice on screen median"
            f" {ready:.0f} ms (from the app page's navigation start)"
        )
    for url_, size in runs[0]["rows"]:
        print(f"  {size / 1024:7.1f} KiB  {url_.split('?')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
