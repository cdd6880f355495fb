"""Host and named locks end to end: real workers, real ansible-playbook runs on localhost inventories.

Overlap is judged from what the playbook itself records (tests/playbooks/journal.yml writes "start" and
"end" lines to a file per host) and from the jobs' own `started_at` and `finished_at`.
"""

from __future__ import annotations

import itertools
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from harness.processes import Stack
from service.embedded import EmbeddedRedis
from service.runner.execute import kill_run_processes
from tests.support import StackFactory, sample, submit, wait_for, wait_until
from tests.support.stacks import stop

LOCAL3 = "inventory/local3.yml"
GROUPS = "inventory/groups.yml"


@dataclass
class Journal:
    """Where runs of journal.yml write their start and end lines, one file per host."""

    path: Path
    gates: list[Path] = field(default_factory=list)

    def gate(self, name: str) -> Path:
        """A file a run waits for (`gate=`); every gate is opened when the test ends, however it ends, so
        that a failed test leaves no run holding a host for the next."""
        gate = self.path.parent / f"gate-{name}"
        self.gates.append(gate)
        return gate

    def body(self, tag: str, *, gate: Path | None = None, hold: float = 0, **fields: Any) -> dict[str, Any]:
        extra: dict[str, Any] = {"tag": tag, "journal": str(self.path), "hold": hold}
        if gate is not None:
            extra["gate"] = str(gate)
        return {"playbook": "journal.yml", "inventory": LOCAL3, "extra_vars": extra, **fields}

    def lines(self, host: str) -> list[str]:
        path = self.path / host
        return path.read_text().splitlines() if path.exists() else []

    def assert_no_overlap(self, host: str) -> list[str]:
        """Every start on `host` is followed by its own end before any other start; returns the tags."""
        lines = self.lines(host)
        tags = []
        for start, end in zip(lines[::2], lines[1::2], strict=True):
            kind, tag = start.split()
            assert (kind, end) == ("start", f"end {tag}"), f"runs overlapped on {host}: {lines}"
            tags.append(tag)
        return tags


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    path = tmp_path / f"journal-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    journal = Journal(path)
    yield journal
    for gate in journal.gates:
        gate.touch()


@pytest.fixture(scope="module")
def lock_stack(start_stack: StackFactory) -> Stack:
    """Two workers of 4 slots each: enough that only the locks keep runs apart."""
    return start_stack(workers=2, WORKER_MAX_JOBS="4", METRICS_MAX_AGE="0")


@pytest.fixture
def client(lock_stack: Stack) -> Iterator[httpx.Client]:
    with lock_stack.client() as client:
        yield client


def job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
    return found


def waiting(client: httpx.Client, job_id: str) -> bool:
    return job(client, job_id)["waiting_for"] is not None


def at_gate(journal: Journal, host: str, tag: str) -> bool:
    return f"start {tag}" in journal.lines(host)


def test_exclusive_runs_on_a_shared_host_wait_and_disjoint_ones_do_not(
    client: httpx.Client, journal: Journal
) -> None:
    gate = journal.gate("a")
    holder = submit(client, journal.body("a", gate=gate, exclusive=True, limit="h1"))
    wait_until(lambda: at_gate(journal, "h1", "a"), "the holder to start on h1")
    assert job(client, holder["id"])["targets"] == ["h1"]
    # A run on h1 and h2 waits for h1; a run on h3 alone runs and ends while the holder still holds h1.
    blocked = submit(client, journal.body("b", exclusive=True, limit="h2:h1"))
    disjoint = submit(client, journal.body("c", exclusive=True, limit="h3"))
    assert wait_for(client, disjoint["id"])["status"] == "successful"
    wait_until(lambda: waiting(client, blocked["id"]), "the blocked run to wait")
    seen = job(client, blocked["id"])
    assert seen["status"] == "queued"
    assert seen["waiting_for"] == {"hosts": ["h1"], "locks": [], "jobs": [holder["id"]]}
    depth = client.get("/api/v1/queue").json()
    assert depth["blocked"] == 1
    assert depth["inflight"] == depth["queued"] + depth["running"] == 1  # the holder alone
    # A stream of short runs on h2, which is free: each waits behind the run that needs h1 and h2, which
    # takes nothing while it waits but is promised h2 (no overtaking, no starvation).
    shorts = []
    for tag in ("d", "e", "f"):
        shorts.append(submit(client, journal.body(tag, exclusive=True, limit="h2")))
        wait_until(lambda: waiting(client, shorts[-1]["id"]), f"short run {tag} to wait behind the wide one")
    assert job(client, shorts[0]["id"])["waiting_for"] == {
        "hosts": ["h2"],
        "locks": [],
        "jobs": [blocked["id"]],
    }

    gate.touch()
    done = {"a": wait_for(client, holder["id"]), "b": wait_for(client, blocked["id"])}
    done |= {short["extra_vars"]["tag"]: wait_for(client, short["id"]) for short in shorts}
    assert all(ran["status"] == "successful" for ran in done.values())
    assert done["b"]["started_at"] >= done["a"]["finished_at"]
    assert min(done[tag]["started_at"] for tag in "def") >= done["b"]["finished_at"]
    assert done["b"]["waiting_for"] is None
    assert journal.assert_no_overlap("h1") == ["a", "b"]
    assert journal.assert_no_overlap("h2") == ["b", "d", "e", "f"]
    assert journal.assert_no_overlap("h3") == ["c"]


def test_a_run_that_asks_nothing_waits_for_an_exclusive_one_and_two_plain_runs_overlap(
    client: httpx.Client, journal: Journal
) -> None:
    together = journal.gate("together")
    first = submit(client, journal.body("p1", gate=together, limit="h1"))
    second = submit(client, journal.body("p2", gate=together, limit="h1"))
    wait_until(lambda: at_gate(journal, "h1", "p1") and at_gate(journal, "h1", "p2"), "both on h1 at once")
    together.touch()
    assert {wait_for(client, run["id"])["status"] for run in (first, second)} == {"successful"}
    # Runs that ask for nothing are not resolved while no exclusive want exists.
    assert job(client, first["id"])["targets"] is None

    gate = journal.gate("x")
    holder = submit(client, journal.body("x", gate=gate, exclusive=True, limit="h1"))
    wait_until(lambda: at_gate(journal, "h1", "x"), "the exclusive run to start")
    plain = submit(client, journal.body("plain", limit="h1:h2"))
    elsewhere = submit(client, journal.body("elsewhere", limit="h3"))
    assert wait_for(client, elsewhere["id"])["status"] == "successful"
    wait_until(lambda: waiting(client, plain["id"]), "the plain run to wait")
    assert job(client, plain["id"])["waiting_for"] == {"hosts": ["h1"], "locks": [], "jobs": [holder["id"]]}
    assert job(client, plain["id"])["targets"] == ["h1", "h2"]
    gate.touch()
    done_holder, done_plain = wait_for(client, holder["id"]), wait_for(client, plain["id"])
    assert done_plain["status"] == "successful"
    assert done_plain["started_at"] >= done_holder["finished_at"]
    assert journal.assert_no_overlap("h2") == ["plain"]
    assert journal.lines("h1")[-4:] == ["start x", "end x", "start plain", "end plain"]


def test_an_exclusive_run_waits_for_a_plain_run_already_going(client: httpx.Client, journal: Journal) -> None:
    """A run that asked for nothing started without resolving its hosts: it may touch any, so an exclusive
    run waits for it; a plain run elsewhere still goes."""
    gate = journal.gate("plain")
    plain = submit(client, journal.body("p", gate=gate, limit="h1"))
    wait_until(lambda: at_gate(journal, "h1", "p"), "the plain run to start")
    exclusive = submit(client, journal.body("x", exclusive=True, limit="h1,h2"))
    wait_until(lambda: waiting(client, exclusive["id"]), "the exclusive run to wait")
    assert job(client, exclusive["id"])["waiting_for"] == {
        "hosts": ["h1", "h2"],
        "locks": [],
        "jobs": [plain["id"]],
    }
    elsewhere = wait_for(client, submit(client, journal.body("e", limit="h3"))["id"])
    assert (elsewhere["status"], elsewhere["targets"]) == ("successful", ["h3"])
    gate.touch()
    done_plain, done_exclusive = wait_for(client, plain["id"]), wait_for(client, exclusive["id"])
    assert done_exclusive["status"] == "successful"
    assert done_exclusive["started_at"] >= done_plain["finished_at"]
    assert journal.assert_no_overlap("h1") == ["p", "x"]


def test_named_locks_serialise_runs_on_different_hosts(client: httpx.Client, journal: Journal) -> None:
    gate = journal.gate("lb")
    holder = submit(client, journal.body("a", gate=gate, limit="h1", locks=["lb-pool", "dns"]))
    wait_until(lambda: at_gate(journal, "h1", "a"), "the lock holder to start")
    other = submit(client, journal.body("b", limit="h3", locks=["lb-pool"]))
    free = submit(client, journal.body("c", limit="h3", locks=["db"]))
    assert wait_for(client, free["id"])["status"] == "successful"
    wait_until(lambda: waiting(client, other["id"]), "the second lock user to wait")
    assert job(client, other["id"])["waiting_for"] == {
        "hosts": [],
        "locks": ["lb-pool"],
        "jobs": [holder["id"]],
    }
    gate.touch()
    done_holder, done_other = wait_for(client, holder["id"]), wait_for(client, other["id"])
    assert done_other["status"] == "successful"
    assert done_other["started_at"] >= done_holder["finished_at"]


def test_reversed_host_orders_submitted_together_all_complete(client: httpx.Client, journal: Journal) -> None:
    runs = [
        submit(client, journal.body(f"r{index}", exclusive=True, limit=limit))
        for index in range(8)
        for limit in ("h1,h2", "h2,h1")
    ]
    done = [wait_for(client, run["id"], deadline_s=180) for run in runs]
    assert {run["status"] for run in done} == {"successful"}
    assert sorted(journal.assert_no_overlap("h1")) == sorted(journal.assert_no_overlap("h2"))
    spans = sorted((run["started_at"], run["finished_at"]) for run in done)
    assert all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(spans)), spans


def test_waiters_start_by_priority_then_submit_order_and_a_waiting_run_cancels_at_once(
    client: httpx.Client, journal: Journal
) -> None:
    gate = journal.gate("order")
    submit(client, journal.body("holder", gate=gate, exclusive=True, limit="h2"))
    wait_until(lambda: at_gate(journal, "h2", "holder"), "the holder to start")
    waiters = {}
    for tag, priority in (
        ("low", "low"),
        ("first", "default"),
        ("doomed", "default"),
        ("high", "high"),
        ("second", "default"),
    ):
        waiters[tag] = submit(client, journal.body(tag, exclusive=True, limit="h2", priority=priority))
    wait_until(lambda: all(waiting(client, run["id"]) for run in waiters.values()), "every run to wait")
    assert client.get("/api/v1/queue").json()["blocked"] == 5
    assert sample(client.get("/metrics").text, "ars_queue_jobs", state="blocked") == 5

    canceled = client.post(f"/api/v1/jobs/{waiters['doomed']['id']}/cancel")
    assert canceled.status_code == 202 and canceled.json()["status"] == "canceled"
    assert client.get("/api/v1/queue").json()["blocked"] == 4

    gate.touch()
    done = {tag: wait_for(client, run["id"]) for tag, run in waiters.items() if tag != "doomed"}
    assert {run["status"] for run in done.values()} == {"successful"}
    assert sorted(done, key=lambda tag: done[tag]["started_at"]) == ["high", "first", "second", "low"]
    assert journal.assert_no_overlap("h2") == ["holder", "high", "first", "second", "low"]
    doomed = job(client, waiters["doomed"]["id"])
    assert (doomed["status"], doomed["started_at"], doomed["waiting_for"]) == ("canceled", None, None)


def test_a_lock_table_lost_with_redis_is_rebuilt_from_the_database(
    lock_stack: Stack, client: httpx.Client, journal: Journal
) -> None:
    gate = journal.gate("rebuild")
    holder = submit(client, journal.body("a", gate=gate, exclusive=True, limit="h1"))
    wait_until(lambda: at_gate(journal, "h1", "a"), "the holder to start")
    store = redis.Redis.from_url(lock_stack.env["REDIS_URL"])
    lost = list(store.scan_iter(f"{lock_stack.env['QUEUE_NAME']}:locks:*"))
    assert lost and store.delete(*lost) == len(lost)
    store.close()
    blocked = submit(client, journal.body("b", exclusive=True, limit="h1"))
    wait_until(lambda: waiting(client, blocked["id"]), "the new run to wait for the rebuilt lease")
    gate.touch()
    done_holder, done_blocked = wait_for(client, holder["id"]), wait_for(client, blocked["id"])
    assert done_blocked["status"] == "successful"
    assert done_blocked["started_at"] >= done_holder["finished_at"]
    assert journal.assert_no_overlap("h1")[-2:] == ["a", "b"]


@pytest.fixture
def fault_stack(start_stack: StackFactory) -> Stack:
    """No worker: each test starts the ones it needs; the reaper acts after 4 s of silence."""
    return start_stack(workers=0, WORKER_LOST_AFTER="4", SWEEP_INTERVAL="2")


def test_a_killed_holders_leases_go_with_the_reap(fault_stack: Stack, journal: Journal) -> None:
    gate = journal.gate("killed")
    doomed = fault_stack.add_worker("doomed")
    survivor = None
    with fault_stack.client() as client:
        try:
            holder = submit(client, journal.body("a", gate=gate, exclusive=True, limit="h1"))
            wait_until(lambda: at_gate(journal, "h1", "a"), "the holder to start")
            survivor = fault_stack.add_worker("survivor")
            blocked = submit(client, journal.body("b", exclusive=True, limit="h1"))
            wait_until(lambda: waiting(client, blocked["id"]), "the second run to wait")
            doomed.send_signal(signal.SIGKILL)
            doomed.wait()
            kill_run_processes(holder["id"])  # as when a pod dies: its processes go with it
            lost = wait_for(client, holder["id"], deadline_s=60)
            assert lost["status"] == "error" and lost["reason"].startswith("worker lost")
            done = wait_for(client, blocked["id"], deadline_s=60)
            assert done["status"] == "successful"
            assert done["started_at"] >= lost["finished_at"]
            assert journal.lines("h1") == ["start a", "start b", "end b"]
        finally:
            gate.touch()
            for process in (doomed, survivor):
                if process is not None:
                    stop(process)


def test_sigterm_past_the_grace_releases(fault_stack: Stack, journal: Journal) -> None:
    gate = journal.gate("sigterm")
    impatient = fault_stack.add_worker("impatient", JOB_COMPLETION_WAIT="1")
    with fault_stack.client() as client:
        holder = submit(client, journal.body("a", gate=gate, exclusive=True, limit="h1"))
        wait_until(lambda: at_gate(journal, "h1", "a"), "the holder to start")
        blocked = submit(client, journal.body("b", exclusive=True, limit="h1"))
        wait_until(lambda: waiting(client, blocked["id"]), "the second run to wait")
        impatient.send_signal(signal.SIGTERM)
        assert impatient.wait(timeout=60) == 0
        ended = job(client, holder["id"])
        assert (ended["status"], ended["reason"]) == ("error", "worker shut down before the run finished")
        # Granted at once, queued in arq for whichever worker comes.
        assert job(client, blocked["id"])["waiting_for"] is None
        assert client.get("/api/v1/queue").json()["queued"] == 1
        successor = fault_stack.add_worker("successor")
        try:
            assert wait_for(client, blocked["id"])["status"] == "successful"
        finally:
            gate.touch()
            stop(successor)


def test_lock_fields_as_stored_and_exclusive_by_default(start_stack: StackFactory) -> None:
    stack = start_stack(workers=0, EXCLUSIVE_DEFAULT="true")
    with stack.client() as client:
        by_default = submit(client, {"playbook": "debug.yml", "inventory": GROUPS, "limit": "web:&prod"})
        assert (by_default["exclusive"], by_default["targets"]) == (True, ["h1"])
        patterns = {
            "all:!h3": ["h1", "h2"],
            "all[0:1]": ["h1", "h2"],
            "~h[23]": ["h2", "h3"],
            "h3,h1": ["h1", "h3"],
        }
        for limit, targets in patterns.items():
            body = {"playbook": "debug.yml", "inventory": LOCAL3, "limit": limit}
            assert submit(client, body)["targets"] == targets, limit
        implicit = submit(client, {"playbook": "debug.yml"})
        assert implicit["targets"] == ["localhost"]
        plain = submit(client, {"playbook": "debug.yml", "exclusive": False, "locks": ["b", "a:1", "b"]})
        assert (plain["exclusive"], plain["targets"], plain["locks"]) == (False, None, ["a:1", "b"])
        assert plain["waiting_for"] is None


def test_redis_restarted_empty_keeps_a_running_holders_lease(
    start_stack: StackFactory, journal: Journal, tmp_path: Path
) -> None:
    """Redis stops and comes back with nothing: the lease of the run still going is rebuilt from the
    database before anything else is granted, and the run submitted meanwhile waits for it."""
    server = EmbeddedRedis(tmp_path / "redis")
    server.start()
    try:
        stack = start_stack(workers=2, redis_url=server.url, SWEEP_INTERVAL="2")
        gate = journal.gate("restart")
        with stack.client() as client:
            holder = submit(client, journal.body("a", gate=gate, exclusive=True, limit="h1"))
            wait_until(lambda: at_gate(journal, "h1", "a"), "the holder to start")
            server.stop()
            server.start()
            blocked = submit(client, journal.body("b", exclusive=True, limit="h1"))
            # Queued again by the sweeper (Redis lost arq's queue too), it finds h1 leased and waits.
            wait_until(lambda: waiting(client, blocked["id"]), "the new run to wait", deadline_s=90)
            assert job(client, blocked["id"])["waiting_for"] == {
                "hosts": ["h1"],
                "locks": [],
                "jobs": [holder["id"]],
            }
            gate.touch()
            done_holder, done_blocked = wait_for(client, holder["id"]), wait_for(client, blocked["id"])
            assert (done_holder["status"], done_blocked["status"]) == ("successful", "successful")
            assert done_blocked["started_at"] >= done_holder["finished_at"]
            assert journal.assert_no_overlap("h1") == ["a", "b"]
            for worker in stack.processes[1:]:
                stop(worker)  # while Redis is still there: a stopping worker waits for it
    finally:
        server.stop()


def test_a_release_missed_while_redis_was_away_is_made_by_the_sweeper(
    fault_stack: Stack, journal: Journal
) -> None:
    worker = fault_stack.add_worker("sweeping")
    try:
        with fault_stack.client() as client:
            ended = wait_for(client, submit(client, journal.body("a", exclusive=True, limit="h1"))["id"])
            assert ended["status"] == "successful"
            # As if its release had not reached Redis: the table still says it holds h1.
            table = redis.Redis.from_url(fault_stack.env["REDIS_URL"])
            prefix = f"{fault_stack.env['QUEUE_NAME']}:locks"
            table.hset(f"{prefix}:holders", ended["id"], '{"k": "x", "h": ["h1"], "l": []}')
            table.sadd(f"{prefix}:exclusive", ended["id"])
            table.close()
            later = submit(client, journal.body("b", exclusive=True, limit="h1"))
            done = wait_for(client, later["id"])
            assert done["status"] == "successful"
            assert done["waiting_for"] is None
        log = (fault_stack.logs / "sweeping.log").read_text()
        assert "released leases of runs that ended" in log
        assert journal.assert_no_overlap("h1") == ["a", "b"]
    finally:
        stop(worker)
