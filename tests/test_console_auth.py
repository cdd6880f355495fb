"""The console's login, its cookie on /api/v1, and the forged requests it refuses, over HTTP against a real
API (the browser's view of the same is tests/test_console.py)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.api.auth import new_token
from service.console.sessions import COOKIE
from service.embedded import free_port
from tests.support import Backends, Stack, StackFactory, api_command, refuses_to_start, service_env, wait_for

FOREIGN = "http://evil.example"


@dataclass
class Console:
    stack: Stack
    run_token: str
    read_token: str

    @property
    def origin(self) -> str:
        return self.stack.base_url

    def login(self, token: str) -> httpx.Client:
        """A client holding the session cookie of `token` (and no Authorization header)."""
        client = httpx.Client(base_url=self.stack.base_url, timeout=30)
        response = client.post("/login", data={"token": token, "next": "/"}, headers={"Origin": self.origin})
        assert response.status_code == 303, response.text
        assert COOKIE in client.cookies
        return client


@pytest.fixture(scope="module")
def console(start_stack: StackFactory) -> Console:
    run_token, run_entry = new_token("operator", ["read", "run"])
    read_token, read_entry = new_token("viewer", ["read"])
    stack = start_stack(AUTH_DISABLED="false", API_TOKENS=f"{run_entry};{read_entry}")
    return Console(stack, run_token, read_token)


@pytest.fixture
def operator(console: Console) -> Iterator[httpx.Client]:
    client = console.login(console.run_token)
    with closing(client):
        yield client


def _job_count(console: Console) -> int:
    headers = {"Authorization": f"Bearer {console.run_token}"}
    with console.stack.client() as client:
        return len(client.get("/api/v1/jobs?limit=500", headers=headers).json()["items"])


def test_a_visitor_without_a_session_is_sent_to_the_login_page(console: Console) -> None:
    with console.stack.client() as client:
        for path in ("/", "/run", "/schedules", "/jobs/00000000-0000-0000-0000-000000000000"):
            response = client.get(path)
            assert response.status_code == 303
            assert response.headers["location"].startswith("/login?next=")
        page = client.get("/login")
        assert client.get("/api/v1/jobs").status_code == 401
    assert page.status_code == 200
    assert '<input id="token" name="token" type="password"' in page.text


def test_a_wrong_token_gets_401_and_the_form_again(console: Console) -> None:
    with console.stack.client() as client:
        response = client.post("/login", data={"token": "not-a-token"}, headers={"Origin": console.origin})
    assert response.status_code == 401
    assert 'id="login-error"' in response.text
    assert 'id="login-form"' in response.text
    assert COOKIE not in response.cookies


def test_the_cookie_is_httponly_strict_and_expires(console: Console) -> None:
    with console.stack.client() as client:
        response = client.post(
            "/login", data={"token": console.run_token, "next": "/run"}, headers={"Origin": console.origin}
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/run"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "SameSite=strict", "Path=/", "Max-Age=28800"):
        assert attribute in cookie
    # Served over plain HTTP here; behind TLS (or a proxy saying so) the cookie is Secure as well.
    assert "Secure" not in cookie
    value = response.cookies[COOKIE]
    claims = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert claims["n"] == "operator"
    assert console.run_token not in value


def test_the_session_works_on_the_api_with_its_scopes(console: Console, operator: httpx.Client) -> None:
    assert operator.get("/api/v1/jobs").status_code == 200
    created = operator.post(
        "/api/v1/jobs", json={"playbook": "hello.yml"}, headers={"Origin": console.origin}
    )
    assert created.status_code == 202, created.text
    assert created.json()["submitted_by"] == "operator"
    with closing(console.login(console.read_token)) as viewer:
        assert viewer.get(f"/api/v1/jobs/{created.json()['id']}").status_code == 200
        refused = viewer.post(
            "/api/v1/jobs", json={"playbook": "hello.yml"}, headers={"Origin": console.origin}
        )
        assert refused.status_code == 403
        assert "lacks the 'run' scope" in refused.json()["detail"]
        page = viewer.get("/")
        assert 'id="nav-run"' not in page.text
        assert viewer.get("/run").status_code == 403
        form_post = viewer.post("/run", data={"playbook": "hello.yml"}, headers={"Origin": console.origin})
        assert form_post.status_code == 403
        job_page = viewer.get(f"/jobs/{created.json()['id']}")
        assert 'id="cancel"' not in job_page.text
        assert 'id="run-again"' not in job_page.text
    wait_for(operator, created.json()["id"])


@pytest.mark.parametrize("origin", [None, FOREIGN, "null", "http://127.0.0.1:1"])
def test_a_cookie_only_change_from_elsewhere_is_refused_and_stores_nothing(
    console: Console, operator: httpx.Client, origin: str | None
) -> None:
    before = _job_count(console)
    headers = {"Origin": origin} if origin else {}
    api_post = operator.post("/api/v1/jobs", json={"playbook": "hello.yml"}, headers=headers)
    form_post = operator.post("/run", data={"playbook": "hello.yml"}, headers=headers)
    assert api_post.status_code == 403, api_post.text
    assert form_post.status_code == 403, form_post.text
    assert api_post.json()["error"] == "Forbidden"
    assert _job_count(console) == before


def test_a_bearer_token_needs_no_origin(console: Console) -> None:
    """A browser never adds a bearer token by itself: a request that carries one was meant by its sender."""
    headers = {"Authorization": f"Bearer {console.run_token}"}
    with httpx.Client(base_url=console.stack.base_url, headers=headers, timeout=30) as client:
        response = client.post("/api/v1/jobs", json={"playbook": "hello.yml"}, headers={"Origin": FOREIGN})
        assert response.status_code == 202
        wait_for(client, response.json()["id"])


def test_behind_a_tls_proxy_the_browsers_https_origin_is_the_consoles_own(console: Console) -> None:
    """The proxy speaks plain HTTP to the service; the browser's Origin says https, with the same host."""
    https_origin = console.origin.replace("http://", "https://")
    with console.stack.client() as client:
        login = client.post("/login", data={"token": console.run_token}, headers={"Origin": https_origin})
        assert login.status_code == 303
        assert "Secure" in login.headers["set-cookie"]
        client.cookies.set(COOKIE, login.cookies[COOKIE])
        created = client.post(
            "/api/v1/jobs", json={"playbook": "hello.yml"}, headers={"Origin": https_origin}
        )
        assert created.status_code == 202, created.text
        wait_for(client, created.json()["id"])


@pytest.mark.parametrize("origin", [None, FOREIGN])
def test_a_login_from_another_site_is_refused(console: Console, origin: str | None) -> None:
    headers = {"Origin": origin} if origin else {}
    with console.stack.client() as client:
        response = client.post("/login", data={"token": console.run_token}, headers=headers)
    assert response.status_code == 403
    assert COOKIE not in response.cookies


@pytest.mark.parametrize("cookie", ["", "x.y", "e30.AAAA", "a" * 5000])
def test_a_forged_or_broken_cookie_is_no_session(console: Console, cookie: str) -> None:
    with console.stack.client() as client:
        client.cookies.set(COOKIE, cookie)
        assert client.get("/api/v1/jobs").status_code == 401
        assert client.get("/").status_code == 303


def test_a_cookie_signed_with_another_key_is_no_session(console: Console, operator: httpx.Client) -> None:
    payload, _, signature = operator.cookies[COOKIE].partition(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["n"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with console.stack.client() as client:
        client.cookies.set(COOKIE, f"{forged}.{signature}")
        assert client.get("/api/v1/jobs").status_code == 401


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:x"]
)
def test_login_never_redirects_off_the_site(console: Console, target: str) -> None:
    with console.stack.client() as client:
        response = client.post(
            "/login", data={"token": console.run_token, "next": target}, headers={"Origin": console.origin}
        )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_logout_ends_the_session(console: Console, operator: httpx.Client) -> None:
    response = operator.post("/logout", headers={"Origin": console.origin})
    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert COOKIE not in operator.cookies
    assert operator.get("/").status_code == 303


def test_pages_forbid_inline_scripts_and_framing(console: Console, operator: httpx.Client) -> None:
    for path in ("/", "/run", "/login"):
        response = operator.get(path, follow_redirects=False)
        assert response.status_code in (200, 303)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "unsafe-inline" not in policy
        assert "frame-ancestors 'none'" in policy
        assert response.headers["x-frame-options"] == "DENY"


def test_the_run_form_shows_the_apis_error_next_to_the_field_and_stores_nothing(
    console: Console, operator: httpx.Client
) -> None:
    before = _job_count(console)
    cases = {
        "extra_vars": {"extra_vars": "a: &x [1]\nb: *x"},
        "limit": {"limit": "@/etc/passwd"},
        "playbook": {"playbook": "../../etc/passwd.yml"},
        "inventory": {"inventory": "."},
    }
    for field, data in cases.items():
        form = {"playbook": "hello.yml", "priority": "default", **data}
        response = operator.post("/run", data=form, headers={"Origin": console.origin})
        assert response.status_code == 422, (field, response.text)
        assert f'data-field="{field}"' in response.text, (field, response.text)
    # A template key is refused by the same rule as the API's, and shown as text.
    response = operator.post(
        "/run",
        data={"playbook": "hello.yml", "extra_vars": "\"{{ lookup('pipe', 'id') }}\": 1"},
        headers={"Origin": console.origin},
    )
    assert response.status_code == 422
    assert "{{ lookup(&#39;pipe&#39;, &#39;id&#39;) }}" in response.text or "template" in response.text
    assert "<script" not in response.text.split("</head>")[1]
    assert _job_count(console) == before


def test_the_run_form_starts_a_run_and_lands_on_its_page(console: Console, operator: httpx.Client) -> None:
    response = operator.post(
        "/run",
        data={
            "playbook": "hello.yml",
            "inventory": "inventory/local1.yml",
            "extra_vars": "who: form\nwhen: 2024-01-01\n",
            "tags": "a, b",
            "check": "on",
            "priority": "high",
        },
        headers={"Origin": console.origin},
    )
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].removeprefix("/jobs/")
    job = wait_for(operator, job_id)
    assert job["extra_vars"] == {"who": "form", "when": "2024-01-01"}
    assert (job["tags"], job["check"], job["priority"]) == (["a", "b"], True, "high")
    assert '"who": "form"' in operator.get(f"/run?from={job_id}").text.replace("&#34;", '"')


def test_an_unknown_job_page_is_404(operator: httpx.Client) -> None:
    assert operator.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404
    assert operator.get("/jobs/not-an-id").status_code == 404


def test_the_api_refuses_to_start_with_tokens_but_no_session_secret(
    backends: Backends, tmp_path: Path
) -> None:
    _, entry = new_token("someone", ["read"])
    env = service_env(backends.database_server_url, backends.redis_url, tmp_path)
    env.update(AUTH_DISABLED="false", API_TOKENS=entry, SESSION_SECRET="")
    assert "SESSION_SECRET is not set" in refuses_to_start(api_command(free_port()), env)
    env["SESSION_SECRET"] = "short"
    assert "at least 32 characters" in refuses_to_start(api_command(free_port()), env)


def test_without_authentication_a_foreign_page_still_cannot_post(stack: Stack) -> None:
    with stack.client() as client:
        before = len(client.get("/api/v1/jobs?limit=500").json()["items"])
        api_post = client.post("/api/v1/jobs", json={"playbook": "hello.yml"}, headers={"Origin": FOREIGN})
        form_post = client.post("/run", data={"playbook": "hello.yml"}, headers={"Origin": FOREIGN})
        assert (api_post.status_code, form_post.status_code) == (403, 403)
        assert len(client.get("/api/v1/jobs?limit=500").json()["items"]) == before
        assert client.get("/").status_code == 200
