"""Faults caused for real: a worker killed or stopped mid-run, Redis gone, the database gone.

Each test checks the job's final state, that no run happened twice (the playbook counts its runs in a
file), and that the stored events are complete and in order.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from service.embedded import EmbeddedRedis
from service.runner.execute import kill_run_processes, run_processes
from service.runner.pipeline import _internal_error
from tests.support import (
    Backends,
    Stack,
    StackFactory,
    all_events,
    submit,
    wait_for,
    wait_until,
)
from tests.support.proxy import TcpProxy, through
from tests.support.stacks import stop

LOCAL1 = "inventory/local1.yml"


@dataclass
class Probe:
    """One run of reliable.yml: its gate, its run counter and its end marker."""

    gate: Path
    count_file: Path

    @classmethod
    def new(cls, directory: Path) -> Probe:
        name = uuid.uuid4().hex[:8]
        return cls(directory / f"gate-{name}", directory / f"count-{name}")

    def body(self, after_items: int = 20, **extra: Any) -> dict[str, Any]:
        return {
            "playbook": "reliable.yml",
            "inventory": LOCAL1,
            "extra_vars": {
                "gate": str(self.gate),
                "count_file": str(self.count_file),
                "after_items": after_items,
            },
            **extra,
        }

    @property
    def runs(self) -> int:
        return len(self.count_file.read_text().splitlines()) if self.count_file.exists() else 0

    @property
    def done(self) -> bool:
        return Path(f"{self.count_file}.done").exists()


def assert_events_complete(client: httpx.Client, job: dict[str, Any]) -> list[dict[str, Any]]:
    events = all_events(client, job["id"])
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert job["event_count"] == len(events)
    return events


def waiting_at_gate(client: httpx.Client, job_id: str) -> bool:
    status = client.get(f"/api/v1/jobs/{job_id}").json()["status"]
    assert status in ("queued", "running"), f"the run ended as {status} before the gate"
    events = client.get(f"/api/v1/jobs/{job_id}/events", params={"limit": 1000}).json()["items"]
    return any(e["event"] == "runner_on_start" and e["task"] == "Wait for the gate" for e in events)


def ran_once_more(stack: Stack, client: httpx.Client, tmp_path: Path) -> None:
    """A follow-up run through the same queue: once it has run, a re-run of an earlier one would have too."""
    follow = Probe.new(tmp_path)
    follow.gate.touch()
    job = wait_for(client, submit(client, follow.body())["id"])
    assert job["status"] == "successful"


@pytest.fixture
def stack(start_stack: StackFactory) -> Stack:
    """A stack with no worker: each test starts the workers it needs, with the settings it needs."""
    return start_stack(workers=0, WORKER_LOST_AFTER="4", SWEEP_INTERVAL="2")


def test_killed_worker_run_becomes_error_and_is_never_rerun(stack: Stack, tmp_path: Path) -> None:
    probe = Probe.new(tmp_path)
    doomed = stack.add_worker("doomed")
    with stack.client() as client:
        job = submit(client, probe.body())
        wait_until(lambda: waiting_at_gate(client, job["id"]), "the run to reach the gate")
        stored_before = client.get(f"/api/v1/jobs/{job['id']}").json()["event_count"]
        doomed.send_signal(signal.SIGKILL)
        doomed.wait()
        # As when a pod dies: its processes go with it.
        kill_run_processes(job["id"])
        survivor = stack.add_worker("survivor")
        try:
            done = wait_for(client, job["id"], deadline_s=60)
            assert done["status"] == "error"
            assert done["reason"].startswith("worker lost")
            events = assert_events_complete(client, done)
            assert len(events) >= stored_before > 0
            probe.gate.touch()
            ran_once_more(stack, client, tmp_path)
            assert probe.runs == 1
            assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "error"
        finally:
            stop(survivor)


def test_sigterm_lets_a_run_finish_within_the_grace(stack: Stack, tmp_path: Path) -> None:
    probe = Probe.new(tmp_path)
    worker = stack.add_worker("graceful", JOB_COMPLETION_WAIT="120")
    log = stack.logs / "graceful.log"
    with stack.client() as client:
        job = submit(client, probe.body())
        wait_until(lambda: waiting_at_gate(client, job["id"]), "the run to reach the gate")
        worker.send_signal(signal.SIGTERM)
        wait_until(lambda: "allow_pick_jobs to `False`" in log.read_text(), "the worker to stop taking jobs")
        later = Probe.new(tmp_path)
        later.gate.touch()
        queued = submit(client, later.body())
        probe.gate.touch()
        done = wait_for(client, job["id"])
        assert done["status"] == "successful"
        assert worker.wait(timeout=60) == 0
        assert_events_complete(client, done)
        # The stopping worker took nothing new.
        assert client.get(f"/api/v1/jobs/{queued['id']}").json()["status"] == "queued"
        successor = stack.add_worker("successor")
        try:
            assert wait_for(client, queued["id"])["status"] == "successful"
        finally:
            stop(successor)
        assert probe.runs == later.runs == 1


def test_sigterm_past_the_grace_stops_the_run_as_error(stack: Stack, tmp_path: Path) -> None:
    probe = Probe.new(tmp_path)
    worker = stack.add_worker("impatient", JOB_COMPLETION_WAIT="1")
    with stack.client() as client:
        job = submit(client, probe.body())
        wait_until(lambda: waiting_at_gate(client, job["id"]), "the run to reach the gate")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        done = client.get(f"/api/v1/jobs/{job['id']}").json()
        assert done["status"] == "error"
        assert done["reason"] == "worker shut down before the run finished"
        assert run_processes(job["id"]) == []
        assert_events_complete(client, done)
        successor = stack.add_worker("successor")
        try:
            probe.gate.touch()
            ran_once_more(stack, client, tmp_path)
        finally:
            stop(successor)
        assert probe.runs == 1
        assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "error"


def test_redis_down_jobs_are_stored_then_run_when_it_returns(
    start_stack: StackFactory, tmp_path: Path
) -> None:
    redis_server = EmbeddedRedis(tmp_path / "redis")
    redis_server.start()
    try:
        stack = start_stack(workers=0, redis_url=redis_server.url, SWEEP_INTERVAL="2")
        worker = stack.add_worker("reconnecting")
        with stack.client() as client:
            first = Probe.new(tmp_path)
            first.gate.touch()
            assert wait_for(client, submit(client, first.body())["id"])["status"] == "successful"

            redis_server.stop()
            wait_until(lambda: client.get("/ready").status_code == 503, "/ready to report Redis down")
            probe = Probe.new(tmp_path)
            probe.gate.touch()
            job = submit(client, probe.body())
            assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "queued"

            redis_server.start()  # empty: the queue entry, if any, is gone with the old server
            done = wait_for(client, job["id"], deadline_s=90)
            assert done["status"] == "successful"
            assert worker.poll() is None, "the worker must survive the outage"
            assert client.get("/ready").status_code == 200
            assert_events_complete(client, done)
            assert probe.runs == 1
            stop(worker)  # while its Redis is still there: a stopping worker waits for Redis too
    finally:
        redis_server.stop()


@pytest.fixture
def proxy(backends: Backends) -> Iterator[TcpProxy]:
    url = make_url(backends.database_server_url)
    if url.get_backend_name() == "sqlite":
        pytest.skip("cutting the database off needs a database server (CI runs these on MariaDB)")
    tcp = TcpProxy(url.port or 3306)
    yield tcp
    tcp.close()


def test_database_outage_during_a_run_loses_nothing(stack: Stack, proxy: TcpProxy, tmp_path: Path) -> None:
    # A buffer of 100 events for 150 after the cut: the channel carries the first ones in memory, then
    # spills, and ansible-runner writes the rest to its job_events files (kept here to be counted).
    probe = Probe.new(tmp_path)
    worker = stack.add_worker(
        "cut-off",
        DATABASE_URL=through(stack, proxy),
        DB_RETRY_FOR="120",
        EVENT_BUFFER_SIZE="100",
        KEEP_WORK_DIRS="true",
    )
    with stack.client() as client:
        try:
            job = submit(client, probe.body(after_items=150))
            wait_until(lambda: waiting_at_gate(client, job["id"]), "the run to reach the gate")
            proxy.cut()
            probe.gate.touch()
            wait_until(lambda: probe.done, "the run to end while the database is away")
            proxy.restore()
            done = wait_for(client, job["id"], deadline_s=60)
            assert done["status"] == "successful"
            events = assert_events_complete(client, done)
            after = [e for e in events if e["event"] == "runner_item_on_ok" and e["task"] == "After the gate"]
            assert len(after) == 150
            assert events[-1]["event"] == "playbook_on_stats"
            assert probe.runs == 1
            # Only what the channel could not carry went through files.
            (work,) = stack.work_dir.glob(f"run-{job['id']}-*")
            spilled = sorted(
                int(path.name.split("-")[0]) for path in work.glob("artifacts/*/job_events/*.json")
            )
            assert 0 < len(spilled) < len(events) - 100
            assert spilled == list(range(spilled[0], len(events) + 1))
        finally:
            stop(worker)


def test_database_away_past_the_limit_ends_the_run_as_error(
    stack: Stack, proxy: TcpProxy, tmp_path: Path
) -> None:
    probe = Probe.new(tmp_path)
    worker = stack.add_worker("given-up", DATABASE_URL=through(stack, proxy), DB_RETRY_FOR="2")
    log = stack.logs / "given-up.log"
    with stack.client() as client:
        try:
            job = submit(client, probe.body())
            wait_until(lambda: waiting_at_gate(client, job["id"]), "the run to reach the gate")
            proxy.cut()
            probe.gate.touch()
            wait_until(
                lambda: '"operation": "finish"' in log.read_text(), "the worker to retry the final status"
            )
            assert client.get(f"/api/v1/jobs/{job['id']}").json()["status"] == "running"
            proxy.restore()
            done = wait_for(client, job["id"], deadline_s=60)
            assert done["status"] == "error"
            assert "database was unreachable for more than 2 s" in done["reason"]
            assert_events_complete(client, done)
            assert probe.runs == 1
        finally:
            stop(worker)


def test_a_bugs_reason_names_the_error_not_its_task_group() -> None:
    nested = ExceptionGroup("outer", [ExceptionGroup("inner", [RuntimeError("event 7 arrived after 5")])])
    assert _internal_error(nested) == "internal error: RuntimeError: event 7 arrived after 5"
    two = ExceptionGroup("two", [KeyError("a"), ValueError("b")])
    assert _internal_error(two) == "internal error: ExceptionGroup: two (2 sub-exceptions)"


def test_a_permanent_database_error_ends_the_run_at_once_with_its_reason(
    stack: Stack, tmp_path: Path
) -> None:
    """Not a pause of the database but a broken schema: retrying would hide it for DB_RETRY_FOR seconds
    and then blame the network. The run ends `error` at once, saying what the database said."""
    engine = stack.db()
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE job_event DROP COLUMN play"))
    engine.dispose()
    probe = Probe.new(tmp_path)
    probe.gate.touch()
    worker = stack.add_worker("broken-schema", DB_RETRY_FOR="600")
    with stack.client() as client:
        try:
            done = wait_for(client, submit(client, probe.body())["id"], deadline_s=60)
        finally:
            stop(worker)
    assert done["status"] == "error"
    assert "internal error" in done["reason"] and "play" in done["reason"], done["reason"]
    assert "unreachable" not in done["reason"]
