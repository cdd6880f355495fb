"""Bad input gets a clear error naming the field, and nothing is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.support import Stack

VALID: dict[str, Any] = {"playbook": "debug.yml", "inventory": "inventory/local3.yml"}

# (case id, body, field the detail must name)
BAD_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("unknown playbook", {"playbook": "nope.yml"}, "playbook"),
    ("playbook with ..", {"playbook": "../playbooks/hello.yml"}, "playbook"),
    ("playbook nested ..", {"playbook": "nested/../../conftest.py"}, "playbook"),
    ("absolute playbook", {"playbook": "/etc/passwd"}, "playbook"),
    ("symlink escape", {"playbook": "escape.yml"}, "playbook"),
    ("NUL in playbook", {"playbook": "debug.yml\u0000.yml"}, "playbook"),
    ("not a yaml file", {"playbook": "notes.txt"}, "playbook"),
    ("directory as playbook", {"playbook": "nested"}, "playbook"),
    ("playbook wrong type", {"playbook": 5}, "playbook"),
    ("playbook missing", {"inventory": "inventory/local3.yml"}, "playbook"),
    ("playbook too long", {"playbook": "a" * 513 + ".yml"}, "playbook"),
    # 300 characters, 600 bytes in one path component: more than a file name can hold (ENAMETOOLONG).
    ("playbook name too long", {"playbook": "\u0080" * 300 + ".yml"}, "playbook"),
    ("inventory name too long", {**VALID, "inventory": "i" * 300}, "inventory"),
    ("inventory escapes", {**VALID, "inventory": "../../etc/hosts"}, "inventory"),
    ("inventory absolute", {**VALID, "inventory": "/etc/hosts"}, "inventory"),
    ("inventory missing file", {**VALID, "inventory": "inventory/none.yml"}, "inventory"),
    ("inventory wrong type", {**VALID, "inventory": ["h1"]}, "inventory"),
    ("inline group not an object", {**VALID, "inventory": {"all": "h1"}}, "inventory"),
    ("extra_vars a list", {**VALID, "extra_vars": ["a"]}, "extra_vars"),
    ("extra_vars a string", {**VALID, "extra_vars": "a=1"}, "extra_vars"),
    ("verbosity too high", {**VALID, "verbosity": 5}, "verbosity"),
    ("verbosity negative", {**VALID, "verbosity": -1}, "verbosity"),
    ("verbosity as string", {**VALID, "verbosity": "2"}, "verbosity"),
    ("check as string", {**VALID, "check": "true"}, "check"),
    ("forks zero", {**VALID, "forks": 0}, "forks"),
    ("timeout zero", {**VALID, "timeout": 0}, "timeout"),
    ("timeout as float", {**VALID, "timeout": 1.5}, "timeout"),
    ("timeout over the maximum", {**VALID, "timeout": 10**9}, "timeout"),
    ("limit option", {**VALID, "limit": "--list-hosts"}, "limit"),
    ("limit short option", {**VALID, "limit": "-i/etc/passwd"}, "limit"),
    ("limit control char", {**VALID, "limit": "h1\nh2"}, "limit"),
    ("tags option", {**VALID, "tags": ["--vault-password-file=/x"]}, "tags"),
    ("tags not a list", {**VALID, "tags": "one"}, "tags"),
    ("tag with comma", {**VALID, "tags": ["one,two"]}, "tags"),
    ("skip_tags option", {**VALID, "skip_tags": ["-x"]}, "skip_tags"),
    ("priority unknown", {**VALID, "priority": "urgent"}, "priority"),
    ("labels not strings", {**VALID, "labels": {"team": 1}}, "labels"),
    ("label key invalid", {**VALID, "labels": {"bad key": "x"}}, "labels"),
    ("label control char", {**VALID, "labels": {"team": "a\u0007b"}}, "labels"),
    ("unknown field", {**VALID, "playbok": "debug.yml"}, "playbok"),
    ("unknown source type", {**VALID, "source": {"type": "s3"}}, "source"),
    (
        "git ref option",
        {**VALID, "source": {"type": "git", "repo": "https://x/y/z", "ref": "--upload-pack=x"}},
        "source.ref",
    ),
    (
        "git not configured",
        {**VALID, "source": {"type": "git", "repo": "https://gitlab.example/org/repo"}},
        "source.repo",
    ),
    ("unknown field in source", {**VALID, "source": {"type": "bundled", "x": 1}}, "source"),
    # URL-encoded and look-alike path forms are names, never decoded: they do not exist in the source.
    ("URL-encoded ..", {"playbook": "..%2f..%2fetc%2fpasswd"}, "playbook"),
    ("double-encoded ..", {"playbook": "%252e%252e/escape.yml"}, "playbook"),
    ("URL-encoded NUL", {"playbook": "debug.yml%00.txt"}, "playbook"),
    ("backslash ..", {"playbook": "..\\..\\etc\\passwd"}, "playbook"),
    ("inventory through a symlink", {**VALID, "inventory": "escape.yml"}, "inventory"),
    ("inventory NUL", {**VALID, "inventory": "inventory/local3.yml\u0000"}, "inventory"),
    # Option injection.
    ("limit option after spaces", {**VALID, "limit": "-l"}, "limit"),
    ("tag with newline", {**VALID, "tags": ["a\nb"]}, "tags"),
    ("git ref short option", {**VALID, "source": {"type": "git", "repo": "https://x/y", "ref": "-c"}}, "ref"),
    # Huge strings.
    ("label value too long", {**VALID, "labels": {"team": "x" * 257}}, "labels"),
    ("limit too long", {**VALID, "limit": "h" * 1025}, "limit"),
    ("tag too long", {**VALID, "tags": ["t" * 129]}, "tags"),
    ("too many tags", {**VALID, "tags": ["t"] * 101}, "tags"),
    ("too many labels", {**VALID, "labels": {f"k{i}": "v" for i in range(33)}}, "labels"),
    # Control and look-alike characters in labels.
    ("label C1 control", {**VALID, "labels": {"team": "a\u0085b"}}, "labels"),
    ("label bidi override", {**VALID, "labels": {"team": "abc\u202edef"}}, "labels"),
    ("label line separator", {**VALID, "labels": {"team": "a\u2028b"}}, "labels"),
    ("label DEL", {**VALID, "labels": {"team": "a\u007fb"}}, "labels"),
    ("label key control", {**VALID, "labels": {"te\nam": "x"}}, "labels"),
    # Variables that would make the worker execute something or read another path.
    *[
        (f"extra var {name}", {**VALID, "extra_vars": {name: "x"}}, f"extra_vars.{name}")
        for name in (
            "ansible_connection",
            "ansible_ssh_common_args",
            "ansible_ssh_extra_args",
            "ansible_become_exe",
            "ansible_ssh_executable",
            "ansible_shell_executable",
            "ansible_shell_type",
            "ansible_python_interpreter",
            "ansible_paramiko_proxy_command",
            "ansible_ssh_private_key_file",
            "ansible_remote_tmp",
            "ANSIBLE_CONNECTION",
            "http_proxy",
            "my_proxy_host",
        )
    ],
    ("extra var name with a dash", {**VALID, "extra_vars": {"a-b": 1}}, "extra_vars.a-b"),
    ("extra var name with a digit first", {**VALID, "extra_vars": {"1a": 1}}, "extra_vars.1a"),
    ("extra var name a keyword", {**VALID, "extra_vars": {"class": 1}}, "extra_vars.class"),
    ("extra var name empty", {**VALID, "extra_vars": {"": 1}}, "extra_vars."),
    (
        "ansible_host an option",
        {**VALID, "extra_vars": {"ansible_host": "-oProxyCommand=id"}},
        "ansible_host",
    ),
    ("ansible_user with a space", {**VALID, "extra_vars": {"ansible_user": "root -v"}}, "ansible_user"),
    ("ansible_port a string", {**VALID, "extra_vars": {"ansible_port": "22 -oX=y"}}, "ansible_port"),
    ("ansible_password", {**VALID, "extra_vars": {"ansible_password": "secret"}}, "ansible_password"),
    (
        "inline host var",
        {**VALID, "inventory": {"all": {"hosts": {"h1": {"ansible_connection": "local"}}}}},
        "inventory.all.hosts.h1.ansible_connection",
    ),
    (
        "inline group var",
        {**VALID, "inventory": {"all": {"vars": {"ansible_ssh_common_args": "-oProxyCommand=id"}}}},
        "inventory.all.vars.ansible_ssh_common_args",
    ),
    (
        "inline child group var",
        {
            **VALID,
            "inventory": {"all": {"children": {"web": {"vars": {"ansible_python_interpreter": "/x"}}}}},
        },
        "inventory.all.children.web.vars.ansible_python_interpreter",
    ),
    (
        "inline host named as an option",
        {**VALID, "inventory": {"all": {"hosts": {"-oProxyCommand=id": None}}}},
        "inventory.all.hosts.-oProxyCommand=id",
    ),
    (
        "inline inventory plugin",
        {**VALID, "inventory": {"plugin": "ansible.builtin.script"}},
        "inventory.plugin",
    ),
    ("inline unknown group key", {**VALID, "inventory": {"all": {"script": "x"}}}, "inventory.all.script"),
    (
        "inline group named plugin",
        {**VALID, "inventory": {"plugin": {"hosts": {"h1": None}}}},
        "inventory.plugin",
    ),
    # `$` would match before a trailing newline: every name pattern is anchored at the very end.
    ("extra var name with a newline", {**VALID, "extra_vars": {"a\n": 1}}, "extra_vars"),
    ("inline host with a newline", {**VALID, "inventory": {"all": {"hosts": {"h1\n": None}}}}, "inventory"),
    ("label key with a newline", {**VALID, "labels": {"team\n": "x"}}, "labels"),
    ("ansible_user with a newline", {**VALID, "extra_vars": {"ansible_user": "deploy\n"}}, "ansible_user"),
    ("forks over MAX_FORKS", {**VALID, "forks": 51}, "forks"),
    ("playbook an option", {"playbook": "-debug.yml"}, "playbook"),
    ("inventory the source root", {**VALID, "inventory": "."}, "inventory"),
    ("inventory the source root, slash", {**VALID, "inventory": "./"}, "inventory"),
    ("inline hosts a list", {**VALID, "inventory": {"all": {"hosts": ["h1"]}}}, "inventory.all.hosts"),
    # Host and named locks.
    ("exclusive as string", {**VALID, "exclusive": "true"}, "exclusive"),
    ("exclusive as number", {**VALID, "exclusive": 1}, "exclusive"),
    ("locks a string", {**VALID, "locks": "lb-pool"}, "locks"),
    ("lock name empty", {**VALID, "locks": [""]}, "locks"),
    ("lock name with a space", {**VALID, "locks": ["lb pool"]}, "locks"),
    ("lock name a path", {**VALID, "locks": ["../x"]}, "locks"),
    ("lock name a template", {**VALID, "locks": ["{{x}}"]}, "locks"),
    ("lock name with a newline", {**VALID, "locks": ["lb\n"]}, "locks"),
    ("lock name too long", {**VALID, "locks": ["l" * 65]}, "locks"),
    ("lock name not a string", {**VALID, "locks": [1]}, "locks"),
    ("seventeen locks", {**VALID, "locks": [f"l{index}" for index in range(17)]}, "locks"),
    ("exclusive limit reading a file", {**VALID, "exclusive": True, "limit": "h1,@/etc/hosts"}, "limit"),
    ("exclusive limit selecting nothing", {**VALID, "exclusive": True, "limit": "nope"}, "limit"),
    (
        "exclusive limit outside an inline inventory",
        {**VALID, "exclusive": True, "inventory": {"all": {"hosts": {"h1": None}}}, "limit": "h2"},
        "limit",
    ),
    ("exclusive on an empty inventory", {**VALID, "exclusive": True, "inventory": {"all": {}}}, "inventory"),
    (
        "exclusive implicit localhost limited away",
        {"playbook": "debug.yml", "exclusive": True, "limit": "web"},
        "limit",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), [(b, f) for _, b, f in BAD_BODIES], ids=[c for c, _, _ in BAD_BODIES]
)
def test_bad_request_is_refused_and_nothing_stored(
    stack: Stack, api: httpx.Client, body: dict[str, Any], field: str
) -> None:
    before = stack.count_jobs()
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    payload = response.json()
    assert set(payload) == {"error", "detail"}
    assert field in payload["detail"], payload
    assert stack.count_jobs() == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"playbook": "debug.yml", "extra_vars": {"x": [1, NaN]}}', "extra_vars.x[1]"),
        (
            b'{"playbook": "debug.yml", "inventory": {"all": {"vars": {"x": -Infinity}}}}',
            "inventory.all.vars.x",
        ),
    ],
    ids=["NaN", "-Infinity"],
)
def test_numbers_json_cannot_hold_are_422(stack: Stack, api: httpx.Client, body: bytes, field: str) -> None:
    # Python's JSON parser takes them; the database's JSON columns and Ansible's JSON output would not.
    before = stack.count_jobs()
    response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"]
    assert stack.count_jobs() == before


def test_body_over_one_mebibyte_is_413(stack: Stack, api: httpx.Client) -> None:
    before = stack.count_jobs()
    body = {**VALID, "extra_vars": {"blob": "x" * (1024 * 1024)}}
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == 413
    assert response.json()["error"] == "PayloadTooLarge"
    # Without a Content-Length (chunked upload), the limit still holds.
    chunks = iter([b'{"playbook": "debug.yml", "extra_vars": {"blob": "', b"x" * (1024 * 1024 + 10), b'"}}'])
    response = api.post("/api/v1/jobs", content=chunks, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert stack.count_jobs() == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"playbook": "debug.yml", "extra_vars": {"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}",
        b'{"playbook": "debug.yml", "extra_vars": {"x": ' + b'{"a": ' * 40 + b"1" + b"}" * 40 + b"}}",
        b"[" * 500_000,
    ],
    ids=["100000 levels", "42 levels", "unterminated"],
)
def test_deeply_nested_json_is_422(stack: Stack, api: httpx.Client, body: bytes) -> None:
    before = stack.count_jobs()
    response = api.post("/api/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json() == {
        "error": "ValidationError",
        "detail": "body: JSON nested deeper than 32 levels",
    }
    assert stack.count_jobs() == before


def test_nesting_inside_strings_does_not_count(stack: Stack, api: httpx.Client) -> None:
    brackets = '[{"\\"' * 100
    response = api.post(
        "/api/v1/jobs", json={**VALID, "playbook": "nope.yml", "labels": {"b": brackets[:256]}}
    )
    assert response.status_code == 422
    assert "playbook" in response.json()["detail"]


def test_ordinary_target_variables_are_accepted(api: httpx.Client) -> None:
    target = {
        "ansible_host": "127.0.0.1",
        "ansible_port": 22,
        "ansible_user": "deploy",
        "ansible_become": False,
    }
    body = {
        "playbook": "debug.yml",
        "inventory": {"all": {"hosts": {"h1": target}, "vars": {"ansible_become_user": "root"}}},
        "extra_vars": {"ansible_user": "deploy", "payload_1": {"ansible_connection": "nested data is fine"}},
        "priority": "low",
    }
    response = api.post("/api/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    api.post(f"/api/v1/jobs/{response.json()['id']}/cancel")


def test_malformed_json_is_422(stack: Stack, api: httpx.Client) -> None:
    before = stack.count_jobs()
    response = api.post(
        "/api/v1/jobs", content=b'{"playbook": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"] == "ValidationError"
    assert "JSON" in response.json()["detail"]
    assert stack.count_jobs() == before


def test_bad_idempotency_key_is_422(stack: Stack, api: httpx.Client) -> None:
    before = stack.count_jobs()
    response = api.post("/api/v1/jobs", json=VALID, headers={"Idempotency-Key": "x" * 256})
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()["detail"]
    assert stack.count_jobs() == before


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/jobs/00000000-0000-0000-0000-000000000000", 404),
        ("/api/v1/jobs/00000000-0000-0000-0000-000000000000/events", 404),
        ("/api/v1/jobs/00000000-0000-0000-0000-000000000000/stdout", 404),
        ("/api/v1/jobs?status=bogus", 422),
        ("/api/v1/jobs?limit=0", 422),
        ("/api/v1/jobs?limit=501", 422),
        ("/api/v1/jobs?cursor=not-a-cursor", 422),
        ("/api/v1/jobs?label=novalue", 422),
        ("/api/v1/jobs?label=k=" + "v" * 257, 422),
        ("/api/v1/jobs/not-a-job-id", 422),
        ("/api/v1/jobs/00000000-0000-0000-0000-000000000000/events?after=2147483648", 422),
        ("/api/v1/jobs?created_after=yesterday", 422),
        ("/api/v1/nothing-here", 404),
    ],
)
def test_read_errors(api: httpx.Client, path: str, status: int) -> None:
    response = api.get(path)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error", "detail"}


def test_events_limits(api: httpx.Client) -> None:
    missing = "/api/v1/jobs/00000000-0000-0000-0000-000000000000/events"
    assert api.get(missing, params={"limit": 1001}).status_code == 422
    assert api.get(missing, params={"after": -1}).status_code == 422


def test_cancel_unknown_job_is_404(stack: Stack, api: httpx.Client) -> None:
    response = api.post("/api/v1/jobs/00000000-0000-0000-0000-000000000000/cancel")
    assert response.status_code == 404
    assert response.json()["error"] == "NotFound"


def test_openapi_describes_every_request_field(api: httpx.Client) -> None:
    schema = api.get("/openapi.json").json()
    request = schema["components"]["schemas"]["JobRequest"]
    assert set(request["properties"]) == {
        "playbook",
        "source",
        "inventory",
        "extra_vars",
        "limit",
        "tags",
        "skip_tags",
        "check",
        "diff",
        "verbosity",
        "forks",
        "timeout",
        "priority",
        "labels",
        "exclusive",
        "locks",
    }
    assert request.get("additionalProperties") is False
    undocumented = [name for name, field in request["properties"].items() if not field.get("description")]
    assert undocumented == []
    assert api.get("/docs").status_code == 200
