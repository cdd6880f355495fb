"""The arq queue: enqueue runs with their priority, signal cancellation, report depth."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.utils import timestamp_ms, to_unix_ms
from pydantic import BaseModel, Field
from redis.asyncio import ConnectionPool
from redis.asyncio.connection import Connection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from service.arq_compat import (
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
    serialize_job,
)
from service.config import Settings
from service.faults import Backoff, retry, transient_redis

log = structlog.get_logger(__name__)

RUN_JOB = "run_job"

# arq serves its sorted set lowest score first and starts only scores up to "now". A run is scored by its
# creation time moved back by its priority's offset, so every high run sorts before every default run
# (while none has waited longer than the offset) and runs of one priority keep their order.
_PRIORITY_OFFSET = {"high": timedelta(days=2 * 3650), "default": timedelta(days=3650), "low": timedelta(0)}
# A run whose arq entry expires before a worker takes it is re-enqueued by the sweeper.
JOB_EXPIRES = timedelta(days=7)

# arq's `enqueue_job` in one round trip instead of four (WATCH, EXISTS, MULTI..EXEC, then our PUBLISH): the
# same keys and job record, written only if neither the job nor its result exists, then idle workers woken.
# KEYS: job key, result key, queue; ARGV: expiry ms, serialized job, job id, score, wake channel.
_ENQUEUE_SCRIPT = """
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
redis.call('PUBLISH', ARGV[5], '')
return 1
"""


def create_redis(settings: Settings) -> ArqRedis:
    """A Redis client for arq that connects lazily, so a process starts while Redis is down."""
    pool = ConnectionPool.from_url(
        settings.require_redis_url(),
        socket_connect_timeout=2,
        health_check_interval=30,
        retry_on_timeout=True,
    )
    return ArqRedis(pool, default_queue_name=settings.queue_name)


class PatientConnectionPool(ConnectionPool):
    """Waits for Redis to come back instead of failing, for arq's own loop.

    arq's worker dies on the first Redis error of its poll loop, killing the runs in flight; with this pool
    (and the retry policy of `create_arq_redis`) a Redis outage only pauses it.
    """

    async def get_connection(self, command_name: Any = None, *keys: Any, **options: Any) -> Connection:
        async def connect() -> Connection:
            return await super(PatientConnectionPool, self).get_connection(command_name, *keys, **options)  # type: ignore[no-any-return]

        return await retry(
            connect, transient=transient_redis, what="redis connection for arq", backoff=Backoff(0.05, 2)
        )


def create_arq_redis(settings: Settings) -> ArqRedis:
    """arq's pool for the worker: every command waits for Redis rather than failing."""
    pool = PatientConnectionPool.from_url(
        settings.require_redis_url(),
        socket_connect_timeout=2,
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=-1),
    )
    return ArqRedis(pool, default_queue_name=settings.queue_name)


class QueueDepth(BaseModel):
    """What an autoscaler needs: KEDA reads `inflight` and wants one worker per `WORKER_MAX_JOBS` of it."""

    queued: int = Field(description="runs waiting for a worker slot")
    running: int = Field(description="runs a worker has taken")
    inflight: int = Field(description="queued + running")
    blocked: int = Field(
        description="runs waiting for a host or named lock: not in `inflight`, more workers would not help"
    )


def score_of(priority: str, created_at: datetime) -> int:
    """A run's place in arq's sorted set, and among the waiters for a lock."""
    return to_unix_ms(created_at.replace(tzinfo=UTC) - _PRIORITY_OFFSET[priority])


def locks_key(queue_name: str, part: str) -> str:
    """A key of the lock table of this queue (service/jobs/locks.py)."""
    return f"{queue_name}:locks:{part}"


def wake_channel(queue_name: str) -> str:
    """Where a submit tells idle workers to look at the queue now (see service.arq_compat.WokenWorker)."""
    return f"{queue_name}:wake"


def cancel_channel(queue_name: str) -> str:
    """Where the API names a run to cancel; the worker running it stops it (service.worker.listen)."""
    return f"{queue_name}:cancel"


class JobQueue:
    def __init__(self, redis: ArqRedis, settings: Settings) -> None:
        self.redis = redis
        self.queue_name = settings.queue_name
        self._enqueue = redis.register_script(_ENQUEUE_SCRIPT)

    async def enqueue(self, job_id: str, priority: str, created_at: datetime) -> bool:
        """Queue a run. False when arq already holds it (queued or running): enqueueing is idempotent."""
        keys = [job_key_prefix + job_id, result_key_prefix + job_id, self.queue_name]
        expires_ms = int(JOB_EXPIRES.total_seconds() * 1000)
        score = score_of(priority, created_at)
        args: list[bytes | str | int] = [
            expires_ms,
            self.record(job_id),
            job_id,
            score,
            wake_channel(self.queue_name),
        ]
        return bool(await self._enqueue(keys=keys, args=args))

    def record(self, job_id: str) -> bytes:
        """What arq stores for a run of `job_id` (under any arq id: the function's argument is the job)."""
        return serialize_job(
            RUN_JOB, (job_id,), {}, None, timestamp_ms(), serializer=self.redis.job_serializer
        )

    async def forget(self, job_id: str) -> None:
        """Drop arq's entries of a run that can never start or finish (its worker died): under the job's id,
        and under `<id>~<n>`, the ids of the attempts a lock grant queued (service/jobs/locks.py)."""
        arq_ids = {job_id}
        async for member, _ in self.redis.zscan_iter(self.queue_name, match=f"{job_id}~*"):
            arq_ids.add(member.decode())
        async with self.redis.pipeline(transaction=True) as pipe:
            for arq_id in arq_ids:
                pipe.zrem(self.queue_name, arq_id)
                pipe.delete(
                    *(
                        prefix + arq_id
                        for prefix in (in_progress_key_prefix, job_key_prefix, retry_key_prefix)
                    )
                )
            await pipe.execute()

    async def signal_cancel(self, job_id: str) -> None:
        """Tell the worker running `job_id` at once; the database flag stays the source of truth."""
        await self.redis.publish(cancel_channel(self.queue_name), job_id)

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
        blocked = await self.redis.zcard(locks_key(self.queue_name, "waiters"))
        return QueueDepth(queued=len(runs) - running, running=running, inflight=len(runs), blocked=blocked)
