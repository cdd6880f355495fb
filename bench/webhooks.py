"""Webhooks (issue 17): how fast the API's sender drains the outbox to a local receiver, how soon a run's
end reaches it, and what the outbox adds to a run.

The receiver is this module's `app`, a bare ASGI app under uvicorn in a process of its own (answers 204 and
appends each arrival's time and `webhook-id` to RECEIVER_LOG), so that the receiver never competes with the
sender for one interpreter.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.harness import (
    BENCH,
    Row,
    load,
    percentile,
    print_table,
    progress,
    scratch,
    service,
    wait_finished,
    wait_workers_ready,
)
from harness.databases import fresh_database
from harness.processes import Stack, start_process, wait_http
from service.config import Settings
from service.db import create_engine, migrate, session_factory
from service.embedded import free_port
from service.jobs.lifecycle import Change, Transition
from service.jobs.repository import JobRepository
from service.jobs.schemas import JobOut
from service.models import JobStatus, Webhook, utcnow
from service.queue import create_redis
from service.webhooks.outbox import Outbox
from service.webhooks.outbox import payload as outbox_payload
from service.webhooks.service import new_secret
from tests.support.jobs import job_row

SUBSCRIPTIONS = 8


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any) -> None:
    """The receiver: reads the body, answers 204, notes the arrival."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    arrived = time.time()
    headers = dict(scope["headers"])
    with Path(os.environ["RECEIVER_LOG"]).open("a") as log:
        log.write(f"{arrived} {headers.get(b'webhook-id', b'-').decode()} {scope['path']}\n")
    status = 204 if scope["method"] == "POST" else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def _receiver(tmp: Path) -> tuple[str, Path, Any]:
    port = free_port()
    log = tmp / "arrivals"
    log.touch()
    process = start_process(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "bench.webhooks:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        {**os.environ, "RECEIVER_LOG": str(log)},
        tmp / "receiver.log",
    )
    wait_http(f"http://127.0.0.1:{port}/health", process, tmp / "receiver.log")
    return f"http://127.0.0.1:{port}", log, process


def _arrivals(log: Path) -> list[tuple[float, str, str]]:
    rows = []
    for line in log.read_text().splitlines():
        at, message_id, path = line.split()
        if message_id != "-":
            rows.append((float(at), message_id, path))
    return rows


def _subscribe(stack: Stack, url: str, count: int) -> list[str]:
    with stack.client() as client:
        ids = []
        for index in range(count):
            body = {"url": f"{url}/s{index}", "events": ["job.started", "job.finished"]}
            response = client.post("/api/v1/webhooks", json=body)
            response.raise_for_status()
            ids.append(response.json()["id"])
    return ids


def _seed(stack: Stack, webhook_ids: list[str], count: int, payload: str) -> None:
    """`count` pending deliveries, spread over the subscriptions, written as the outbox writes them."""
    engine = stack.db()
    now = utcnow()
    rows = [
        {
            "message_id": f"msg_{uuid.uuid4().hex}",
            "webhook_id": webhook_ids[index % len(webhook_ids)],
            "job_id": str(uuid.uuid4()),
            "event": "job.finished",
            "payload": payload,
            "status": "pending",
            "attempts": "[]",
            "next_attempt_at": now,
            "created_at": now,
        }
        for index in range(count)
    ]
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO webhook_delivery (message_id, webhook_id, job_id, event, payload, status,"
                " attempts, next_attempt_at, created_at) VALUES (:message_id, :webhook_id, :job_id, :event,"
                " :payload, :status, :attempts, :next_attempt_at, :created_at)"
            ),
            rows,
        )
    engine.dispose()


def _delivered(stack: Stack) -> int:
    engine = stack.db()
    with engine.connect() as connection:
        count = connection.execute(
            sa.text("SELECT COUNT(*) FROM webhook_delivery WHERE status = 'delivered'")
        ).scalar_one()
    engine.dispose()
    return int(count)


def _drain(subscriptions: int, count: int, payload: str) -> dict[str, Any]:
    """Seed `count` deliveries to `subscriptions` subscriptions with the sender stopped (no API), start the
    API, time until the receiver has them all."""
    with scratch() as tmp, service(workers=0, WEBHOOK_ALLOW_PRIVATE="true") as stack:
        url, log, receiver = _receiver(tmp)
        try:
            ids = _subscribe(stack, url, subscriptions)
            _seed(stack, ids, count, payload)
            began = time.time()
            # The seeded rows are due already; the API's next look at the outbox (its poll) takes them, the
            # wake-up of a real run's commit is what the latency figure below measures.
            deadline = time.monotonic() + 300
            while len(_arrivals(log)) < count:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {len(_arrivals(log))} of {count} delivered")
                time.sleep(0.05)
            arrivals = sorted(at for at, _, _ in _arrivals(log))
            first, last = arrivals[0], arrivals[-1]
            deadline = time.monotonic() + 60
            while _delivered(stack) < count and time.monotonic() < deadline:
                time.sleep(0.05)
            return {
                "deliveries": count,
                "subscriptions": subscriptions,
                "per_s": count / (last - first) if last > first else float("inf"),
                "seconds": last - first,
                "until_first_s": first - began,
                "recorded": _delivered(stack),
            }
        finally:
            receiver.terminate()
            receiver.wait()


def _runs(runs: int, subscribed: bool) -> dict[str, Any]:
    """`runs` trivial runs through 1 worker (4 at once), with or without a subscription to both events."""
    with scratch() as tmp, service(workers=1, WEBHOOK_ALLOW_PRIVATE="true", WORKER_MAX_JOBS="4") as stack:
        url, log, receiver = _receiver(tmp)
        try:
            if subscribed:
                _subscribe(stack, url, 1)
            wait_workers_ready(stack)
            began = time.perf_counter()
            with stack.client() as client:
                ids = []
                for _ in range(runs):
                    response = client.post(
                        "/api/v1/jobs", json={"playbook": "trivial.yml", "inventory": "inventory/hosts5.yml"}
                    )
                    response.raise_for_status()
                    ids.append(response.json()["id"])
            wait_finished(stack, runs, deadline_s=runs * 10)
            seconds = time.perf_counter() - began
            latencies: list[float] = []
            if subscribed:
                deadline = time.monotonic() + 60
                while len(_arrivals(log)) < 2 * runs and time.monotonic() < deadline:
                    time.sleep(0.05)
                arrived = {message_id: at for at, message_id, _ in _arrivals(log)}
                engine = stack.db()
                with engine.connect() as connection:
                    rows = connection.execute(
                        sa.text(
                            "SELECT d.message_id, j.finished_at FROM webhook_delivery d JOIN job j"
                            " ON j.id = d.job_id WHERE d.event = 'job.finished'"
                        )
                    ).all()
                engine.dispose()
                latencies = [
                    arrived[message_id] - finished_at.replace(tzinfo=UTC).timestamp()
                    for message_id, finished_at in rows
                    if message_id in arrived
                ]
            return {
                "runs": runs,
                "seconds": seconds,
                "per_run_s": seconds / runs,
                "finish_to_arrival_s": latencies,
            }
        finally:
            receiver.terminate()
            receiver.wait()


def _transaction_ms(rounds: int, subscriptions: int, *, hook: bool) -> float:
    """Milliseconds of a transaction like a run's end (read the job, commit) on real MariaDB, with or
    without the outbox hook in it: reading the subscriptions and, when some match, the job as the API
    shows it and one INSERT for all of them."""

    async def main(database_url: str) -> float:
        settings = Settings(database_url=database_url, redis_url=BENCH.redis_url)
        engine = create_engine(settings)
        sessions = session_factory(engine)
        redis = create_redis(settings)
        # The hook alone, in its transaction; the word to the senders after the commit is not called.
        outbox = Outbox(redis, settings.queue_name)

        async with sessions() as session:
            for index in range(subscriptions):
                session.add(
                    Webhook(
                        id=str(uuid.uuid4()),
                        url=f"https://hooks.example.com/{index}",
                        events=["job.finished"],
                        labels={},
                        secret=new_secret(),
                        created_at=utcnow(),
                    )
                )
            job = job_row(JobStatus.successful)
            session.add(job)
            await session.commit()
        transition = Transition(Change.finished, job.id, JobStatus.successful)
        spent = 0.0
        for _ in range(rounds):
            async with sessions() as session:
                await JobRepository(session).get(job.id)  # the transaction's own work, not timed
                began = time.perf_counter()
                if hook:
                    await outbox.on_change(session, transition)
                await session.commit()
                spent += time.perf_counter() - began
        await redis.aclose()
        await engine.dispose()
        return spent / rounds * 1000

    with scratch() as tmp:
        database_url, drop = fresh_database(BENCH.database_url, tmp)
        try:
            migrate(Settings(database_url=database_url))
            return asyncio.run(main(database_url))
        finally:
            drop()


def run() -> dict[str, Any]:
    load_before = load()
    count = BENCH.webhook_deliveries
    job = JobOut.of(job_row(JobStatus.successful))
    payload = outbox_payload("job.finished", job, utcnow())
    progress(f"webhooks: {count} deliveries to 1 subscription, then to {SUBSCRIPTIONS}")
    one = _drain(1, count, payload)
    many = _drain(SUBSCRIPTIONS, count, payload)
    runs = BENCH.webhook_runs
    progress(f"webhooks: {runs} runs without a subscription, then with one")
    plain = _runs(runs, subscribed=False)
    hooked = _runs(runs, subscribed=True)
    progress("webhooks: the outbox hook inside a transaction")
    bare = _transaction_ms(300, 0, hook=False)
    hook_none = _transaction_ms(300, 0, hook=True) - bare
    hook_one = _transaction_ms(300, 1, hook=True) - bare
    hook_ten = _transaction_ms(300, 10, hook=True) - bare
    latencies = hooked["finish_to_arrival_s"]
    rows = [
        Row(
            "deliveries/s, 1 subscription (8 in flight)",
            f"{one['per_s']:.0f}/s ({count} in {one['seconds']:.2f} s)",
            "—",
            "report",
            None,
        ),
        Row(
            f"deliveries/s, {SUBSCRIPTIONS} subscriptions (32 in flight)",
            f"{many['per_s']:.0f}/s ({count} in {many['seconds']:.2f} s)",
            "—",
            "report",
            None,
        ),
        Row(
            "run's end → receiver",
            f"median {percentile(latencies, 50) * 1000:.0f} ms,"
            f" p95 {percentile(latencies, 95) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms"
            f" ({len(latencies)})",
            "—",
            "report",
            None,
        ),
        Row(
            f"{runs} trivial runs, 1 worker x 4, subscribed to both events",
            f"{hooked['per_run_s'] * 1000:.0f} ms per run ({hooked['seconds']:.1f} s)",
            f"no subscription: {plain['per_run_s'] * 1000:.0f} ms per run ({plain['seconds']:.1f} s)",
            "report",
            None,
        ),
        Row(
            "outbox hook, added to a run's start or end (MariaDB)",
            f"no subscription +{hook_none:.2f} ms, 1 +{hook_one:.2f} ms, 10 +{hook_ten:.2f} ms",
            f"the transaction without it: {bare:.2f} ms",
            "report",
            None,
        ),
    ]
    print_table("webhooks", rows)
    return {
        "one_subscription": one,
        "subscriptions": many,
        "runs_plain": plain,
        "runs_subscribed": {key: value for key, value in hooked.items() if key != "finish_to_arrival_s"},
        "finish_to_arrival_s": {
            "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95),
            "max": max(latencies),
        },
        "hook_added_ms": {"none": hook_none, "one": hook_one, "ten": hook_ten, "bare_transaction": bare},
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
