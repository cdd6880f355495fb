"""The console's pure parts, in this process: session cookies and the run form's parsing."""

from __future__ import annotations

import time
from typing import Any

import pytest

from service.console.forms import job_body, parse_extra_vars, read_form
from service.console.sessions import SessionSigner
from service.errors import InvalidRequest
from service.jobs.schemas import JobRequest

KEY = "k" * 32
OTHER = "o" * 32


def test_a_session_opens_under_its_key_and_any_listed_one() -> None:
    cookie = SessionSigner([KEY], max_age=60).issue("alice", "fp")
    assert SessionSigner([KEY], 60).open(cookie) == ("alice", "fp")
    # Rotation: a new key listed first signs; cookies signed by the old one still open until it is dropped.
    assert SessionSigner([OTHER, KEY], 60).open(cookie) == ("alice", "fp")
    assert SessionSigner([OTHER], 60).open(cookie) is None


def test_an_expired_or_altered_session_does_not_open(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = SessionSigner([KEY], max_age=60)
    cookie = signer.issue("alice", "fp")
    payload, _, signature = cookie.partition(".")
    assert signer.open(f"{payload}x.{signature}") is None
    assert signer.open(f"{payload}.{signature[:-2]}") is None
    assert signer.open(payload) is None
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 61)
    assert signer.open(cookie) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("who: world", {"who": "world"}),
        ('{"who": "world", "n": 3}', {"who": "world", "n": 3}),
        ("day: 2027-03-28\nflag: yes\nnothing: ~", {"day": "2027-03-28", "flag": True, "nothing": None}),
        ("list: [1, {a: b}]", {"list": [1, {"a": "b"}]}),
    ],
)
def test_extra_vars_are_yaml_or_json_data(text: str, expected: dict[str, Any]) -> None:
    assert parse_extra_vars(text, max_depth=32) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [1, 2]\nb: *x", "anchors"),
        # A billion laughs: nine aliased levels would be 10^9 items once written out as JSON.
        ("a: &a [1,1,1,1,1,1,1,1,1,1]\nb: [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]", "anchors"),
        ("- 1\n- 2", "expected a mapping"),
        ("just text", "expected a mapping"),
        ("1: one", "is not text"),
        ("? [a, b]\n: c", "not valid YAML"),
        ("a: .nan", "not a number JSON can hold"),
        ("a: !!binary aGVsbG8=", "a bytes is not a value JSON can hold"),
        ("a: !!python/object/apply:os.system [id]", "not valid YAML"),
        ("a: [" * 40 + "]" * 40, "nested deeper than 32"),
        ("a: b: c", "not valid YAML"),
    ],
)
def test_extra_vars_that_are_not_plain_data_are_refused(text: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        parse_extra_vars(text, max_depth=32)


def test_a_very_deep_document_is_refused_not_a_crash() -> None:
    with pytest.raises(InvalidRequest, match=r"nested deeper|not valid YAML"):
        parse_extra_vars("a: " + "[" * 100_000, max_depth=32)


def test_a_form_becomes_the_apis_body() -> None:
    form = read_form(
        b"playbook=site.yml&inventory=+inv%2Fhosts.yml+&extra_vars=who%3A+x&limit=web&tags=a%2C+b%2C&check=on"
        b"&priority=high&exclusive=on&locks=+lb-pool%2C+dns+&unknown=dropped"
    )
    body = job_body(form, max_depth=32)
    assert body == {
        "playbook": "site.yml",
        "inventory": "inv/hosts.yml",
        "extra_vars": {"who": "x"},
        "limit": "web",
        "tags": ["a", "b"],
        "check": True,
        "diff": False,
        "priority": "high",
        "exclusive": True,
        "locks": ["lb-pool", "dns"],
    }
    JobRequest.model_validate(body)


@pytest.mark.parametrize("body", [b"\xff\xfe", b"&".join([b"a=1"] * 100)])
def test_a_form_that_this_console_would_not_send_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="form"):
        read_form(body)
