"""Schedules (issue 18): how soon after its fire time a schedule's run is queued, alone and with many
schedules due at the same moment on two API processes, with the workers at zero.

The schedules are created over the API with a yearly cron; their next fire time is then set a few seconds
ahead in the database, as the previous fire leaves it (the API processes poll every SCHEDULE_POLL_INTERVAL,
so they know it before it comes, as they know a real one). Lateness: the fire time to the run's
`created_at`, stamped inside the transaction that queues it (the commit and the arq entry follow within
milliseconds).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from bench.harness import BENCH, Row, load, percentile, print_table, progress, service
from harness.processes import Stack, api_command, start_process, wait_http
from service.embedded import free_port

# Ahead of the pollers (5 s by default): every API process has read the fire time before it comes.
_AHEAD_S = 8


def _create(stack: Stack, count: int) -> list[str]:
    ids = []
    with stack.client() as client:
        for index in range(count):
            response = client.post(
                "/api/v1/schedules",
                json={
                    "name": f"bench-{index}-{uuid.uuid4().hex[:6]}",
                    "cron": "0 0 1 1 *",
                    "overlap": "queue",
                    "job": {"playbook": "trivial.yml", "inventory": "inventory/hosts5.yml"},
                },
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


def _fire_together(stack: Stack, ids: list[str]) -> dict[str, Any]:
    """Make every schedule of `ids` due at the same moment; wait for their runs; lateness of each."""
    fire_at = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(seconds=_AHEAD_S)
    engine = stack.db()
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("UPDATE schedule SET next_fire_at = :at WHERE id IN :ids").bindparams(
                    sa.bindparam("ids", expanding=True)
                ),
                {"at": fire_at, "ids": ids},
            )
        query = sa.text(
            "SELECT j.created_at, f.fire_at FROM schedule_fire f JOIN job j ON j.id = f.job_id"
            " WHERE f.fire_at = :at AND f.schedule_id IN :ids"
        ).bindparams(sa.bindparam("ids", expanding=True))
        deadline = time.monotonic() + _AHEAD_S + 120
        while True:
            with engine.connect() as connection:
                rows = connection.execute(query, {"at": fire_at, "ids": ids}).all()
                jobs = connection.execute(
                    sa.text("SELECT COUNT(*) FROM job WHERE schedule_id IN :ids").bindparams(
                        sa.bindparam("ids", expanding=True)
                    ),
                    {"ids": ids},
                ).scalar_one()
            if len(rows) == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    finally:
        engine.dispose()
    late = [(created - fired).total_seconds() for created, fired in rows]
    return {"schedules": len(ids), "fired": len(rows), "jobs": int(jobs), "lateness_s": late}


def _second_api(stack: Stack) -> None:
    port = free_port()
    log = stack.logs / "api2.log"
    process = start_process(api_command(port), stack.env, log)
    stack.processes.append(process)
    wait_http(f"http://127.0.0.1:{port}/health", process, log)


def run() -> dict[str, Any]:
    load_before = load()
    count, rounds = BENCH.schedules_due, BENCH.schedule_rounds
    progress(f"schedules: 1 schedule fired {rounds} times, then {count} due at once, on 2 API processes")
    with service(workers=0) as stack:
        _second_api(stack)
        [solo] = _create(stack, 1)
        alone = [_fire_together(stack, [solo]) for _ in range(rounds)]
        crowd_ids = _create(stack, count)
        crowd = _fire_together(stack, crowd_ids)
    solo_late = [late for result in alone for late in result["lateness_s"]]
    crowd_late = crowd["lateness_s"]
    # Each round of the single schedule adds one job: `jobs` counts all of them so far.
    exactly_once = crowd["jobs"] == crowd["fired"] == count and [r["jobs"] for r in alone] == list(
        range(1, rounds + 1)
    )
    rows = [
        Row(
            "fire time → run queued, 1 schedule",
            f"median {percentile(solo_late, 50) * 1000:.0f} ms, max {max(solo_late) * 1000:.0f} ms"
            f" ({len(solo_late)} fires)",
            "—",
            "≤ 2 s",
            max(solo_late) <= 2,
        ),
        Row(
            f"fire time → run queued, {count} schedules due at once",
            f"median {percentile(crowd_late, 50) * 1000:.0f} ms, p95 {percentile(crowd_late, 95) * 1000:.0f}"
            f" ms, last {max(crowd_late) * 1000:.0f} ms",
            "—",
            "≤ 2 s",
            max(crowd_late) <= 2,
        ),
        Row(
            "runs per fire time (2 API processes firing)",
            f"{crowd['jobs']} runs for {crowd['fired']} fire times; single schedule: "
            f"{[r['jobs'] for r in alone]} after each round",
            "—",
            "exactly 1",
            exactly_once,
        ),
    ]
    print_table("schedules", rows)
    return {
        "load_before": load_before,
        "rows": [row.as_dict() for row in rows],
        "alone_lateness_s": solo_late,
        "crowd": crowd,
        "exactly_once": exactly_once,
    }
