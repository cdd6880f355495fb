"""GET /api/v1/jobs/{id} from the API's memory while the job is unchanged (service/jobs/views.py).

A change the service makes is seen at once, by every path that writes a job (the rest of the suite polls
jobs through this GET while they run, are canceled, reaped or purged). Here: that the memory is really used,
and what makes the API read the database again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
import redis
import sqlalchemy as sa

from service.live.publish import version_key
from tests.support import Stack, sample, submit


def set_reason(stack: Stack, job_id: str, reason: str) -> None:
    """A change behind the service's back: nothing announces it."""
    engine = stack.db()
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE job SET reason = :r WHERE id = :id"), {"r": reason, "id": job_id})
    engine.dispose()


def reads(client: httpx.Client, source: str) -> float:
    return sample(client.get("/metrics").text, "ars_job_view_reads_total", source=source)


@pytest.fixture
def client(quiet_stack: Stack) -> Iterator[httpx.Client]:
    with quiet_stack.client() as http:
        yield http


def test_an_unchanged_job_is_answered_from_memory_a_changed_one_is_read_again(
    quiet_stack: Stack, client: httpx.Client
) -> None:
    job = submit(client, {"playbook": "debug.yml"})
    url = f"/api/v1/jobs/{job['id']}"
    first = client.get(url)
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    # The same JSON as the service's other answers about the job.
    assert first.json() == job | {"reason": None}
    memory = reads(client, "memory")
    set_reason(quiet_stack, job["id"], "changed behind the service's back")
    assert client.get(url).json()["reason"] is None  # kept: nothing announced the change
    assert reads(client, "memory") == memory + 1

    # What every writer does after its commit: a new version token.
    with redis.Redis.from_url(quiet_stack.env["REDIS_URL"]) as server:
        server.set(version_key(job["id"]), uuid.uuid4().hex)
    assert client.get(url).json()["reason"] == "changed behind the service's back"

    # The API's own writes announce themselves: the cancel is seen by the next GET.
    assert client.get(url).json()["status"] == "queued"
    assert client.post(f"{url}/cancel").status_code == 202
    assert client.get(url).json()["status"] == "canceled"


def test_a_job_read_before_its_token_existed_and_unknown_jobs(
    quiet_stack: Stack, client: httpx.Client
) -> None:
    job = submit(client, {"playbook": "debug.yml"})
    key = version_key(job["id"])
    with redis.Redis.from_url(quiet_stack.env["REDIS_URL"]) as server:
        server.delete(key)  # as after a Redis restart, or a day without a change
        assert client.get(f"/api/v1/jobs/{job['id']}").status_code == 200
        token = server.get(key)
        assert token is not None  # the GET gave the job a token, and kept its JSON under it
        server.delete(key)
        set_reason(quiet_stack, job["id"], "seen")
        # A new token: what was kept under the old one is not served.
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["reason"] == "seen"
        assert server.get(key) not in (None, token)
    missing = client.get(f"/api/v1/jobs/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "NotFound"
