"""The event pipeline alone: recorded Ansible events through EventChannel → EventRecorder → MariaDB → Redis.

Events are recorded once from a real run (50 hosts x 10 tasks), then replayed with fresh counters from a
thread, as ansible-runner's thread would hand them over, as fast as the thread can: the figure is the rate
at which one worker process stores and publishes them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import anyio
import sqlalchemy as sa

from bench.harness import (
    BENCH,
    Row,
    load,
    print_table,
    progress,
    runner_run,
    running_job,
    scratch,
    shared_server,
    write_playbooks,
)
from harness.databases import fresh_database, sync_url
from service.capabilities import build_lifecycle
from service.config import Settings
from service.db import create_engine, migrate, session_factory
from service.jobs.repository import JobRepository
from service.live.publish import stream_key
from service.queue import JobQueue, create_redis
from service.redaction import Redactor
from service.runner.events import EventChannel
from service.runner.pipeline import EventRecorder, WorkerDeps
from service.sources.git import MirrorCache


def _replay(recorded: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """`count` events cycling through the recorded ones, numbered 1..count."""
    return [{**recorded[index % len(recorded)], "counter": index + 1} for index in range(count)]


async def _feed(settings: Settings, events: list[dict[str, Any]]) -> dict[str, float]:
    engine = create_engine(settings, pool_size=4)
    redis = create_redis(settings)
    sessions = session_factory(engine)
    deps = WorkerDeps(
        settings=settings,
        sessions=sessions,
        lifecycle=build_lifecycle(sessions, redis, JobQueue(redis, settings), settings),
        redis=redis,
        worker_id="bench",
        limiter=anyio.CapacityLimiter(1),
        redactor=Redactor(settings.secret_values()),
        mirrors=MirrorCache(settings),
    )
    job_id = f"bench-{time.monotonic_ns()}"[:36]
    async with deps.sessions() as session:
        await JobRepository(session).add(running_job(job_id, "heavy.yml"))
        await session.commit()
    channel = EventChannel(asyncio.get_running_loop(), capacity=len(events) + 1)
    recorder = EventRecorder(deps, job_id)

    def produce() -> None:
        for event in events:
            channel.put(event)
        channel.close()

    started = time.perf_counter()
    producer = threading.Thread(target=produce)
    producer.start()
    await recorder.consume(channel)
    elapsed = time.perf_counter() - started
    producer.join()
    last_entry = await redis.xrevrange(stream_key(job_id), count=1)
    await redis.delete(stream_key(job_id))
    await redis.aclose()
    await engine.dispose()
    batch_count = next(
        sample.value
        for metric in deps.metrics.batch_latency.collect()
        for sample in metric.samples
        if sample.name.endswith("_count")
    )
    return {
        "seconds": elapsed,
        "stored_seq": recorder.stored_seq,
        "last_stream_seq": int(last_entry[0][0].split(b"-")[0]) if last_entry else 0,
        "batches": batch_count,
    }


def run() -> dict[str, Any]:
    load_before = load()
    with scratch() as tmp:
        playbooks = write_playbooks(tmp / "playbooks")
        progress("recording the events of a 50 hosts x 10 tasks run")
        _, recorded = runner_run(playbooks, "heavy.yml", "inventory/hosts50.yml", tmp)
        recorded = [event for event in recorded if "counter" in event]
        events = _replay(recorded, BENCH.pipeline_events)
        database_url, drop = shared_server(lambda: fresh_database(BENCH.database_url, tmp))
        try:
            settings = Settings(database_url=database_url, redis_url=BENCH.redis_url)
            migrate(settings)
            progress(f"feeding {len(events)} events through the pipeline")
            result = asyncio.run(_feed(settings, events))
            engine = sa.create_engine(sync_url(database_url))
            with engine.connect() as connection:
                stored = int(connection.execute(sa.text("SELECT COUNT(*) FROM job_event")).scalar_one())
            engine.dispose()
        finally:
            drop()
    rate = len(events) / result["seconds"]
    complete = stored == len(events) == result["stored_seq"] == result["last_stream_seq"]
    rows = [
        Row(
            "event pipeline alone (batching → MariaDB → Redis stream)",
            f"{rate:,.0f} events/s ({len(events)} events in {result['seconds']:.2f} s,"
            f" {result['batches']:.0f} batches)",
            "AWX callback receiver ~1,100/s on 4 vCPU",
            "≥ 5,000 events/s",
            rate >= 5000,
        ),
        Row(
            "pipeline: every event stored and streamed",
            f"{stored} rows, stream up to seq {result['last_stream_seq']}",
            f"{len(events)} fed",
            "all",
            complete,
        ),
    ]
    print_table("event pipeline", rows)
    return {
        "events": len(events),
        "recorded_events": len(recorded),
        "events_per_s": rate,
        **result,
        "rows": [row.as_dict() for row in rows],
        "load_before": load_before,
        "load_after": load(),
    }
