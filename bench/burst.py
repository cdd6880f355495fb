"""A burst of N jobs (issue 7's load point), 2 workers: all stored, queued and run; GET answers meanwhile."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa

from bench.harness import (
    BENCH,
    Row,
    load,
    percentile,
    print_table,
    progress,
    rss_mib,
    service,
    status_counts,
    unsuccessful,
    wait_finished,
    wait_workers_ready,
)

JOB = {"playbook": "trivial.yml", "inventory": "inventory/hosts1.yml"}


def run() -> dict[str, Any]:
    load_before = load()
    jobs = BENCH.burst_jobs
    with service(workers=2, WORKER_MAX_JOBS=str(BENCH.drain_max_jobs)) as stack:
        wait_workers_ready(stack)
        workers = [process.pid for process in stack.processes[1:]]
        rss_before = [rss_mib(pid) for pid in workers]
        progress(f"burst: {jobs} jobs from 8 clients, 2 workers")
        started = time.perf_counter()

        def post(_: int) -> str:
            with stack.client() as client:
                response = client.post("/api/v1/jobs", json=JOB)
                response.raise_for_status()
                return str(response.json()["id"])

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(post, range(jobs)))
        submitted = time.perf_counter() - started
        latencies: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            with stack.client() as client:
                while not stop.is_set():
                    began = time.perf_counter()
                    client.get(f"/api/v1/jobs/{ids[-1]}").raise_for_status()
                    latencies.append(time.perf_counter() - began)
                    time.sleep(0.05)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            wait_finished(stack, jobs, deadline_s=jobs * 20)
        finally:
            stop.set()
            thread.join()
        elapsed = time.perf_counter() - started
        rss_after = [rss_mib(pid) for pid in workers]
        statuses = status_counts(stack)
        failures = unsuccessful(stack)
        engine = stack.db()
        with engine.connect() as connection:
            per_worker: dict[str, int] = dict(
                connection.execute(sa.text("SELECT worker_id, COUNT(*) FROM job GROUP BY worker_id")).all()
            )
        engine.dispose()
    all_ran = statuses == {"successful": jobs} and len(set(ids)) == jobs
    rows = [
        Row(
            f"burst of {jobs} jobs, 2 workers",
            f"submitted in {submitted:.1f} s ({jobs / submitted:.0f} jobs/s), all done in {elapsed:.0f} s"
            f" ({jobs / elapsed * 60:.0f} jobs/min); runs per worker {sorted(per_worker.values())}",
            "—",
            "all stored, queued, run once",
            all_ran,
        ),
        Row(
            "GET /jobs/{id} during the burst",
            f"{len(latencies)} answers, p50 {percentile(latencies, 50) * 1000:.0f} ms,"
            f" p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms",
            "—",
            "answers throughout",
            bool(latencies),
        ),
        Row(
            "worker RSS across the burst",
            ", ".join(f"{b:.0f} → {a:.0f} MiB" for b, a in zip(rss_before, rss_after, strict=True)),
            "—",
            "report",
            None,
        ),
    ]
    print_table("burst", rows)
    return {
        "jobs": jobs,
        "submit_s": submitted,
        "seconds": elapsed,
        "statuses": statuses,
        "unsuccessful": failures,
        "runs_per_worker": list(per_worker.values()),
        "get_latency_s": {
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
        },
        "rss_mib": {"before": rss_before, "after": rss_after},
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
