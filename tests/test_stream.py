"""GET /jobs/{id}/stream against a real uvicorn server and a real worker (httpx's ASGI transport buffers)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy.engine import make_url

from service.config import Settings
from service.db import create_engine, session_factory
from service.embedded import EmbeddedRedis, free_port
from service.jobs.follow import FollowItem, FollowTiming, JobEnd, follow_job
from service.jobs.repository import EventRepository, JobRepository
from service.live.hub import LIVE_CONNECTIONS, LiveEvent, LiveHub, create_live_redis
from service.live.publish import publish_end, publish_events
from service.models import JobStatus
from service.redaction import Redactor
from service.runner.events import to_row
from tests.support import (
    Backends,
    Stack,
    StackFactory,
    all_events,
    job_row,
    lone_api,
    submit,
    wait_for,
    wait_until,
)
from tests.support.sse import Message, messages, read_stream

LOCAL3 = "inventory/local3.yml"
# gate.yml on three hosts: these come before the hosts wait for the gate, the rest after it opens.
BEFORE_GATE = 6


@pytest.fixture(scope="module")
def stream_stack(start_stack: StackFactory) -> Stack:
    # A stack of its own: the tests read its process-wide stream counters. A small database pool: hundreds
    # of readers must not need a connection each.
    # 200 readers of one token (anonymous: no authentication here).
    return start_stack(STREAM_KEEPALIVE="0.5", DB_POOL_SIZE="4", MAX_STREAMS_PER_TOKEN="300")


@pytest.fixture(scope="module")
def client(stream_stack: Stack) -> Iterator[httpx.Client]:
    with stream_stack.client() as http:
        yield http


def gated_job(client: httpx.Client, tmp_path: Path, name: str = "gate") -> tuple[dict[str, Any], Path]:
    gate = tmp_path / name
    job = submit(client, {"playbook": "gate.yml", "inventory": LOCAL3, "extra_vars": {"gate": str(gate)}})
    return job, gate


def stats(client: httpx.Client) -> dict[str, int]:
    response = client.get("/api/v1/streams")
    assert response.status_code == 200, response.text
    value: dict[str, int] = response.json()
    return value


def assert_complete(client: httpx.Client, job_id: str, received: list[Message], after: int = 0) -> None:
    """`received` is every event after `after`, exactly once and in order, as /events has it, then `end`."""
    stored = all_events(client, job_id)
    assert [m.event for m in received[:-1]] == [e["event"] for e in stored[after:]]
    assert [m.id for m in received[:-1]] == [str(e["seq"]) for e in stored[after:]]
    assert [m.json() for m in received[:-1]] == stored[after:]
    end = received[-1]
    assert end.event == "end"
    assert end.id is None
    assert end.json() == client.get(f"/api/v1/jobs/{job_id}").json()
    assert end.json()["status"] in {"successful", "failed", "canceled", "timeout", "error"}


def test_running_job_streams_every_event_once_then_end(client: httpx.Client, tmp_path: Path) -> None:
    job, gate = gated_job(client, tmp_path)
    received: list[Message] = []
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/stream") as response:
        assert response.status_code == 200
        stream = messages(response.iter_lines())
        received.extend(itertools.islice(stream, BEFORE_GATE))
        # These arrived while the hosts still wait: live, not a replay after the end.
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
        assert [m.event for m in received].count("runner_on_start") == 3
        gate.touch()
        received.extend(stream)
    assert_complete(client, job["id"], received)
    assert received[-1].json()["status"] == "successful"


def test_a_brief_stream_is_every_event_without_its_data(client: httpx.Client, tmp_path: Path) -> None:
    """Live and replayed: `brief=true` leaves out `data` and nothing else."""
    job, gate = gated_job(client, tmp_path)
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/stream", params={"brief": "true"}) as response:
        stream = messages(response.iter_lines())
        live = list(itertools.islice(stream, BEFORE_GATE))
        gate.touch()
        live.extend(stream)
    stored = [
        {key: value for key, value in event.items() if key != "data"}
        for event in all_events(client, job["id"])
    ]
    assert any(event["stdout"] for event in stored)
    for received in (live, read_stream(client, job["id"], brief="true")):
        assert [m.json() for m in received[:-1]] == stored
        assert [m.id for m in received[:-1]] == [str(event["seq"]) for event in stored]
        assert received[-1].event == "end"


def test_a_quiet_stream_gets_keepalive_comments(client: httpx.Client, tmp_path: Path) -> None:
    job, gate = gated_job(client, tmp_path)
    with client.stream("GET", f"/api/v1/jobs/{job['id']}/stream") as response:
        lines = response.iter_lines()
        # The hosts wait at the gate: nothing but keep-alives can come now.
        assert any(line.startswith(": ping") for line in lines)
        gate.touch()
        rest = list(messages(lines))
    assert rest[-1].event == "end"


def test_resume_with_last_event_id_gets_exactly_the_rest(client: httpx.Client, tmp_path: Path) -> None:
    job, gate = gated_job(client, tmp_path)
    url = f"/api/v1/jobs/{job['id']}/stream"
    with client.stream("GET", url) as response:
        first = list(itertools.islice(messages(response.iter_lines()), 4))
    assert [m.id for m in first] == ["1", "2", "3", "4"]
    with client.stream("GET", url, headers={"Last-Event-ID": "4"}, params={"after": 1}) as response:
        stream = messages(response.iter_lines())
        rest = list(itertools.islice(stream, BEFORE_GATE - 4))
        gate.touch()
        rest.extend(stream)
    assert_complete(client, job["id"], first + rest)
    assert_complete(client, job["id"], rest, after=4)


def test_finished_job_replays_and_ends(client: httpx.Client) -> None:
    job = submit(client, {"playbook": "debug.yml", "inventory": LOCAL3})
    assert wait_for(client, job["id"])["status"] == "successful"
    assert_complete(client, job["id"], read_stream(client, job["id"]))
    assert_complete(client, job["id"], read_stream(client, job["id"], after=5), after=5)
    stored = all_events(client, job["id"])
    tail = read_stream(client, job["id"], headers={"Last-Event-ID": str(len(stored))})
    assert [m.event for m in tail] == ["end"]


def test_failed_job_ends_with_its_status(client: httpx.Client) -> None:
    job = submit(client, {"playbook": "fail_h2.yml", "inventory": LOCAL3})
    received = read_stream(client, job["id"])
    assert_complete(client, job["id"], received)
    assert received[-1].json()["status"] == "failed"


def test_stream_refuses_bad_input(client: httpx.Client) -> None:
    missing = client.get("/api/v1/jobs/00000000-0000-0000-0000-000000000000/stream")
    assert missing.status_code == 404
    assert missing.json()["error"] == "NotFound"
    job = submit(client, {"playbook": "debug.yml", "inventory": LOCAL3})
    bad_id = client.get(f"/api/v1/jobs/{job['id']}/stream", headers={"Last-Event-ID": "x1"})
    assert bad_id.status_code == 422
    assert "Last-Event-ID" in bad_id.json()["detail"]
    bad_after = client.get(f"/api/v1/jobs/{job['id']}/stream", params={"after": -1})
    assert bad_after.status_code == 422
    assert "after" in bad_after.json()["detail"]


async def _read_all(http: httpx.AsyncClient, job_id: str) -> list[Message]:
    async with http.stream("GET", f"/api/v1/jobs/{job_id}/stream") as response:
        assert response.status_code == 200
        lines: list[str] = [line async for line in response.aiter_lines()]
    return list(messages(iter(lines)))


def test_200_concurrent_readers_all_get_the_full_sequence(
    client: httpx.Client, stream_stack: Stack, tmp_path: Path
) -> None:
    job, gate = gated_job(client, tmp_path)
    readers = 200

    async def main() -> list[list[Message]]:
        limits = httpx.Limits(max_connections=readers + 10)
        async with httpx.AsyncClient(base_url=stream_stack.base_url, timeout=120, limits=limits) as http:
            tasks = [asyncio.create_task(_read_all(http, job["id"])) for _ in range(readers)]
            deadline = asyncio.get_running_loop().time() + 60
            while (await http.get("/api/v1/streams")).json()["readers"] < readers:
                assert asyncio.get_running_loop().time() < deadline, "readers did not all connect"
                await asyncio.sleep(0.05)
            # One Redis read loop serves them all.
            assert (await http.get("/api/v1/streams")).json()["read_loops"] == 1
            gate.touch()
            return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert len(results) == readers
    for received in results:
        assert_complete(client, job["id"], received)


def live_connections(backends: Backends, api_pid: int) -> int:
    server = redis.Redis.from_url(backends.redis_url)
    try:
        clients: list[dict[str, str]] = server.client_list()  # type: ignore[assignment]
        return sum(entry.get("name") == f"ars-live-{api_pid}" for entry in clients)
    finally:
        server.close()


def test_disconnected_readers_leave_no_tasks_or_redis_connections(
    client: httpx.Client, stream_stack: Stack, backends: Backends, tmp_path: Path
) -> None:
    api_pid = stream_stack.processes[0].pid
    # sse-starlette starts one shutdown watcher task per process with the first stream: not per reader.
    finished = submit(client, {"playbook": "debug.yml", "inventory": LOCAL3})
    read_stream(client, finished["id"])
    wait_until(lambda: stats(client)["readers"] == 0, "earlier readers to go")
    before = stats(client)
    assert before["read_loops"] == 0
    jobs = [gated_job(client, tmp_path, f"gate{index}") for index in range(3)]
    streams = []
    for job, _ in jobs:
        for _ in range(5):
            context = client.stream("GET", f"/api/v1/jobs/{job['id']}/stream")
            stream = messages(context.__enter__().iter_lines())
            # Keep the generator: closing it would close the response.
            streams.append((context, stream))
            assert next(stream).id == "1"
    during = stats(client)
    assert during["readers"] == 15
    assert during["followed"] == 3
    # One read loop follows the three jobs, on the API's bounded pool for live output.
    assert during["read_loops"] == 1
    assert 1 <= live_connections(backends, api_pid) <= LIVE_CONNECTIONS
    for context, _ in streams:
        context.__exit__(None, None, None)
    last: list[dict[str, int]] = []

    def counters_back() -> bool:
        last[:] = [stats(client)]
        now = last[0]
        # Tasks of earlier, finished requests may still have been winding down before: at most as many.
        return (
            now["readers"] == 0
            and now["followed"] == 0
            and now["read_loops"] == 0
            and now["tasks"] <= before["tasks"]
        )

    try:
        wait_until(counters_back, "stream counters back", deadline_s=30)
    except AssertionError:
        raise AssertionError(f"counters {last[0]}, before the readers {before}") from None
    # The pool for live output keeps at most its idle connections, whatever it served.
    assert live_connections(backends, api_pid) <= LIVE_CONNECTIONS
    for _, gate in jobs:
        gate.touch()


def test_without_redis_the_stream_reads_the_database(
    client: httpx.Client, stream_stack: Stack, tmp_path: Path
) -> None:
    # A second API on the same database whose Redis does not answer; the worker publishes to the real one.
    env = {
        **stream_stack.env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "STREAM_POLL_INTERVAL": "0.2",
    }
    with lone_api(env, tmp_path / "api-no-redis.log") as base_url:
        job, gate = gated_job(client, tmp_path)
        with (
            httpx.Client(base_url=base_url, timeout=30) as no_redis,
            no_redis.stream("GET", f"/api/v1/jobs/{job['id']}/stream") as response,
        ):
            assert response.status_code == 200
            stream = messages(response.iter_lines())
            received = list(itertools.islice(stream, BEFORE_GATE))
            gate.touch()
            received.extend(stream)
    assert_complete(client, job["id"], received)


@pytest.mark.parametrize(
    ("published", "max_pending"),
    [
        pytest.param(range(9, 11), 10_000, id="trimmed-stream"),
        pytest.param(range(4, 11), 2, id="reader-fell-behind"),
    ],
)
def test_gaps_in_the_live_stream_are_filled_from_the_database(
    stream_stack: Stack, backends: Backends, published: range, max_pending: int
) -> None:
    """Events 4..10 are stored but the reader sees only some of them live: it reads the rest back."""
    settings = Settings(database_url=stream_stack.database_url, redis_url=backends.redis_url)
    job_id = str(uuid.uuid4())

    def rows(seqs: range) -> list[dict[str, Any]]:
        return [
            to_row(
                job_id,
                {"counter": seq, "event": "runner_on_ok", "stdout": f"line {seq}", "event_data": {}},
                Redactor([]),
            )
            for seq in seqs
        ]

    async def main() -> list[FollowItem]:
        engine = create_engine(settings)
        sessions = session_factory(engine)
        live_redis = create_live_redis(settings)
        hub = LiveHub(live_redis, max_pending=max_pending)
        async with sessions() as session:
            await JobRepository(session).add(job_row(JobStatus.running, id=job_id))
            await EventRepository(session).add_batch(job_id, rows(range(1, 4)), 3)
            await session.commit()
        timing = FollowTiming(recheck_s=120, poll_s=120)
        follow = follow_job(sessions, hub, job_id, after=0, timing=timing)
        received = [await anext(follow) for _ in range(3)]
        async with sessions() as session:
            await EventRepository(session).add_batch(job_id, rows(range(4, 11)), 10)
            await session.commit()
        events = [{k: v for k, v in row.items() if k != "job_id"} for row in rows(published)]
        await publish_events(live_redis, job_id, events, maxlen=100)
        received += [await anext(follow) for _ in range(7)]
        async with sessions() as session:
            await JobRepository(session).finish(
                job_id, status=JobStatus.successful, rc=0, reason=None, host_stats={}, event_count=10
            )
            await session.commit()
        await publish_end(live_redis, job_id, 10, ttl=60)
        received.append(await anext(follow))
        await follow.aclose()
        assert hub.readers == 0
        await hub.close()
        await live_redis.aclose()
        await engine.dispose()
        return received

    received = asyncio.run(main())
    assert [item.seq for item in received[:-1] if isinstance(item, LiveEvent)] == list(range(1, 11))
    end = received[-1]
    assert isinstance(end, JobEnd)
    assert end.job.status == "successful"


class FlakyDatabasePort:
    """A TCP port in front of the database server: it hangs up on every connection until `heal()`."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.refused = 0
        self.healed = False
        self.port = free_port()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.healed:
            self.refused += 1
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def start(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", self.port)


def test_a_reader_waits_out_a_database_that_hangs_up(
    client: httpx.Client, stream_stack: Stack, backends: Backends
) -> None:
    if backends.is_sqlite:
        pytest.skip("needs a database server that can hang up; SQLite is a file")
    job = submit(client, {"playbook": "debug.yml", "inventory": LOCAL3})
    assert wait_for(client, job["id"])["status"] == "successful"
    stored = all_events(client, job["id"])
    url = make_url(stream_stack.database_url)
    flaky = FlakyDatabasePort(url.host or "127.0.0.1", url.port or 3306)
    proxied = url.set(host="127.0.0.1", port=flaky.port).render_as_string(hide_password=False)
    settings = Settings(database_url=proxied, redis_url=backends.redis_url)

    async def main() -> list[FollowItem]:
        server = await flaky.start()
        engine = create_engine(settings)
        live_redis = create_live_redis(settings)
        hub = LiveHub(live_redis)
        timing = FollowTiming(recheck_s=120, poll_s=120)

        async def follow() -> list[FollowItem]:
            return [
                item
                async for item in follow_job(session_factory(engine), hub, job["id"], after=0, timing=timing)
            ]

        reader = asyncio.create_task(follow())
        deadline = asyncio.get_running_loop().time() + 30
        while flaky.refused < 2:
            assert not reader.done(), "the reader gave up instead of waiting for the database"
            assert asyncio.get_running_loop().time() < deadline, "the reader did not retry"
            await asyncio.sleep(0.05)
        flaky.healed = True
        received = await asyncio.wait_for(reader, 60)
        await hub.close()
        await live_redis.aclose()
        await engine.dispose()
        server.close()
        return received

    received = asyncio.run(main())
    assert [item.seq for item in received if isinstance(item, LiveEvent)] == [e["seq"] for e in stored]
    assert isinstance(received[-1], JobEnd)


def test_a_stream_lives_through_a_redis_restart(start_stack: StackFactory, tmp_path: Path) -> None:
    """Followers of two jobs, one read loop: Redis goes away and comes back empty mid-run; the readers poll
    the database meanwhile, then follow live again, and each gets every event once and the end."""
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    try:
        stack = start_stack(redis_url=redis_server.url, STREAM_POLL_INTERVAL="0.2")
        with stack.client() as http:
            jobs = [gated_job(http, tmp_path, f"gate{index}") for index in range(2)]
            received: list[list[Message]] = [[], []]
            streams = []
            for (job, _), into in zip(jobs, received, strict=True):
                context = http.stream("GET", f"/api/v1/jobs/{job['id']}/stream")
                stream = messages(context.__enter__().iter_lines())
                streams.append((context, stream))
                into.extend(itertools.islice(stream, BEFORE_GATE))
            assert stats(http)["read_loops"] == 1
            redis_server.stop()
            redis_server.start()
            for _, gate in jobs:
                gate.touch()
            for (context, stream), into in zip(streams, received, strict=True):
                into.extend(stream)
                context.__exit__(None, None, None)
            for (job, _), into in zip(jobs, received, strict=True):
                assert_complete(http, job["id"], into)
        stack.stop()  # while its Redis is there: a stopping worker waits for Redis
    finally:
        redis_server.stop()
