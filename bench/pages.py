"""The console's two reads: `GET /api/v1/jobs?limit=50` and `GET /api/v1/jobs/{id}/events?limit=100`.

One uvicorn process, no worker, wrk on loopback (one thread, `BENCH_API_CONNECTIONS` keep-alive
connections). The database holds `BENCH_PAGES_JOBS` finished jobs of `BENCH_PAGES_EVENTS` events each: the
events of a real run (heavy.yml on 5 hosts), numbered again and cycled, as the worker stores them. Each page
is read three ways, interleaved in a shuffled order, `BENCH_API_REPS` times (the figures are medians): by
an API that may keep pages in memory, by the same API with `If-None-Match` the page's ETag (a poller whose
page did not change), and by a second API on a copy of the database that reads the database every time
(`JOB_VIEW_CACHE_SIZE=0`: what a page that changes all the time costs).
"""

from __future__ import annotations

import random
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import sqlalchemy as sa

from bench.harness import (
    BENCH,
    Row,
    load,
    print_table,
    progress,
    runner_run,
    scratch,
    service,
    write_playbooks,
    wrk,
    wrk_median,
)
from harness.processes import Stack
from service.models import Job, JobEvent, JobStatus, utcnow
from service.redaction import Redactor
from service.runner.events import host_stats, to_row

_JOB_TABLE = cast(sa.Table, Job.__table__)  # type: ignore[attr-defined]
_EVENT_TABLE = cast(sa.Table, JobEvent.__table__)  # type: ignore[attr-defined]
_TARGET_RPS, _TARGET_P99_S = 1500, 0.050


def _recorded_events(tmp: Path) -> list[dict[str, Any]]:
    playbooks = write_playbooks(tmp / "playbooks")
    _, events = runner_run(playbooks, "heavy.yml", "inventory/hosts5.yml", tmp)
    return events


def _rows(recorded: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Jobs as a worker leaves them once finished, and their events (a real run's, cycled, numbered 1..N)."""
    redactor = Redactor([])
    stats_event = next(event for event in recorded if event.get("event") == "playbook_on_stats")
    stats = host_stats(stats_event.get("event_data") or {})
    now = utcnow()
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for index in range(BENCH.pages_jobs):
        created = now - timedelta(minutes=BENCH.pages_jobs - index)
        job_id = str(uuid.uuid4())
        jobs.append(
            {
                "id": job_id,
                "status": JobStatus.successful.value,
                "playbook": "heavy.yml",
                "source": {"type": "bundled"},
                "inventory": "inventory/hosts5.yml",
                "extra_vars": {"release": f"1.{index}", "dry": False, "owners": ["ops", "dev"]},
                "limit": None,
                "tags": [],
                "skip_tags": [],
                "check": False,
                "diff": False,
                "verbosity": 0,
                "forks": None,
                "timeout": None,
                "priority": "default",
                "labels": {"team": "ops", "env": "staging"},
                "source_commit": None,
                "idempotency_key": None,
                "submitted_by": "anonymous",
                "created_at": created,
                "started_at": created + timedelta(seconds=1),
                "finished_at": created + timedelta(seconds=15),
                "rc": 0,
                "reason": None,
                "host_stats": stats,
                "event_count": BENCH.pages_events,
                "worker_id": "bench",
                "heartbeat_at": created + timedelta(seconds=15),
                "cancel_requested": False,
                "launched_at": created + timedelta(seconds=1),
                "requeues": 0,
            }
        )
        for seq in range(1, BENCH.pages_events + 1):
            events.append(to_row(job_id, {**recorded[(seq - 1) % len(recorded)], "counter": seq}, redactor))
    return jobs, events


def _store(stack: Stack, jobs: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    engine = stack.db()
    with engine.begin() as connection:
        connection.execute(sa.insert(_JOB_TABLE), jobs)
        for start in range(0, len(events), 2000):
            connection.execute(sa.insert(_EVENT_TABLE), events[start : start + 2000])
    engine.dispose()


def _etag(client: httpx.Client, path: str) -> tuple[str | None, int | None]:
    """The page's ETag, and what the API answers when it is sent back (None: the API gives no ETag)."""
    etag = client.get(path).headers.get("etag")
    if etag is None:
        return None, None
    return etag, client.get(path, headers={"If-None-Match": etag}).status_code


def _figure(result: dict[str, Any]) -> str:
    return (
        f"{result['req_per_s']:,.0f} req/s, p50 {result['p50_s'] * 1000:.1f} ms,"
        f" p99 {result['p99_s'] * 1000:.1f} ms; API CPU {result['api_cpu_ms_per_request']:.2f} ms/req"
    )


def _met(result: dict[str, Any]) -> bool:
    return bool(
        result["req_per_s"] >= _TARGET_RPS and result["p99_s"] <= _TARGET_P99_S and result["non_2xx"] == 0
    )


def run() -> dict[str, Any]:
    load_before = load()
    with (
        scratch() as tmp,
        service(workers=0) as stack,
        service(workers=0, JOB_VIEW_CACHE_SIZE="0") as uncached,
        stack.client() as client,
        uncached.client() as other,
    ):
        progress("recording a real run's events")
        jobs, events = _rows(_recorded_events(tmp))
        progress(f"storing {len(jobs)} jobs and {len(events):,} events, twice")
        _store(stack, jobs, events)
        _store(uncached, jobs, events)
        pages = {
            "list": "/api/v1/jobs?limit=50",
            "events": f"/api/v1/jobs/{jobs[0]['id']}/events?limit=100",
        }
        # Both APIs answer the same bytes from the same rows, whether kept or read.
        for path in pages.values():
            answers = client.get(path), other.get(path)
            assert [answer.status_code for answer in answers] == [200, 200], [a.text for a in answers]
            assert answers[0].content == answers[1].content, path
        etags = {name: _etag(client, path) for name, path in pages.items()}
        measured: dict[str, list[dict[str, Any]]] = {}
        for rep in range(BENCH.api_reps):
            plan: list[tuple[str, str, Stack, tuple[str, ...]]] = []
            for name, path in pages.items():
                plan.append((f"{name}_kept", path, stack, ()))
                plan.append((f"{name}_read", path, uncached, ()))
                etag = etags[name][0]
                if etag is not None:
                    plan.append((f"{name}_not_modified", path, stack, (f"If-None-Match: {etag}",)))
            random.shuffle(plan)
            for what, path, target, headers in plan:
                progress(f"wrk {what} {path}, {BENCH.api_connections} conns, {rep + 1}/{BENCH.api_reps}")
                result = wrk(f"{target.base_url}{path}", target.processes[0].pid, headers=headers)
                measured.setdefault(what, []).append(result)
        figures = {what: wrk_median(runs) for what, runs in measured.items()}
        sizes = {name: len(client.get(path).content) for name, path in pages.items()}
    rows: list[Row] = []
    for name, path in pages.items():
        kept, read = figures[f"{name}_kept"], figures[f"{name}_read"]
        etag, answer = etags[name]
        rows.append(
            Row(
                f"GET {path.replace(str(jobs[0]['id']), '{id}')} ({sizes[name]:,} bytes), 1 uvicorn process",
                _figure(kept),
                f"the database every time (JOB_VIEW_CACHE_SIZE=0): {_figure(read)}",
                f"≥ {_TARGET_RPS:,} req/s, p99 ≤ {_TARGET_P99_S * 1000:.0f} ms",
                _met(kept),
            )
        )
        not_modified = figures.get(f"{name}_not_modified")
        rows.append(
            Row(
                "  the same with If-None-Match: its ETag (a poller of an unchanged page)",
                _figure(not_modified) + f"; answered {answer}" if not_modified else "no ETag given",
                "—",
                "304",
                answer == 304 if etag is not None else False,
            )
        )
    print_table(f"Pages ({BENCH.pages_jobs} jobs, {BENCH.pages_events:,} events each)", rows)
    return {
        **figures,
        "etags": {name: {"etag": etag, "answer": answer} for name, (etag, answer) in etags.items()},
        "bytes": sizes,
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
