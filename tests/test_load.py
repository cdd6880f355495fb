"""A burst of runs: all stored, queued and run exactly once by two workers, while the API keeps answering.

(`bench/` runs the 500-job version and prints its figures; the suite keeps to a burst it can afford.)
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

from tests.support import StackFactory, submit, wait_for

BURST = 40


def test_burst_runs_each_job_once_with_two_workers(start_stack: StackFactory, tmp_path: Path) -> None:
    stack = start_stack(workers=2)
    ledger = tmp_path / "ledger"
    with stack.client() as client:
        tags = [uuid.uuid4().hex for _ in range(BURST)]
        jobs = [
            submit(client, {"playbook": "ledger.yml", "extra_vars": {"ledger": str(ledger), "tag": tag}})
            for tag in tags
        ]
        assert stack.count_jobs() == BURST

        latencies: list[float] = []
        stop = threading.Event()

        def reader() -> None:
            with stack.client() as http:
                while not stop.is_set():
                    started = time.monotonic()
                    assert http.get(f"/api/v1/jobs/{jobs[0]['id']}").status_code == 200
                    latencies.append(time.monotonic() - started)

        thread = threading.Thread(target=reader)
        thread.start()
        try:
            done = [wait_for(client, job["id"], deadline_s=300) for job in jobs]
        finally:
            stop.set()
            thread.join()
    assert [job["status"] for job in done] == ["successful"] * BURST
    assert sorted(ledger.read_text().split()) == sorted(tags)  # each run exactly once
    assert latencies, "the API answered during the drain"
    engine = stack.db()
    with engine.connect() as connection:
        workers = set(connection.execute(sa.text("SELECT DISTINCT worker_id FROM job")).scalars())
    engine.dispose()
    assert len(workers) == 2, "both workers took runs"
    print(
        f"\n{BURST} runs; GET /jobs/{{id}} during the drain: {len(latencies)} answers,"
        f" max {max(latencies) * 1000:.0f} ms"
    )
