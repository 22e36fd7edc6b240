"""Headless Chromium for the tests that open a page (a report, the Locust web UI): the page's DOM once its
scripts have run, and every line it wrote to the browser console. CI installs chromium (.ci/run)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def open_page(url: str, budget_ms: int = 5000) -> tuple[str, list[str]]:
    """(DOM, console lines) of `url` (http:// or file://) after `budget_ms` of the page's own time."""
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    if browser is None:
        raise AssertionError("no headless browser: apt-get install chromium (.ci/run installs it)")
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        result = subprocess.run(
            [
                *(browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"),
                *("--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"),
                *(f"--virtual-time-budget={budget_ms}", "--dump-dom", url),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
    return result.stdout, console
