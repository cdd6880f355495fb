"""Pages of the list (`GET /api/v1/jobs`) and of a job's events from the API's memory while unchanged, with
ETags (service/jobs/views.py).

Real API processes, no worker: the jobs change only when a test changes them, through the API, through the
job lifecycle in this process (as a worker or retention would), or behind the service's back (which nothing
announces: that a page is still answered as it was shows it was kept).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import sqlalchemy as sa

from service.config import Settings
from service.db import create_engine, session_factory
from service.jobs.lifecycle import Lifecycle
from service.jobs.repository import EventRepository
from service.jobs.service import purge_expired
from service.models import Job, JobStatus, utcnow
from service.queue import JobQueue, create_redis
from tests.support import Stack, event_rows, job_row, lone_api, sample, submit

T = TypeVar("T")


def with_lifecycle(stack: Stack, work: Callable[[Lifecycle], Awaitable[T]]) -> T:
    """`work` with the stack's own lifecycle, as a worker or retention of this deployment has it."""

    async def main() -> T:
        settings = Settings(
            database_url=stack.database_url,
            redis_url=stack.env["REDIS_URL"],
            queue_name=stack.env["QUEUE_NAME"],
        )
        engine = create_engine(settings)
        redis = create_redis(settings)
        try:
            return await work(Lifecycle(session_factory(engine), redis, JobQueue(redis, settings), settings))
        finally:
            await redis.aclose()
            await engine.dispose()

    return asyncio.run(main())


def store(stack: Stack, job: Job, events: range = range(0)) -> None:
    """A job and its events written behind the service's back."""

    async def work(lifecycle: Lifecycle) -> None:
        async with lifecycle.sessions() as session:
            session.add(job)
            await session.flush()
            if events:
                await EventRepository(session).add_batch(job.id, event_rows(job.id, events), events[-1])
            await session.commit()

    with_lifecycle(stack, work)


def record_events(stack: Stack, job_id: str, seqs: range) -> None:
    """A batch of events stored as the worker stores them: through the lifecycle, which announces it."""

    async def work(lifecycle: Lifecycle) -> None:
        async with lifecycle.transaction() as transaction:
            await transaction.record_events(job_id, event_rows(job_id, seqs), seqs[-1])

    with_lifecycle(stack, work)


def behind_the_back(stack: Stack, statement: str, **values: Any) -> None:
    engine = stack.db()
    with engine.begin() as connection:
        connection.execute(sa.text(statement), values)
    engine.dispose()


def listed(client: httpx.Client, label: str, **headers: str) -> httpx.Response:
    return client.get("/api/v1/jobs", params={"label": f"t={label}"}, headers=headers)


@pytest.fixture
def client(quiet_stack: Stack) -> Iterator[httpx.Client]:
    with quiet_stack.client() as http:
        yield http


def test_a_page_of_the_list_has_an_etag_and_is_read_again_once_a_job_in_it_changed(
    quiet_stack: Stack, client: httpx.Client
) -> None:
    label = uuid.uuid4().hex
    first = submit(client, {"playbook": "debug.yml", "labels": {"t": label}})
    second = submit(client, {"playbook": "debug.yml", "labels": {"t": label}})
    page = listed(client, label)
    assert page.status_code == 200
    assert page.headers["content-type"] == "application/json"
    # Each item as every other answer shows the job.
    assert page.json() == {"items": [second, first], "next_cursor": None}
    assert page.json()["items"][0] == client.get(f"/api/v1/jobs/{second['id']}").json()
    tag = page.headers["etag"]

    def reads(source: str) -> float:
        return sample(client.get("/metrics").text, "ars_page_reads_total", page="list", source=source)

    from_memory, from_database = reads("memory"), reads("database")
    unchanged = listed(client, label, **{"If-None-Match": tag})
    assert (reads("memory"), reads("database")) == (from_memory + 1, from_database)
    assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", tag)
    assert listed(client, label, **{"If-None-Match": f'"other", W/{tag}'}).status_code == 304
    assert listed(client, label, **{"If-None-Match": '"other"'}).content == page.content

    behind_the_back(quiet_stack, "UPDATE job SET reason = 'unannounced' WHERE id = :id", id=first["id"])
    assert listed(client, label).content == page.content  # kept: nothing announced a change

    # The service's own changes are announced: the next GET reads the page again, and sees both.
    assert client.post(f"/api/v1/jobs/{second['id']}/cancel").status_code == 202
    changed = listed(client, label, **{"If-None-Match": tag})
    assert changed.status_code == 200
    assert [(job["status"], job["reason"]) for job in changed.json()["items"]] == [
        ("canceled", "canceled before it started"),
        ("queued", "unannounced"),
    ]
    assert changed.headers["etag"] != tag
    assert listed(client, label, **{"If-None-Match": changed.headers["etag"]}).status_code == 304

    third = submit(client, {"playbook": "debug.yml", "labels": {"t": label}})
    again = listed(client, label, **{"If-None-Match": changed.headers["etag"]})
    assert again.status_code == 200
    assert [job["id"] for job in again.json()["items"]] == [third["id"], second["id"], first["id"]]


def test_a_job_has_an_etag_until_it_changes(client: httpx.Client) -> None:
    job = submit(client, {"playbook": "debug.yml"})
    url = f"/api/v1/jobs/{job['id']}"
    first = client.get(url)
    tag = first.headers["etag"]
    unchanged = client.get(url, headers={"If-None-Match": tag})
    assert (unchanged.status_code, unchanged.content, unchanged.headers["etag"]) == (304, b"", tag)
    assert client.post(f"{url}/cancel").status_code == 202
    changed = client.get(url, headers={"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.json()["status"] == "canceled"
    assert changed.headers["etag"] != tag
    missing = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000", headers={"If-None-Match": "*"})
    assert missing.status_code == 404


def test_new_events_are_seen_at_once_and_a_full_page_is_kept_across_them(
    quiet_stack: Stack, client: httpx.Client
) -> None:
    label = uuid.uuid4().hex
    job = job_row(JobStatus.running, labels={"t": label})
    store(quiet_stack, job)
    record_events(quiet_stack, job.id, range(1, 6))
    url = f"/api/v1/jobs/{job.id}/events"
    full = client.get(url, params={"limit": 5})
    tail = client.get(url, params={"limit": 10})
    assert [event["seq"] for event in full.json()["items"]] == [1, 2, 3, 4, 5]
    assert tail.content == full.content
    assert listed(client, label).json()["items"][0]["event_count"] == 5
    assert (
        client.get(url, params={"limit": 10}, headers={"If-None-Match": tail.headers["etag"]}).status_code
        == 304
    )

    behind_the_back(quiet_stack, "UPDATE job_event SET stdout = 'rewritten' WHERE job_id = :id", id=job.id)
    record_events(quiet_stack, job.id, range(6, 8))
    grown = client.get(url, params={"limit": 10}, headers={"If-None-Match": tail.headers["etag"]})
    assert grown.status_code == 200
    assert [event["seq"] for event in grown.json()["items"]] == [1, 2, 3, 4, 5, 6, 7]
    assert grown.json()["items"][0]["stdout"] == "rewritten"  # read again
    # A full page no longer changes: the new batch did not make the API read it again.
    assert client.get(url, params={"limit": 5}).content == full.content
    assert client.get(url, params={"limit": 5, "after": 5}).json()["items"][0]["stdout"] == "line 6"
    # The list shows the job's new event count at once.
    assert listed(client, label).json()["items"][0]["event_count"] == 7


def test_kept_pages_of_events_go_with_their_job(quiet_stack: Stack, client: httpx.Client) -> None:
    long_ago = utcnow() - timedelta(days=40)
    job = job_row(JobStatus.successful, finished_at=long_ago, event_count=8)
    store(quiet_stack, job, range(1, 9))
    url = f"/api/v1/jobs/{job.id}/events"
    full = client.get(url, params={"limit": 5})
    partial = client.get(url, params={"after": 5, "limit": 5})
    assert [event["seq"] for event in full.json()["items"]] == [1, 2, 3, 4, 5]
    assert [event["seq"] for event in partial.json()["items"]] == [6, 7, 8]
    tag = full.headers["etag"]
    assert client.get(url, params={"limit": 5}, headers={"If-None-Match": tag}).status_code == 304

    behind_the_back(quiet_stack, "UPDATE job_event SET stdout = 'rewritten' WHERE job_id = :id", id=job.id)
    assert client.get(url, params={"limit": 5}).content == full.content  # kept

    # Retention deletes the events, then the job, through the lifecycle.
    purged = with_lifecycle(
        quiet_stack, lambda lifecycle: purge_expired(lifecycle, finished_before=utcnow() - timedelta(days=30))
    )
    assert purged == (1, 8)
    for params in ({"limit": 5}, {"after": 5, "limit": 5}):
        gone = client.get(url, params=params, headers={"If-None-Match": tag})
        assert gone.status_code == 404, params
        assert gone.json()["error"] == "NotFound"
    assert (
        client.get(f"/api/v1/jobs/{uuid.uuid4()}/events", headers={"If-None-Match": "*"}).status_code == 404
    )


def test_every_api_process_sees_a_change_at_once(
    quiet_stack: Stack, client: httpx.Client, tmp_path: Path
) -> None:
    label = uuid.uuid4().hex
    job = submit(client, {"playbook": "debug.yml", "labels": {"t": label}})
    url = f"/api/v1/jobs/{job['id']}/events"
    with (
        lone_api(quiet_stack.env, tmp_path / "api.log") as base_url,
        httpx.Client(base_url=base_url) as other,
    ):
        for api in (client, other):
            assert [item["status"] for item in listed(api, label).json()["items"]] == ["queued"]
            assert api.get(url).json() == {"items": []}
        # Changed through the other process, and by a worker's lifecycle.
        assert other.post(f"/api/v1/jobs/{job['id']}/cancel").status_code == 202
        record_events(quiet_stack, job["id"], range(1, 3))
        for api in (client, other):
            assert [item["status"] for item in listed(api, label).json()["items"]] == ["canceled"]
            assert [event["seq"] for event in api.get(url).json()["items"]] == [1, 2]
