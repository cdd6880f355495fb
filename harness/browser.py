"""Headless Chromium driven by Selenium, for the console's browser tests and its benchmark.

Only the distribution's Chromium and chromedriver are used (Debian's `chromium`, `chromium-driver`): the
driver's path is always given, and Selenium Manager is told to stay offline, so nothing ever downloads a
browser or a driver.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver",)
# Where Debian puts them when /usr/bin is not on PATH (a minimal CI environment).
CHROMIUM_FALLBACK = Path("/usr/bin/chromium")
DRIVER_FALLBACK = Path("/usr/bin/chromedriver")


@dataclass(frozen=True)
class Chromium:
    browser: str
    driver: str


def _program(names: tuple[str, ...], fallback: Path) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return str(fallback) if fallback.exists() else None


def chromium_programs() -> Chromium | None:
    """Chromium and its chromedriver; None when either is missing."""
    browser = _program(CHROMIUM_NAMES, CHROMIUM_FALLBACK)
    driver = _program(DRIVER_NAMES, DRIVER_FALLBACK)
    return Chromium(browser, driver) if browser and driver else None


def start_chromium(programs: Chromium, *, width: int = 1280, height: int = 900) -> webdriver.Chrome:
    """A headless Chromium session that records the page's JavaScript console."""
    # Selenium Manager runs whenever a path is missing; offline it fails instead of fetching anything.
    os.environ["SE_OFFLINE"] = "true"

    options = webdriver.ChromeOptions()
    options.binary_location = programs.browser
    for argument in (
        "--headless=new",
        # The tests run as root in a container: Chromium's sandbox needs user namespaces it may not have.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        f"--window-size={width},{height}",
    ):
        options.add_argument(argument)
    # Every console message of the page (console.*, uncaught exceptions, CSP refusals, failed loads).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # A confirm() left open must fail the next command loudly, not be dismissed behind the test's back.
    options.set_capability("unhandledPromptBehavior", "ignore")
    return webdriver.Chrome(service=Service(executable_path=programs.driver), options=options)


def browser_log(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The console messages the browser holds, which it forgets once read."""
    logs: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]  # unannotated
    return logs
