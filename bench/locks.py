"""Lock contention (issue 16): many exclusive runs over a few hosts with overlapping sets, 2 workers.

Figures: throughput, how long runs waited, how soon a run started once the last run on its hosts ended,
and the proof that no two runs overlapped on a host (from the playbook's own journal of each host and from
the jobs' started_at and finished_at). Also what the lock table costs a run that asks for nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH,
    Row,
    load,
    percentile,
    print_table,
    progress,
    scratch,
    service,
    status_counts,
    wait_finished,
    wait_workers_ready,
)
from harness.processes import Stack
from service.config import Settings
from service.jobs.locks import LockTable, Want
from service.models import utcnow
from service.queue import create_redis

MAX_JOBS = 4
HOLD_S = 0.2


def _epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


def _contend(stack: Stack, journal: Path, runs: int, hosts: int, exclusive: bool) -> dict[str, Any]:
    chooser = random.Random(16)
    limits = [
        ",".join(f"h{n}" for n in chooser.sample(range(1, hosts + 1), chooser.randint(1, 3)))
        for _ in range(runs)
    ]

    latencies: list[float] = []

    def post(index: int) -> str:
        body = {
            "playbook": "journal.yml",
            "inventory": f"inventory/hosts{hosts}.yml",
            "limit": limits[index],
            "exclusive": exclusive,
            "extra_vars": {"tag": str(index), "journal": str(journal), "hold": HOLD_S},
        }
        with stack.client() as client:
            began = time.perf_counter()
            response = client.post("/api/v1/jobs", json=body)
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
            return str(response.json()["id"])

    started = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(post, range(runs)))
    submitted = time.perf_counter() - started
    blocked_seen = 0
    with stack.client() as client:
        while True:
            depth = client.get("/api/v1/queue").json()
            blocked_seen = max(blocked_seen, depth["blocked"])
            if depth["inflight"] + depth["blocked"] == 0:
                break
            time.sleep(0.1)
    wait_finished(stack, runs, deadline_s=runs * 10)
    elapsed = time.perf_counter() - started
    with stack.client() as client:
        jobs = [client.get(f"/api/v1/jobs/{job_id}").json() for job_id in ids]
    return {
        "jobs": jobs,
        "limits": limits,
        "submit_s": submitted,
        "post_s": latencies,
        "seconds": elapsed,
        "blocked_max": blocked_seen,
    }


def _journal_overlaps(journal: Path) -> int:
    """Starts on a host while another run's start on it has no end yet."""
    overlaps = 0
    for path in journal.iterdir():
        open_runs: set[str] = set()
        for line in path.read_text().splitlines():
            kind, tag = line.split()
            if kind == "start":
                overlaps += bool(open_runs)
                open_runs.add(tag)
            else:
                open_runs.discard(tag)
    return overlaps


def _spans(result: dict[str, Any]) -> dict[str, Any]:
    """Waits, starts after the last release on the run's hosts, and overlaps judged from the jobs' times."""
    jobs, limits = result["jobs"], result["limits"]
    spans = [
        (
            set(limit.split(",")),
            _epoch(job["created_at"]),
            _epoch(job["started_at"]),
            _epoch(job["finished_at"]),
        )
        for job, limit in zip(jobs, limits, strict=True)
    ]
    waits = [start - created for _, created, start, _ in spans]
    after_release, overlaps = [], 0
    for index, (hosts, _, start, end) in enumerate(spans):
        before = [
            other_end
            for other, (other_hosts, _, other_start, other_end) in enumerate(spans)
            if other != index and hosts & other_hosts and other_start < start
        ]
        overlaps += sum(
            1
            for other, (other_hosts, _, other_start, other_end) in enumerate(spans)
            if other > index and hosts & other_hosts and other_start < end and start < other_end
        )
        if before and max(before) <= start:
            after_release.append(start - max(before))
    return {"waits": waits, "after_release": after_release, "overlaps": overlaps}


def _fast_path_cost(rounds: int = 2000) -> float:
    """Microseconds a run that asks for nothing spends in the lock table (acquire and release), no lease
    held by anyone: the only cost locks add to such a run."""
    settings = Settings(redis_url=BENCH.redis_url, queue_name=f"arq:queue:bench-locks-{uuid.uuid4().hex}")

    async def main() -> float:
        redis = create_redis(settings)
        table = LockTable(redis, settings.queue_name)
        await table.restore({})
        now = utcnow()
        began = time.perf_counter()
        for index in range(rounds):
            await table.acquire(f"run{index}", "default", now, Want("u"))
            await table.release([f"run{index}"])
        spent = (time.perf_counter() - began) / rounds
        await redis.delete(*[key async for key in redis.scan_iter(f"{settings.queue_name}*")])
        await redis.aclose()
        return spent * 1e6

    return asyncio.run(main())


def run() -> dict[str, Any]:
    load_before = load()
    runs, hosts = BENCH.locks_runs, BENCH.locks_hosts
    figures: dict[str, Any] = {}
    for exclusive in (True, False):
        name = "exclusive" if exclusive else "unlocked"
        progress(f"locks: {runs} {name} runs over {hosts} hosts (1-3 each), 2 workers x {MAX_JOBS}")
        with scratch() as tmp, service(workers=2, WORKER_MAX_JOBS=str(MAX_JOBS)) as stack:
            journal = tmp / "journal"
            journal.mkdir()
            wait_workers_ready(stack)
            result = _contend(stack, journal, runs, hosts, exclusive)
            figures[name] = {
                **_spans(result),
                "journal_overlaps": _journal_overlaps(journal),
                "statuses": status_counts(stack),
                "seconds": result["seconds"],
                "submit_s": result["submit_s"],
                "post_p50_s": percentile(result["post_s"], 50),
                "post_p95_s": percentile(result["post_s"], 95),
                "blocked_max": result["blocked_max"],
            }
    progress("locks: the lock table's cost to a run that asks for nothing")
    fast_us = _fast_path_cost()
    locked, free = figures["exclusive"], figures["unlocked"]
    after = locked["after_release"]
    rows = [
        Row(
            f"{runs} exclusive runs over {hosts} hosts, 2 workers",
            f"{runs / locked['seconds']:.1f} runs/s ({locked['seconds']:.1f} s); {locked['statuses']}",
            f"without locks: {runs / free['seconds']:.1f} runs/s ({free['seconds']:.1f} s)",
            "all run, none overlapping",
            locked["statuses"] == {"successful": runs},
        ),
        Row(
            "overlaps on a host (journal; job times)",
            f"{locked['journal_overlaps']}; {locked['overlaps']}",
            f"without locks: {free['journal_overlaps']}; {free['overlaps']}",
            "0",
            locked["journal_overlaps"] == locked["overlaps"] == 0,
        ),
        Row(
            "POST /jobs, 8 clients (exclusive: targets resolved)",
            f"p50 {locked['post_p50_s'] * 1000:.0f} ms, p95 {locked['post_p95_s'] * 1000:.0f} ms;"
            f" {runs} in {locked['submit_s']:.1f} s",
            f"without locks: p50 {free['post_p50_s'] * 1000:.0f} ms, p95 {free['post_p95_s'] * 1000:.0f} ms;"
            f" {runs} in {free['submit_s']:.1f} s",
            "report",
            None,
        ),
        Row(
            "wait, submit → started",
            f"median {percentile(locked['waits'], 50):.1f} s, p95 {percentile(locked['waits'], 95):.1f} s,"
            f" max {max(locked['waits']):.1f} s; at most {locked['blocked_max']} blocked at once",
            f"without locks: max {max(free['waits']):.1f} s",
            "report",
            None,
        ),
        Row(
            "start after the last run on its hosts ended",
            f"median {percentile(after, 50) * 1000:.0f} ms, p95 {percentile(after, 95) * 1000:.0f} ms,"
            f" max {max(after) * 1000:.0f} ms ({len(after)} runs)",
            "—",
            "≤ 1 s",
            max(after) <= 1.0,
        ),
        Row(
            "lock table cost, run asking for nothing",
            f"{fast_us:.0f} µs per run (acquire + release)",
            "—",
            "not measurable next to a run",
            None,
        ),
    ]
    print_table("locks", rows)
    return {
        "runs": runs,
        "hosts": hosts,
        "hold_s": HOLD_S,
        "exclusive": {key: value for key, value in locked.items() if key not in ("waits", "after_release")},
        "unlocked": {key: value for key, value in free.items() if key not in ("waits", "after_release")},
        "wait_s": {
            "p50": percentile(locked["waits"], 50),
            "p95": percentile(locked["waits"], 95),
            "max": max(locked["waits"]),
        },
        "start_after_release_s": {
            "p50": percentile(after, 50),
            "p95": percentile(after, 95),
            "max": max(after),
        },
        "fast_path_us": fast_us,
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
