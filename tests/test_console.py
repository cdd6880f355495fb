"""The web console in a real browser (headless Chromium) against a real API and worker.

Everything is done as a person would: typing into forms, clicking, accepting the confirm() dialog,
watching the live output. A test fails on any JavaScript console error of any page it visited
(tests/support/browser.py). The routes and DOM followed here are the console's contract (ids, the session
cookie, the Origin rule).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select

from service.api.auth import new_token
from tests.support import Stack, StackFactory, submit, wait_for
from tests.support.browser import Browser
from tests.support.stacks import restart_api

LOCAL1 = "inventory/local1.yml"
COOKIE = "ars_session"
# Chromium reports a document or fetch() answered with an error status as a console error; the tests that
# provoke one on purpose allow exactly that one.
REFUSED = r"Failed to load resource: the server responded with a status of {status}"
# What the browser logs while the API is down (the stream and the page's polls retry).
NETWORK_DOWN = r"net::ERR_(CONNECTION_REFUSED|INCOMPLETE_CHUNKED_ENCODING|EMPTY_RESPONSE|CONNECTION_RESET)"

# Scripts a page would run if a value reached it as HTML rather than as text: each would change the title.
SCRIPT = "<script>document.title=31337</script>"
IMAGE = "<img src=x onerror=document.title=31338>"
BOLD = "<b id=injected>bold</b>"
PAYLOAD = SCRIPT + IMAGE + BOLD


@dataclass
class Console:
    stack: Stack
    operator: str  # a token with the run and read scopes
    viewer: str  # read only

    def api(self, token: str | None = None) -> httpx.Client:
        return self.stack.client(headers={"Authorization": f"Bearer {token or self.operator}"})

    def url(self, path: str) -> str:
        return self.stack.base_url + path


@pytest.fixture(scope="module")
def console(start_stack: StackFactory) -> Console:
    operator, operator_entry = new_token("operator", ["run", "read"])
    viewer, viewer_entry = new_token("viewer", ["read"])
    stack = start_stack(AUTH_DISABLED="false", API_TOKENS=f"{operator_entry};{viewer_entry}")
    return Console(stack, operator, viewer)


@pytest.fixture
def api(console: Console) -> Iterator[httpx.Client]:
    with console.api() as client:
        yield client


# --- what the tests do and read on a page ---------------------------------------------------------------


def log_in(browser: Browser, console: Console, token: str, path: str = "/") -> None:
    """Visit `path` logged out, get the login page, type the token, land on `path`."""
    browser.open(console.url(path))
    browser.wait(ec.url_contains("/login"), "the login page")
    _type_token(browser, token)
    browser.wait(lambda d: d.current_url == console.url(path), f"{path} after logging in")


def _type_token(browser: Browser, token: str) -> None:
    field = browser.element("#login-form #token")
    assert field.get_attribute("type") == "password"
    field.clear()
    field.send_keys(token)
    browser.element("#login-submit").click()


def listed_jobs(browser: Browser) -> list[str | None]:
    """The ids of the list's rows, read in one script: the list redraws itself when any job changes, which
    would leave elements found one call earlier stale."""
    ids: list[str | None] = browser.script(
        "return Array.from(document.querySelectorAll('#jobs tr[data-job-id]'), (row) => row.dataset.jobId)"
    )
    return ids


def document_status(browser: Browser) -> int:
    """The HTTP status of the page shown (Navigation Timing)."""
    status: int = browser.script("return performance.getEntriesByType('navigation')[0].responseStatus")
    return status


def job_status(browser: Browser) -> str | None:
    status: str | None = browser.script(
        """
        const el = document.getElementById('job-status');
        if (!el) return null;
        const marked = el.dataset.status ? el : el.querySelector('[data-status]');
        return marked ? marked.dataset.status : null;
        """
    )
    return status


def output_lines(browser: Browser) -> list[str]:
    """The text of each line of #output. A blank line may hold a zero-width space (so that it keeps its
    height): it is not text a person reads."""
    lines: list[str] = browser.script(
        "return Array.from(document.querySelectorAll('#output .line'),"
        " (line) => line.textContent.replaceAll('\\u200b', ''))"
    )
    return lines


def wait_output_is_the_jobs(browser: Browser, api: httpx.Client, job_id: str) -> list[str]:
    """Wait until #output holds exactly the finished job's output (drawing may trail the stream's end)."""
    expected = stdout_lines(api, job_id)
    try:
        browser.wait(lambda _: output_lines(browser) == expected, "#output to hold the job's output", 15)
    except TimeoutException:
        assert output_lines(browser) == expected  # pytest shows where they differ
    return expected


def stream_state(browser: Browser) -> str | None:
    state: str | None = browser.script("return document.body.dataset.streamState || null")
    return state


def wait_job_status(browser: Browser, status: str, timeout: float = 60) -> None:
    browser.wait(lambda _: job_status(browser) == status, f"the job's status to be {status}", timeout)


def wait_stream_ended(browser: Browser, timeout: float = 60) -> None:
    browser.wait(lambda _: stream_state(browser) == "ended", "the stream to end", timeout)


def stdout_lines(api: httpx.Client, job_id: str) -> list[str]:
    """The job's output as GET /stdout has it (colours stripped), line by line."""
    response = api.get(f"/api/v1/jobs/{job_id}/stdout")
    assert response.status_code == 200, response.text
    return response.text.splitlines()


def unfold(browser: Browser, css: str) -> None:
    """Open the <details> the element sits in, if it is folded, by clicking its summary as a person would."""
    browser.element(css)
    summary = browser.script(
        "const details = document.querySelector(arguments[0]).closest('details');"
        " return details && !details.open ? details.querySelector('summary') : null",
        css,
    )
    if summary is not None:
        summary.click()


def request_shown(browser: Browser) -> dict[str, Any]:
    """The job's request as the page shows it (#job-request, JSON text)."""
    unfold(browser, "#job-request")
    shown: dict[str, Any] = json.loads(browser.text("#job-request"))
    return shown


def job_id_of(browser: Browser) -> str:
    url: str = browser.driver.current_url
    assert "/jobs/" in url, url
    return url.rsplit("/jobs/", 1)[1].split("?")[0]


def session_cookie(browser: Browser) -> dict[str, Any]:
    found = [cookie for cookie in browser.driver.get_cookies() if cookie["name"] == COOKIE]
    assert len(found) == 1, browser.driver.get_cookies()
    cookie: dict[str, Any] = found[0]
    return cookie


def mark_page(browser: Browser) -> None:
    """A flag that only survives as long as the page is not reloaded."""
    browser.script("window.__sameDocument = true")


def same_page(browser: Browser) -> bool:
    return bool(browser.script("return window.__sameDocument === true"))


# --- logging in and out ---------------------------------------------------------------------------------


def test_log_in_with_a_token(browser: Browser, console: Console, api: httpx.Client) -> None:
    """A visitor gets the login page; a wrong token is refused (401, #login-error); the right one lands on
    the page asked for, with an HttpOnly, SameSite=Strict session cookie the page's scripts cannot read."""
    job = submit(api, {"playbook": "hello.yml", "inventory": LOCAL1})
    browser.allow_console(REFUSED.format(status=401))

    browser.open(console.url(f"/jobs/{job['id']}"))
    browser.wait(ec.url_contains("/login"), "the login page")
    assert "next=" in browser.driver.current_url
    assert browser.elements("#login-error") == []

    _type_token(browser, "not-" + console.operator)
    error = browser.element("#login-error")
    assert error.is_displayed() and error.text.strip()
    assert error.get_attribute("role") == "alert"
    assert document_status(browser) == 401
    assert COOKIE not in {cookie["name"] for cookie in browser.driver.get_cookies()}

    # The form is shown again, still going to the job after logging in.
    _type_token(browser, console.operator)
    browser.wait(lambda d: d.current_url == console.url(f"/jobs/{job['id']}"), "the job page")
    assert browser.text("#whoami") == "operator"
    cookie = session_cookie(browser)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/"
    assert COOKIE not in browser.script("return document.cookie")

    browser.element("#nav-jobs").click()
    browser.wait(lambda d: d.current_url == console.url("/"), "the job list")
    browser.element(f"#jobs tr[data-job-id='{job['id']}']")


def test_log_out(browser: Browser, console: Console) -> None:
    log_in(browser, console, console.operator)
    browser.element("#logout button, #logout [type=submit]").click()
    browser.wait(ec.url_contains("/login"), "the login page after logging out")
    browser.element("#login-form")
    assert COOKIE not in {cookie["name"] for cookie in browser.driver.get_cookies()}

    browser.open(console.url("/"))
    browser.wait(ec.url_contains("/login"), "the login page for /")
    assert browser.elements("#jobs") == []
    assert browser.elements("#whoami") == [] or browser.text("#whoami") != "operator"


# --- running, watching, cancelling ----------------------------------------------------------------------


def test_run_hello_from_the_form(browser: Browser, console: Console, api: httpx.Client) -> None:
    """The run form starts hello.yml; its page shows the greeting as it comes, then successful, the recap
    and the events."""
    log_in(browser, console, console.operator)
    browser.element("#nav-run").click()
    form = browser.element("#run-form")
    Select(browser.element("#playbook")).select_by_value("hello.yml")
    option = Select(browser.element("#playbook")).first_selected_option.text
    assert "hello.yml" in option and "Say hello" in option
    browser.element("#inventory").send_keys(LOCAL1)
    browser.element("#extra_vars").send_keys('{"who": "console"}')
    form.find_element(By.CSS_SELECTOR, "#run-submit").click()

    browser.wait(ec.url_matches(r"/jobs/[0-9a-f-]{36}$"), "the new job's page")
    job_id = job_id_of(browser)
    browser.wait(
        lambda _: "Hello, console!" in browser.text("#output"), "the greeting in #output", timeout=60
    )
    wait_job_status(browser, "successful")
    wait_stream_ended(browser)
    browser.element("#recap tr[data-host='h1']")
    unfold(browser, "#events")
    browser.element("#events tr[data-seq]")
    browser.element("#event-host").send_keys("nobody")
    browser.wait(
        lambda _: not browser.elements("#events tr[data-seq]"), "the host filter to hide every event"
    )
    assert browser.element("#download-stdout").get_attribute("href") == console.url(
        f"/api/v1/jobs/{job_id}/stdout"
    )
    request = request_shown(browser)
    assert request["playbook"] == "hello.yml"
    assert request["extra_vars"] == {"who": "console"}
    wait_output_is_the_jobs(browser, api, job_id)
    # Finished: nothing left to cancel.
    assert not [button for button in browser.elements("#cancel") if button.is_displayed()]
    browser.snap("finished")


def test_output_arrives_line_by_line(browser: Browser, console: Console, api: httpx.Client) -> None:
    """A slow playbook's lines appear while it runs, a few at a time, not all at the end."""
    # Logged in first: the page must be open before the run prints its first line.
    log_in(browser, console, console.operator)
    job = submit(
        api, {"playbook": "lines.yml", "inventory": LOCAL1, "extra_vars": {"count": 8, "pause": 0.3}}
    )
    browser.open(console.url(f"/jobs/{job['id']}"))
    seen: list[int] = []

    def finished_after_growing(_: Any) -> bool:
        # Sampled every 50 ms: the line counts shown while the stream was still open.
        state, count = stream_state(browser), len(browser.elements("#output .line"))
        if state != "ended" and (not seen or seen[-1] != count):
            seen.append(count)
        return state == "ended"

    browser.wait(finished_after_growing, "the run to end", timeout=60)
    growing = [count for count in seen if count > 0]
    assert len(growing) >= 4, f"the output came in {len(growing)} steps: {seen}"
    assert growing == sorted(growing)
    wait_job_status(browser, "successful")
    lines = wait_output_is_the_jobs(browser, api, job["id"])
    assert [line.strip() for line in lines if line.strip().startswith('"msg"')] == [
        f'"msg": "line {n}"' for n in range(1, 9)
    ]


def test_cancel_a_running_job(browser: Browser, console: Console, api: httpx.Client, tmp_path: Path) -> None:
    """The Cancel button asks first (confirm()), then the job stops: status canceled, on the page and in
    the API, and the button goes away."""
    job = submit(
        api, {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(tmp_path / "g")}}
    )
    wait_for(api, job["id"], {"running"})
    log_in(browser, console, console.operator, f"/jobs/{job['id']}")
    wait_job_status(browser, "running")
    assert stream_state(browser) == "open"

    # Dismissed: nothing happens.
    browser.element("#cancel").click()
    browser.wait(ec.alert_is_present(), "the confirm() dialog").dismiss()
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
    assert job_status(browser) == "running"

    browser.element("#cancel").click()
    browser.wait(ec.alert_is_present(), "the confirm() dialog").accept()
    wait_job_status(browser, "canceled")
    wait_stream_ended(browser)
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "canceled"
    assert not [button for button in browser.elements("#cancel") if button.is_displayed()]


def test_run_again(browser: Browser, console: Console, api: httpx.Client) -> None:
    """Run again resubmits the same request and shows the new job."""
    first = submit(api, {"playbook": "hello.yml", "inventory": LOCAL1, "extra_vars": {"who": "again"}})
    wait_for(api, first["id"])
    log_in(browser, console, console.operator, f"/jobs/{first['id']}")
    wait_stream_ended(browser)
    browser.element("#run-again").click()
    browser.wait(
        lambda d: "/jobs/" in d.current_url and job_id_of(browser) != first["id"], "the new job's page"
    )
    second = job_id_of(browser)
    browser.wait(lambda _: "Hello, again!" in browser.text("#output"), "the greeting", timeout=60)
    wait_job_status(browser, "successful")
    assert api.get(f"/api/v1/jobs/{second}").json()["extra_vars"] == {"who": "again"}


def test_stream_resumes_after_the_api_restarts(browser: Browser, console: Console, api: httpx.Client) -> None:
    """The API process dies mid-run and comes back: the page's stream reconnects and the output ends up
    exactly the job's, no line lost or shown twice."""
    browser.allow_console(NETWORK_DOWN)
    browser.allow_console(REFUSED.format(status=r"5\d\d"))
    log_in(browser, console, console.operator)
    job = submit(
        api, {"playbook": "lines.yml", "inventory": LOCAL1, "extra_vars": {"count": 14, "pause": 0.3}}
    )
    browser.open(console.url(f"/jobs/{job['id']}"))
    browser.wait(lambda _: len(browser.elements("#output .line")) >= 6, "the first lines")
    before = len(browser.elements("#output .line"))
    assert stream_state(browser) == "open"
    browser.script(
        """
        window.__streamStates = [];
        new MutationObserver(() => window.__streamStates.push(document.body.dataset.streamState))
          .observe(document.body, {attributes: true, attributeFilter: ['data-stream-state']});
        """
    )
    assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"

    restart_api(console.stack)

    wait_job_status(browser, "successful", timeout=90)
    wait_stream_ended(browser)
    lines = wait_output_is_the_jobs(browser, api, job["id"])
    assert len(lines) > before
    # The stream was cut, and the page said so while it reconnected.
    states = browser.script("return window.__streamStates")
    assert "waiting" in states and states[-1] == "ended", states
    assert [line.strip() for line in lines if line.strip().startswith('"msg"')] == [
        f'"msg": "line {n}"' for n in range(1, 15)
    ]


# --- scopes, forged requests, hostile values ------------------------------------------------------------


def test_a_read_token_sees_but_cannot_act(
    browser: Browser, console: Console, api: httpx.Client, tmp_path: Path
) -> None:
    """A read token's session: no Run link, no Cancel, no Run again; the job list still updates live; the
    API refuses its POSTs (403) even from the console's own origin, and stores nothing."""
    browser.allow_console(REFUSED.format(status=403))
    gate = tmp_path / "gate"
    job = submit(api, {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(gate)}})
    wait_for(api, job["id"], {"running"})

    log_in(browser, console, console.viewer)
    assert browser.text("#whoami") == "viewer"
    assert browser.elements("#nav-run") == []
    row = f"#jobs tr[data-job-id='{job['id']}']"
    browser.element(row)
    assert browser.attribute(row, "data-status") == "running"
    mark_page(browser)
    gate.touch()
    browser.wait(
        lambda _: browser.attribute(row, "data-status") == "successful",
        "the row to turn successful",
        timeout=60,
    )
    assert same_page(browser), "the list was reloaded instead of updated"
    assert "successful" in browser.text(f"{row} td.status")

    running = submit(
        api, {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": str(tmp_path / "never")}}
    )
    wait_for(api, running["id"], {"running"})
    browser.open(console.url(f"/jobs/{running['id']}"))
    wait_job_status(browser, "running")
    assert browser.elements("#cancel") == []
    assert browser.elements("#run-again") == []
    assert browser.elements("#nav-run") == []

    count = console.stack.count_jobs()
    posted = browser.fetch("POST", "/api/v1/jobs", {"playbook": "hello.yml", "inventory": LOCAL1})
    assert posted["status"] == 403, posted
    canceled = browser.fetch("POST", f"/api/v1/jobs/{running['id']}/cancel")
    assert canceled["status"] == 403, canceled
    assert console.stack.count_jobs() == count
    assert api.get(f"/api/v1/jobs/{running['id']}").json()["status"] == "running"

    # The run form, asked for by its address: refused with the reason, no form.
    browser.open(console.url("/run"))
    browser.wait(lambda _: document_status(browser) == 403, "the refusal of the run form")
    assert "lacks the run scope" in browser.element("#form-error").text
    assert browser.elements("#run-form") == []
    assert console.stack.count_jobs() == count
    api.post(f"/api/v1/jobs/{running['id']}/cancel")


def test_hostile_values_are_shown_as_text(browser: Browser, console: Console, api: httpx.Client) -> None:
    """Markup in extra vars (typed into the run form), in labels and in the task's output is shown as the
    literal text and runs nothing."""
    labeled = submit(api, {"playbook": "hello.yml", "inventory": LOCAL1, "labels": {"note": PAYLOAD}})
    log_in(browser, console, console.operator, "/run")
    Select(browser.element("#playbook")).select_by_value("echo_vars.yml")
    browser.element("#inventory").send_keys(LOCAL1)
    browser.element("#extra_vars").send_keys(json.dumps({"payload": PAYLOAD}))
    browser.element("#run-submit").click()
    browser.wait(ec.url_matches(r"/jobs/[0-9a-f-]{36}$"), "the new job's page")
    job_id = job_id_of(browser)
    wait_stream_ended(browser, timeout=60)
    wait_job_status(browser, "successful")

    assert request_shown(browser)["extra_vars"] == {"payload": PAYLOAD}
    assert PAYLOAD in browser.text("#output")  # Ansible's debug prints the value as it is
    _nothing_ran(browser)
    browser.snap("payload-shown")

    browser.open(console.url(f"/run?from={job_id}"))
    assert PAYLOAD in (browser.element("#extra_vars").get_attribute("value") or "")
    _nothing_ran(browser)

    wait_for(api, labeled["id"])
    browser.open(console.url("/"))
    assert PAYLOAD in browser.element(f"#jobs tr[data-job-id='{labeled['id']}'] td.labels").text
    _nothing_ran(browser)
    browser.open(console.url(f"/jobs/{labeled['id']}"))
    wait_stream_ended(browser)
    assert request_shown(browser)["labels"] == {"note": PAYLOAD}
    _nothing_ran(browser)


def _nothing_ran(browser: Browser) -> None:
    assert browser.driver.title not in {"31337", "31338"}
    assert browser.elements("#injected") == []
    # The page's own scripts: console.js, and the job as JSON data (which Jinja's tojson escapes).
    assert browser.elements("script:not([src]):not(#job-data), img, b#injected") == []
    data = browser.script(
        "const node = document.getElementById('job-data'); return node ? node.textContent : ''"
    )
    assert "<script>" not in data


def test_a_forged_cross_site_post_is_refused(browser: Browser, console: Console, api: httpx.Client) -> None:
    """The session cookie alone, sent from another site's page (Origin: http://evil.example, or null) or
    with no Origin, changes nothing: 403 and no job stored, no job canceled; a foreign login or logout is
    refused too."""
    job = submit(
        api,
        {"playbook": "gate.yml", "inventory": LOCAL1, "extra_vars": {"gate": f"/nonexistent/{uuid.uuid4()}"}},
    )
    wait_for(api, job["id"], {"running"})
    log_in(browser, console, console.operator)
    cookie = session_cookie(browser)
    count = console.stack.count_jobs()
    body = {"playbook": "hello.yml", "inventory": LOCAL1}
    form = {"playbook": "hello.yml", "inventory": LOCAL1, "extra_vars": ""}
    with console.stack.client(cookies={COOKIE: cookie["value"]}) as forged:
        for origin in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {}):
            response = forged.post("/api/v1/jobs", json=body, headers=origin)
            assert response.status_code == 403, (origin, response.text)
            assert response.json()["error"].lower() == "forbidden"
            response = forged.post(f"/api/v1/jobs/{job['id']}/cancel", headers=origin)
            assert response.status_code == 403, (origin, response.text)
            response = forged.post("/run", data=form, headers=origin)
            assert response.status_code == 403, (origin, response.text)
        for origin in ({"Origin": "http://evil.example"}, {"Origin": "null"}):
            response = forged.post("/logout", headers=origin)
            assert response.status_code == 403, (origin, response.text)
            # Logging the visitor in as someone else (login CSRF) is refused as well.
            response = forged.post("/login", data={"token": console.viewer, "next": "/"}, headers=origin)
            assert response.status_code == 403, (origin, response.text)
            assert COOKIE not in response.cookies
        assert console.stack.count_jobs() == count
        assert api.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
        # The same cookie with the console's own origin is accepted: the Origin was the only difference.
        own = forged.get("/api/v1/jobs", params={"limit": 1})
        assert own.status_code == 200, own.text
        canceled = forged.post(f"/api/v1/jobs/{job['id']}/cancel", headers={"Origin": console.stack.base_url})
        assert canceled.status_code == 202, canceled.text


# --- without authentication -----------------------------------------------------------------------------


def test_console_without_authentication(browser: Browser, stack: Stack) -> None:
    """AUTH_DISABLED=true: every page opens without a login, as anonymous, without a logout button; the
    filters of the job list narrow it."""
    with stack.client() as client:
        hello = submit(client, {"playbook": "hello.yml", "inventory": LOCAL1})
        debug = submit(client, {"playbook": "debug.yml", "inventory": LOCAL1})
        for job in (hello, debug):
            wait_for(client, job["id"])
    browser.open(stack.base_url + "/")
    assert browser.text("#whoami") == "anonymous"
    assert browser.elements("#logout") == []
    browser.element(f"#jobs tr[data-job-id='{hello['id']}']")

    browser.element("#filter-playbook").send_keys("debug.yml")
    browser.element("#filters [type=submit], #filters button").click()
    browser.wait(ec.url_contains("playbook=debug.yml"), "the filtered list")
    shown = set(listed_jobs(browser))
    assert debug["id"] in shown and hello["id"] not in shown

    browser.element("#nav-run").click()
    browser.element("#run-form")
    browser.open(stack.base_url + f"/jobs/{hello['id']}")
    wait_stream_ended(browser)
    assert "Hello, world!" in browser.text("#output")


def test_the_list_filters_and_pages_and_the_job_page_puts_failures_first(
    browser: Browser, stack: Stack
) -> None:
    """Status and label filters, the cursor's "Older" link, a failed host first in the recap, and the
    events list narrowed to one host and to failures."""
    label = f"batch={uuid.uuid4().hex[:8]}"
    key, value = label.split("=")
    with stack.client() as client:
        jobs = [
            submit(
                client, {"playbook": playbook, "inventory": "inventory/local3.yml", "labels": {key: value}}
            )
            for playbook in ("debug.yml", "fail_h2.yml", "debug.yml")
        ]
        finished = {job["id"]: wait_for(client, job["id"])["status"] for job in jobs}
    assert sorted(finished.values()) == ["failed", "successful", "successful"]

    def shown() -> list[str | None]:
        return listed_jobs(browser)

    browser.open(stack.base_url + f"/?label={label}&limit=2")
    browser.wait(lambda _: len(shown()) == 2, "the first page of the batch")
    first_page = shown()
    assert first_page == [jobs[2]["id"], jobs[1]["id"]]  # newest first
    browser.element("#older").click()
    browser.wait(lambda _: shown() == [jobs[0]["id"]], "the older page")
    assert browser.elements("#older:not([hidden])") == []

    browser.open(stack.base_url + f"/?label={label}")
    Select(browser.element("#filter-status")).select_by_value("failed")
    browser.element("#filters button").click()
    browser.wait(lambda _: shown() == [jobs[1]["id"]], "the failed job alone")
    assert browser.text(f"#jobs tr[data-job-id='{jobs[1]['id']}'] td.status") == "failed"

    browser.open(stack.base_url + f"/jobs/{jobs[1]['id']}")
    wait_stream_ended(browser)
    hosts = [row.get_attribute("data-host") for row in browser.elements("#recap tr[data-host]")]
    assert hosts == ["h2", "h1", "h3"]
    unfold(browser, "#event-host")
    browser.element("#event-failed").click()
    browser.wait(lambda _: len(browser.elements("#events tr[data-seq]")) == 1, "the failed event alone")
    assert "h2" in browser.text("#events tbody")
    browser.element("#event-failed").click()
    browser.element("#event-host").send_keys("h3")
    browser.wait(
        lambda _: (
            {
                row.find_element(By.CSS_SELECTOR, "td:nth-child(3)").text
                for row in browser.elements("#events tr[data-seq]")
            }
            == {"h3"}
        ),
        "the events of h3 alone",
    )


def test_a_waiting_run_says_what_it_waits_for_and_the_form_asks_for_locks(
    browser: Browser, console: Console, api: httpx.Client, tmp_path: Path
) -> None:
    """A run queued behind another's lease shows its hosts, locks and a link to the holder, then starts
    when the holder ends (the page polls). The run form sends `exclusive` and `locks`."""
    gate = tmp_path / "gate"
    holder = submit(
        api,
        {
            "playbook": "gate.yml",
            "inventory": LOCAL1,
            "extra_vars": {"gate": str(gate)},
            "exclusive": True,
            "locks": ["lb-pool"],
        },
    )
    wait_for(api, holder["id"], {"running"})
    log_in(browser, console, console.operator)
    browser.element("#nav-run").click()
    Select(browser.element("#playbook")).select_by_value("hello.yml")
    browser.element("#inventory").send_keys(LOCAL1)
    browser.element("#exclusive").click()
    browser.element("#locks").send_keys("lb-pool, dns")
    browser.element("#run-submit").click()
    browser.wait(ec.url_matches(r"/jobs/[0-9a-f-]{36}$"), "the new job's page")
    waiter = job_id_of(browser)
    browser.wait(lambda _: browser.element("#job-waiting").is_displayed(), "the waiting line", timeout=30)
    assert browser.text("#job-waiting") == (
        f"Waiting for hosts h1 and locks lb-pool, held by or promised to {holder['id'][:8]}"
    )
    link = browser.element("#job-waiting a")
    assert link.get_attribute("href") == console.url(f"/jobs/{holder['id']}")
    assert browser.text("#job-targets") == "h1 (exclusive)"
    assert browser.text("#job-locks") == "dns, lb-pool"
    assert job_status(browser) == "queued"
    browser.snap("waiting")
    browser.open(console.url("/"))
    row = f"#jobs tr[data-job-id='{waiter}'] td.status"
    browser.wait(lambda _: "waiting for a lock" in browser.text(row), "the list to say the run waits")
    assert "waiting" not in browser.text(f"#jobs tr[data-job-id='{holder['id']}'] td.status")
    browser.open(console.url(f"/jobs/{waiter}"))
    gate.touch()
    wait_job_status(browser, "successful")
    assert not browser.element("#job-waiting").is_displayed()
    assert (
        api.get(f"/api/v1/jobs/{waiter}").json()["started_at"] >= wait_for(api, holder["id"])["finished_at"]
    )
