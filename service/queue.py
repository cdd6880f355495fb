"""The arq queue: enqueue runs with their priority, signal cancellation, report depth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from pydantic import BaseModel, Field
from redis.asyncio import ConnectionPool

from service.config import Settings

RUN_JOB = "run_job"

# arq serves its sorted set lowest score first and starts only scores up to "now". A run is scored by its
# creation time moved back by its priority's offset, so every high run sorts before every default run
# (while none has waited longer than the offset) and runs of one priority keep their order.
_PRIORITY_OFFSET = {"high": timedelta(days=2 * 3650), "default": timedelta(days=3650), "low": timedelta(0)}
# A run whose arq entry expires before a worker takes it is re-enqueued by the sweeper.
_EXPIRES = timedelta(days=7)


def create_redis(settings: Settings) -> ArqRedis:
    """A Redis client for arq that connects lazily, so a process starts while Redis is down."""
    pool = ConnectionPool.from_url(
        settings.require_redis_url(),
        socket_connect_timeout=2,
        health_check_interval=30,
        retry_on_timeout=True,
    )
    return ArqRedis(pool, default_queue_name=settings.queue_name)


class QueueDepth(BaseModel):
    """What an autoscaler needs: KEDA reads `inflight` and wants one worker per `WORKER_MAX_JOBS` of it."""

    queued: int = Field(description="runs waiting for a worker slot")
    running: int = Field(description="runs a worker has taken")
    inflight: int = Field(description="queued + running")


def cancel_key(job_id: str) -> str:
    return f"ars:job:{job_id}:cancel"


class JobQueue:
    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.queue_name = settings.queue_name

    async def enqueue(self, job_id: str, priority: str, created_at: datetime) -> bool:
        """Queue a run. False when arq already holds it (queued or running): enqueueing is idempotent."""
        score_at = created_at.replace(tzinfo=UTC) - _PRIORITY_OFFSET[priority]
        job = await self.redis.enqueue_job(
            RUN_JOB,
            job_id,
            _job_id=job_id,
            _queue_name=self.queue_name,
            _defer_until=score_at,
            _expires=_EXPIRES,
        )
        return job is not None

    async def signal_cancel(self, job_id: str) -> None:
        """Wake the worker running `job_id`; the database flag stays the source of truth."""
        key = cancel_key(job_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, "1")
            pipe.expire(key, 3600)
            await pipe.execute()

    async def depth(self) -> QueueDepth:
        """Runs in flight on this queue: every run stays in arq's sorted set until it ends, and a running one
        also holds an in-progress key. Cron entries share the set but are not runs: counting them would wake
        a pool scaled to zero only to run the sweeper."""
        members = await self.redis.zrange(self.queue_name, 0, -1)
        runs = [member.decode() for member in members if not member.startswith(b"cron:")]
        running = 0
        if runs:
            async with self.redis.pipeline(transaction=False) as pipe:
                for run in runs:
                    pipe.exists(in_progress_key_prefix + run)
                running = sum(await pipe.execute())
        return QueueDepth(queued=len(runs) - running, running=running, inflight=len(runs))
