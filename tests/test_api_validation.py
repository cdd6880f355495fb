"""Bad input gets a clear error naming the field, and nothing is stored."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Stack

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
    }
    assert request.get("additionalProperties") is False
    undocumented = [name for name, field in request["properties"].items() if not field.get("description")]
    assert undocumented == []
    assert api.get("/docs").status_code == 200
