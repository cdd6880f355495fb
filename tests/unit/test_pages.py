"""Pages of the list and of events without a model per row, ETags, and which kept pages are served."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from service.api.jobs import not_modified
from service.jobs import views
from service.jobs.schemas import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    EventOut,
    EventPage,
    JobOut,
    JobPage,
    brief_event_json,
    event_json,
    event_page_json,
    job_page_json,
)
from service.jobs.views import View, _KeptPage, _Pages, etag
from service.live.publish import DELETED
from service.models import JobEvent

# Values a request or Ansible can put in a JSON column: what the JSON of each must not change.
ODD_VALUES: dict[str, Any] = {
    "float": 0.1,
    "huge": 1e300,
    "tiny": -5e-324,
    "negative_zero": -0.0,
    "integer_past_64_bits": 2**70,
    "unicode": "é ☃ 𝄞 \u2028 \x00 \x1b[31m",
    "nested": [1, {"a": [True, None, ""]}, []],
    "not_a_number": float("nan"),
}


def _job(**fields: Any) -> dict[str, Any]:
    """A row of JOB_COLUMNS as the database gives it back: naive UTC timestamps."""
    row: dict[str, Any] = {
        "id": "3d8b1f9c-2e51-4d7e-9a0b-5b1c2d3e4f50",
        "status": "successful",
        "playbook": "site.yml",
        "source": {"type": "git", "repo": "https://git.example.com/org/infra", "ref": "main"},
        "source_commit": "a" * 40,
        "inventory": {"all": {"hosts": {"web1": None, "db1": {"port": 2222}}}},
        "extra_vars": ODD_VALUES,
        "limit": "web*",
        "tags": ["deploy"],
        "skip_tags": [],
        "check": False,
        "diff": True,
        "verbosity": 2,
        "forks": 5,
        "timeout": 600,
        "priority": "high",
        "labels": {"team": "ops", "ünï": "cödé"},
        "created_at": datetime(2026, 12, 1, 10, 0, 0),
        "started_at": datetime(2026, 12, 1, 10, 0, 1, 123456),
        "finished_at": datetime(2026, 12, 1, 10, 0, 9, 1),
        "rc": 2,
        "reason": "failed on web1\nand db1",
        # Stored counts as the worker writes them; an older row may lack a key, or carry one no longer shown.
        "host_stats": {"web1": {"ok": 3, "changed": 1, "failures": 1}, "db1": {"ok": 1, "dark": 7}},
        "event_count": 12,
        "cancel_requested": False,
        "submitted_by": "ci",
        "exclusive": True,
        "locks": ["lb-pool", "db:primary"],
        "targets": ["web1", "db1"],
        "waiting_for": None,
        "schedule_id": None,
    }
    return row | fields


def _event(seq: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": seq,
        "event": "runner_on_ok",
        "host": "web1",
        "task": "Gather ☃",
        "play": "Site",
        "stdout": "\x1b[0;32mok: [web1]\x1b[0m\r\n",
        "created": datetime(2026, 12, 1, 10, 0, 2, 500),
        "data": {"res": ODD_VALUES, "host": "web1", "duration": 0.25},
    }
    return row | fields


JOB_ROWS = [
    [],
    [_job()],
    [
        _job(),
        _job(id="q", status="queued", inventory="inventory/hosts.yml", started_at=None, finished_at=None),
        _job(id="n", inventory=None, host_stats=None, rc=None, reason=None, forks=None, submitted_by=None),
        _job(id="e", host_stats={}, labels={}, extra_vars={}, source_commit=None),
        _job(
            id="w",
            status="queued",
            exclusive=False,
            locks=None,
            targets=None,
            waiting_for={"hosts": ["web1"], "locks": [], "jobs": ["x"]},
        ),
    ],
]


@pytest.mark.parametrize("rows", JOB_ROWS, ids=["empty", "one", "several"])
@pytest.mark.parametrize("next_cursor", [None, "MjAyNi0xMi0wMVQxMDowMDowMHxx"])
def test_a_page_of_the_list_is_the_models_json_byte_for_byte(
    rows: list[dict[str, Any]], next_cursor: str | None
) -> None:
    model = JobPage(items=[JobOut.of(row) for row in rows], next_cursor=next_cursor)
    assert job_page_json(rows, next_cursor) == model.model_dump_json().encode()
    assert set(JOB_COLUMNS) == set(_job())


def test_a_page_of_events_is_the_models_json_byte_for_byte() -> None:
    rows = [_event(1), _event(2, host=None, task=None, play=None, stdout="", data={}), _event(3)]
    model = EventPage(items=[EventOut.of(JobEvent(job_id="j", **row)) for row in rows])
    assert event_page_json(rows) == model.model_dump_json().encode()
    assert event_page_json([]) == b'{"items":[]}'
    # The live stream's events (service/jobs/follow.py) are the same items.
    for row in rows:
        item_model = EventOut.of(JobEvent(job_id="j", **row))
        assert event_json(row) == item_model.model_dump_json()
        assert brief_event_json(row) == item_model.model_dump_json(exclude={"data"})
    assert set(EVENT_COLUMNS) == set(_event(1))


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        ('"abc"', True),
        ('W/"abc"', True),
        ('"x", "abc"', True),
        ('"x",W/"abc" ', True),
        ("*", True),
        ('"abd"', False),
        ("abc", False),
        ('"abc', False),
        ("", False),
        ('"x", "y"', False),
    ],
)
def test_if_none_match(header: str, matches: bool) -> None:
    assert not_modified('"abc"', header) is matches


def test_an_etag_depends_on_the_json_alone() -> None:
    assert etag(b'{"items":[]}') == etag(b'{"items":[]}')
    assert etag(b'{"items":[]}') != etag(b'{"items":[1]}')
    assert etag(b"{}").startswith('"') and etag(b"{}").endswith('"')


def _kept(version: bytes, *, lasting: bool, age: float = 0.0, body: bytes = b"{}") -> _KeptPage:
    return _KeptPage(version, View(body, etag(body)), time.monotonic() - age, lasting=lasting)


def test_which_kept_page_is_served() -> None:
    now = time.monotonic()
    page, full = _kept(b"v1", lasting=False), _kept(b"v1", lasting=True)
    assert page.serves(b"v1", now) and full.serves(b"v1", now)
    # A new token: a page that may have changed is read again; a full page of events stays what it was...
    assert not page.serves(b"v2", now)
    assert full.serves(b"v2", now)
    # ...until the job is deleted.
    assert not full.serves(DELETED + b"v3", now)
    # Nothing is served past the age limit, whatever the token: a change whose announcement was lost.
    old = views._MAX_AGE_S + 0.01
    assert not _kept(b"v1", lasting=False, age=old).serves(b"v1", now)
    assert not _kept(b"v1", lasting=True, age=old).serves(b"v1", now)


def test_kept_pages_stay_within_their_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(views, "_PAGES_MAX_BYTES", 100)
    monkeypatch.setattr(views, "_PAGE_MAX_BYTES", 40)
    pages = _Pages()
    for key in "abc":
        pages.keep(key, _kept(b"v", lasting=False, body=b"x" * 30))
    # 90 bytes: all kept; reading "a" makes "b" the least recently read.
    assert pages.get("a", b"v") is not None
    pages.keep("d", _kept(b"v", lasting=False, body=b"x" * 30))
    assert [key for key in "abcd" if pages.get(key, b"v") is not None] == ["a", "c", "d"]
    # A page over its own limit is not kept (and drops nothing).
    pages.keep("e", _kept(b"v", lasting=False, body=b"x" * 41))
    assert pages.get("e", b"v") is None
    assert [key for key in "acd" if pages.get(key, b"v") is not None] == ["a", "c", "d"]
    # Keeping a key again replaces its page.
    pages.keep("a", _kept(b"w", lasting=False, body=b"y" * 10))
    view = pages.get("a", b"w")
    assert view is not None and view.body == b"y" * 10
    assert pages.get("a", b"v") is None
