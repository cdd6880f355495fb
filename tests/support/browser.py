"""The browser tests' Chromium: a pytest plugin (tests/conftest.py loads it) and the page helper they use.

One headless Chromium per session; each test gets a fresh window with no cookies. Everything a page writes
to its JavaScript console is collected, page by page, and a test fails when any of it is an error (SEVERE:
an uncaught exception, console.error, a refused inline script or a failed load) unless the test said it
expects that message. Each page is photographed into the test's tmp_path and, for a person to look at,
into tests/output/screenshots/<module>/<test>/ (git-ignored; replaced on each run of the test).

Without Chromium and chromedriver the tests that need them are skipped (pytest's header says so); with
TEST_REQUIRE_SERVICES=true, as in CI, they fail instead.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import pytest
from pydantic import TypeAdapter
from selenium.common.exceptions import (
    NoAlertPresentException,
    StaleElementReferenceException,
    UnexpectedAlertPresentException,
)
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from harness.browser import Chromium, browser_log, chromium_programs, start_chromium
from harness.processes import ROOT

SCREENSHOTS = ROOT / "tests" / "output" / "screenshots"
WAIT_S = 30.0

T = TypeVar("T")


def _services_required() -> bool:
    # The same variable, read the same way, as tests/conftest.py's TestEnvironment.
    return TypeAdapter(bool).validate_python(os.environ.get("TEST_REQUIRE_SERVICES") or "false")


@dataclass(frozen=True)
class ConsoleEntry:
    page: str  # the URL the browser showed when the message was collected
    level: str
    message: str


@dataclass
class Browser:
    """The test's window, with its console messages per page and a screenshot of each page."""

    driver: WebDriver
    out: Path  # this test's screenshots (under tmp_path)
    keep: Path  # their copy under tests/output/screenshots
    entries: list[ConsoleEntry] = field(default_factory=list)
    allowed: list[re.Pattern[str]] = field(default_factory=list)
    shots: list[Path] = field(default_factory=list)
    _last_url: str | None = None

    # --- navigation and waiting ------------------------------------------------------------------------

    def open(self, url: str) -> None:
        """Go to `url` (and whatever it redirects to) and photograph the page once it has loaded."""
        self.collect()
        self.driver.get(url)
        self.snap()

    def wait(
        self, condition: Callable[[WebDriver], Literal[False] | T], what: str, timeout: float = WAIT_S
    ) -> T:
        """Wait for a WebDriverWait condition; a page reached meanwhile (a redirect) is photographed."""
        # A condition that read an element the page redrew meanwhile (the list redraws itself when any job
        # changes) is asked again, not failed.
        result: T = WebDriverWait(
            self.driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
        ).until(condition, f"timed out after {timeout:g} s waiting for {what}")
        if self._url_now() not in (None, self._last_url):
            self.snap()
        return result

    def element(self, css: str, timeout: float = WAIT_S) -> WebElement:
        """The element once it is on the page."""
        found: WebElement = self.wait(
            lambda driver: _first(driver.find_elements(By.CSS_SELECTOR, css)), css, timeout
        )
        return found

    def elements(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def text(self, css: str, timeout: float = WAIT_S) -> str:
        """What a person reads in the element (its rendered text), once it is on the page.

        Read in one script call: a page that redraws a list replaces the elements a WebElement points to."""
        # Wrapped in a list: an empty text is an answer, not a reason to wait on.
        found: list[str] = self.wait(
            lambda _: self.script(
                "const node = document.querySelector(arguments[0]); return node ? [node.innerText] : false",
                css,
            ),
            css,
            timeout,
        )
        return found[0]

    def attribute(self, css: str, name: str) -> str | None:
        """An attribute of the element now on the page (None when absent), read without a WebElement."""
        value: str | None = self.script(
            "const node = document.querySelector(arguments[0]);"
            " return node ? node.getAttribute(arguments[1]) : null",
            css,
            name,
        )
        return value

    def script(self, source: str, *args: Any) -> Any:
        return self.driver.execute_script(source, *args)

    def fetch(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        """A same-origin fetch() from the page, with its cookies: {"status": int, "text": str}."""
        result: dict[str, Any] = self.driver.execute_async_script(
            """
            const [method, path, body, done] = arguments;
            const init = {method, credentials: 'same-origin', headers: {}};
            if (body !== null) {
              init.headers['Content-Type'] = 'application/json';
              init.body = JSON.stringify(body);
            }
            fetch(path, init).then(
              async (response) => done({status: response.status, text: await response.text()}),
              (error) => done({status: 0, text: String(error)}),
            );
            """,
            method,
            path,
            body,
        )
        return result

    # --- console and screenshots -----------------------------------------------------------------------

    def allow_console(self, pattern: str) -> None:
        """A console error this test provokes on purpose (a refused request, say): not a failure."""
        self.allowed.append(re.compile(pattern))

    def collect(self) -> None:
        """Move what the browser's console holds into `entries`, attributed to the page shown now."""
        try:
            logs = browser_log(self.driver)
        except UnexpectedAlertPresentException:
            return
        page = self._last_url or "(no page)"
        self.entries += [ConsoleEntry(page, str(log["level"]), str(log["message"])) for log in logs]

    def errors(self) -> list[ConsoleEntry]:
        """SEVERE console messages so far, except those the test expects."""
        self.collect()
        return [
            entry
            for entry in self.entries
            if entry.level == "SEVERE" and not any(p.search(entry.message) for p in self.allowed)
        ]

    def assert_no_console_errors(self) -> None:
        errors = self.errors()
        assert not errors, "JavaScript console errors:\n" + "\n".join(
            f"  {entry.page}: {entry.message}" for entry in errors
        )

    def snap(self, label: str | None = None) -> Path | None:
        """Collect the current page's console messages and photograph it (not while an alert is open)."""
        url = self._url_now()
        if url is None:
            return None
        # The console's messages carry no page: they are put down to the page shown now. open() collects
        # before it navigates; a page left by a click counts its last messages with the next page.
        self._last_url = url
        self.collect()
        name = label or (re.sub(r"[^A-Za-z0-9]+", "-", url.split("://", 1)[-1].partition("/")[2]) or "root")
        path = self.out / f"{len(self.shots) + 1:02d}-{name.strip('-')[:60] or 'root'}.png"
        self.driver.save_screenshot(str(path))
        self.shots.append(path)
        shutil.copy2(path, self.keep / path.name)
        return path

    def _url_now(self) -> str | None:
        try:
            url: str = self.driver.current_url
        except UnexpectedAlertPresentException:
            return None
        return url


def _first(found: list[WebElement]) -> WebElement | Literal[False]:
    return found[0] if found else False


# --- the plugin ----------------------------------------------------------------------------------------


def pytest_report_header(config: pytest.Config) -> list[str]:
    programs = chromium_programs()
    if programs:
        return [f"ars browser: Chromium ({programs.browser}, {programs.driver})"]
    return [
        "ars browser: chromium and chromium-driver are not installed: tests/test_console.py is skipped"
        " (a failure with TEST_REQUIRE_SERVICES=true, as in CI)"
    ]


_OUTCOME = pytest.StashKey[pytest.TestReport]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # The browser fixture's teardown needs to know whether the test itself failed.
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report
    return report


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    """Chromium and chromedriver; the tests that need them are skipped without them, except in CI."""
    found = chromium_programs()
    if found is None:
        if _services_required():
            pytest.fail(
                "TEST_REQUIRE_SERVICES is set but chromium and chromium-driver are not installed"
                " (.ci/run installs them)"
            )
        pytest.skip("chromium and chromium-driver are not installed (see pytest's header)")
    return found


@pytest.fixture(scope="session")
def chrome(chromium: Chromium) -> Iterator[WebDriver]:
    """One headless Chromium for the session (a start costs about a second)."""
    driver = start_chromium(chromium)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(chrome: WebDriver, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Browser]:
    """A fresh window without cookies; at the end, no console errors on any page the test visited."""
    _fresh_window(chrome)
    out = tmp_path / "screenshots"
    out.mkdir()
    keep = SCREENSHOTS / Path(str(request.node.path)).stem / re.sub(r"[^\w.-]+", "_", request.node.name)
    shutil.rmtree(keep, ignore_errors=True)
    keep.mkdir(parents=True)
    page = Browser(chrome, out, keep)
    yield page
    outcome = request.node.stash.get(_OUTCOME, None)
    failed = outcome is None or outcome.failed
    if failed:
        _keep_evidence(page)
    errors = page.errors()
    if failed:
        # The test's own failure is the story; its console errors are printed beside it.
        for entry in errors:
            sys.stderr.write(f"console error on {entry.page}: {entry.message}\n")
        return
    page.snap("end")
    page.assert_no_console_errors()


def _fresh_window(driver: WebDriver) -> None:
    # Cookies belong to a host, not to a port: every stack on 127.0.0.1 would see another's session.
    driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
    old = driver.window_handles
    driver.switch_to.new_window("window")
    fresh = driver.current_window_handle
    for handle in old:
        driver.switch_to.window(handle)
        _dismiss_alert(driver)
        driver.close()
    driver.switch_to.window(fresh)
    browser_log(driver)  # what earlier tests' pages left behind is theirs


def _dismiss_alert(driver: WebDriver) -> None:
    with contextlib.suppress(NoAlertPresentException):
        driver.switch_to.alert.dismiss()


def _keep_evidence(page: Browser) -> None:
    try:
        _dismiss_alert(page.driver)
        page.snap("failure")
        (page.out / "failure.html").write_text(page.driver.page_source)
        shutil.copy2(page.out / "failure.html", page.keep / "failure.html")
    except Exception as exc:
        sys.stderr.write(f"could not keep the page of the failure: {exc}\n")
