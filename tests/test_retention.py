"""Retention deletes finished jobs and their events past the limit, in bounded batches, and nothing else."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import redis as redis_client
import sqlalchemy as sa

from service.capabilities import build_lifecycle
from service.config import Settings
from service.db import create_engine, migrate, session_factory
from service.jobs.lifecycle import Transition
from service.jobs.service import purge_expired
from service.live.publish import version_key
from service.models import utcnow
from service.queue import JobQueue, create_redis
from service.schedules.repository import ScheduleRepository
from tests.support import Backends, fresh_database, sync_url


def _insert_job(
    connection: sa.Connection, job_id: str, status: str, finished_days_ago: float | None, events: int
) -> None:
    now = utcnow()
    finished = None if finished_days_ago is None else now - timedelta(days=finished_days_ago)
    connection.execute(
        sa.text(
            "INSERT INTO job (id, status, playbook, source, extra_vars, tags, skip_tags, `check`, diff,"
            " verbosity, priority, labels, created_at, finished_at, event_count, cancel_requested)"
            " VALUES (:id, :status, 'p.yml', '{}', '{}', '[]', '[]', 0, 0, 0, 'default', '{}', :created,"
            " :finished, :events, 0)"
        ),
        {
            "id": job_id,
            "status": status,
            "created": now - timedelta(days=60),
            "finished": finished,
            "events": events,
        },
    )
    if events:
        connection.execute(
            sa.text(
                "INSERT INTO job_event (job_id, seq, event, stdout, created, data) VALUES"
                " (:job_id, :seq, 'runner_on_ok', '', :created, '{}')"
            ),
            [{"job_id": job_id, "seq": seq, "created": now} for seq in range(1, events + 1)],
        )


def _insert_deliveries(connection: sa.Connection, job_ids: list[str]) -> None:
    now = utcnow()
    connection.execute(
        sa.text(
            "INSERT INTO webhook (id, url, events, labels, secret, created_at)"
            " VALUES ('hook', 'https://example.com/', '[\"job.finished\"]', '{}', 'whsec_x', :now)"
        ),
        {"now": now},
    )
    connection.execute(
        sa.text(
            "INSERT INTO webhook_delivery (message_id, webhook_id, job_id, event, payload, status, attempts,"
            " next_attempt_at, created_at) VALUES (:message_id, 'hook', :job_id, 'job.finished', '{}',"
            " 'delivered', '[]', :now, :now)"
        ),
        [{"message_id": f"msg_{job_id}", "job_id": job_id, "now": now} for job_id in job_ids],
    )


def test_retention_deletes_only_old_finished_jobs(backends: Backends, tmp_path: Path) -> None:
    database_url, drop = fresh_database(backends.database_server_url, tmp_path)
    try:
        migrate(Settings(database_url=database_url))
        engine = sa.create_engine(sync_url(database_url))
        with engine.begin() as connection:
            _insert_job(connection, "old-success", "successful", 40, 1234)
            _insert_job(connection, "old-failed", "failed", 31, 3)
            # One more event than its event_count says (a crash between two writes).
            _insert_job(connection, "old-extra", "error", 35, 0)
            connection.execute(
                sa.text(
                    "INSERT INTO job_event (job_id, seq, event, stdout, created, data)"
                    " VALUES ('old-extra', 1, 'verbose', '', :now, '{}')"
                ),
                {"now": utcnow()},
            )
            _insert_job(connection, "recent", "successful", 2, 5)
            _insert_job(connection, "old-running", "running", None, 7)
            _insert_job(connection, "old-queued", "queued", None, 0)
            _insert_deliveries(connection, ["old-success", "old-failed", "recent"])

        announced: list[str] = []

        async def seen(transition: Transition) -> None:
            announced.append(transition.job_id)

        async def purge() -> tuple[int, int]:
            settings = Settings(database_url=database_url, redis_url=backends.redis_url)
            async_engine = create_engine(settings)
            redis = create_redis(settings)
            lifecycle = build_lifecycle(
                session_factory(async_engine), redis, JobQueue(redis, settings), settings
            )
            lifecycle.after_commit(seen)
            try:
                return await purge_expired(
                    lifecycle,
                    finished_before=utcnow() - timedelta(days=30),
                    jobs_per_batch=2,
                    events_per_batch=100,
                )
            finally:
                await redis.aclose()
                await async_engine.dispose()

        assert asyncio.run(purge()) == (3, 1234 + 3 + 1)
        with engine.connect() as connection:
            jobs = set(connection.execute(sa.text("SELECT id FROM job")).scalars())
            events: dict[str, int] = dict(
                connection.execute(sa.text("SELECT job_id, COUNT(*) FROM job_event GROUP BY job_id")).all()
            )
            delivered = set(connection.execute(sa.text("SELECT job_id FROM webhook_delivery")).scalars())
        engine.dispose()
        assert jobs == {"recent", "old-running", "old-queued"}
        # Webhook deliveries go with their jobs (the lifecycle's hook of service/webhooks/outbox.py).
        assert delivered == {"recent"}
        assert events == {"recent": 5, "old-running": 7}
        # Each deletion went through the lifecycle, which replaced the job's version token: the API drops
        # what it kept of it.
        assert sorted(announced) == ["old-extra", "old-failed", "old-success"]
        with redis_client.Redis.from_url(backends.redis_url) as server:
            assert all(server.exists(version_key(job_id)) for job_id in announced)
        assert asyncio.run(purge()) == (0, 0)
    finally:
        drop()


def test_retention_forgets_old_fire_times_of_schedules(backends: Backends, tmp_path: Path) -> None:
    database_url, drop = fresh_database(backends.database_server_url, tmp_path)
    try:
        migrate(Settings(database_url=database_url))
        engine = sa.create_engine(sync_url(database_url))
        now = utcnow()
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO schedule_fire (schedule_id, fire_at, outcome, count, recorded_at, fired_by)"
                    " VALUES ('s', :at, 'queued', 1, :at, 'api:1')"
                ),
                [{"at": now - timedelta(days=days)} for days in (40, 31, 29, 0)],
            )

        async def forget() -> int:
            async_engine = create_engine(Settings(database_url=database_url))
            try:
                async with session_factory(async_engine)() as session:
                    forgotten = await ScheduleRepository(session).forget_fires(now - timedelta(days=30))
                    await session.commit()
                    return forgotten
            finally:
                await async_engine.dispose()

        assert asyncio.run(forget()) == 2
        with engine.connect() as connection:
            left = connection.execute(sa.text("SELECT fire_at FROM schedule_fire ORDER BY fire_at")).scalars()
            assert [round((now - at).total_seconds() / 86_400) for at in left] == [29, 0]
        engine.dispose()
    finally:
        drop()
