"""The worker: `ars worker`, arq's worker woken by submits instead of polling.

Runs are never retried by arq (`max_tries=1`): an Ansible run must not be repeated behind anyone's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import structlog
from arq import worker as arq_worker
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import func, get_kwargs
from prometheus_client import start_http_server
from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError, OperationalError

from service import live
from service.config import get_settings
from service.db import create_engine, session_factory
from service.environment import check_started_clean, keep_private, scrub_environment
from service.jobs import service as jobs
from service.jobs.repository import JobRepository
from service.logging import JobIdFilter, configure_logging
from service.models import utcnow
from service.queue import RUN_JOB, JobQueue, cancel_channel, create_arq_redis, create_redis, wake_channel
from service.redaction import Redactor
from service.runner.pipeline import WorkerDeps, execute_run
from service.runner.spawn import use_vfork_spawn
from service.sources.git import MirrorCache

log = structlog.get_logger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    # Runs inherit the worker's environment and can read the one it was started with (service.environment).
    check_started_clean(settings)
    if not keep_private():
        log.warning("the worker's memory is readable by its runs: prctl(PR_SET_DUMPABLE) is not available")
    removed = scrub_environment(settings)
    redactor = Redactor([*settings.secret_values(), *removed])
    configure_logging(settings, redactor)
    use_vfork_spawn()
    # arq's CLI gives its logger a handler of its own; ours formats everything once.
    logging.getLogger("arq").handlers.clear()
    logging.getLogger("arq").propagate = True
    logging.getLogger("arq.worker").addFilter(JobIdFilter())
    # No ping per checkout: every write of a run goes through retry_db, and a statement on a connection the
    # server dropped fails before it is carried out, so the retry is safe (SQLAlchemy then renews the pool).
    engine = create_engine(settings, pool_size=settings.worker_max_jobs + 2, pre_ping=False)
    arq_redis: ArqRedis = ctx["redis"]
    deps = WorkerDeps(
        settings=settings,
        sessions=session_factory(engine),
        redis=create_redis(settings),
        worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        limiter=anyio.CapacityLimiter(settings.worker_max_jobs),
        redactor=redactor,
        mirrors=MirrorCache(settings),
    )
    ctx["engine"] = engine
    ctx["deps"] = deps
    ctx["queue"] = JobQueue(arq_redis, settings)
    ctx["heartbeat"] = asyncio.create_task(heartbeat(deps))
    # Set by Worker when it is the one running (`ars worker`); arq's own CLI just polls.
    wake: asyncio.Event = ctx.setdefault("wake", asyncio.Event())
    ctx["listener"] = asyncio.create_task(listen(deps, wake))
    deps.metrics.runs_in_flight.set_function(lambda: len(deps.active))
    deps.metrics.backlog.set_function(lambda: sum(len(channel) for channel in list(deps.channels)))
    if settings.worker_metrics_port:
        # A thread of prometheus-client's own: scrapes are answered even while the loop is busy.
        server, _ = start_http_server(settings.worker_metrics_port, registry=deps.metrics.registry)
        ctx["metrics_server"] = server
    known_hosts = settings.ssh_known_hosts_file
    if settings.ssh_host_key_checking and (known_hosts is None or not known_hosts.is_file()):
        log.warning(
            "no SSH_KNOWN_HOSTS_FILE: SSH targets not in the worker user's ~/.ssh/known_hosts will fail host "
            "key verification",
            ssh_known_hosts_file=str(known_hosts),
        )
    log.info("worker started", worker_id=deps.worker_id, max_jobs=settings.worker_max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    for task in ("heartbeat", "listener"):
        if task in ctx:
            ctx[task].cancel()
    if "metrics_server" in ctx:
        ctx["metrics_server"].shutdown()
    if "deps" in ctx:
        await ctx["deps"].redis.aclose()
    if "engine" in ctx:
        await ctx["engine"].dispose()


async def listen(deps: WorkerDeps, wake: asyncio.Event) -> None:
    """The API's messages: a run was queued (set `wake`), a run is to be cancelled (set its flag if it is
    ours). One connection for both, whatever the number of runs. A message lost while Redis is away costs
    WORKER_POLL_DELAY for a submit, and the database flag's poll for a cancel."""
    submits, cancels = wake_channel(deps.settings.queue_name), cancel_channel(deps.settings.queue_name)
    while True:
        try:
            async with deps.redis.pubsub() as pubsub:
                await pubsub.subscribe(submits, cancels)
                async for message in pubsub.listen():
                    if message["type"] != "message":
                        continue
                    if message["channel"] == submits.encode():
                        wake.set()
                    elif (cancel := deps.cancels.get(message["data"].decode())) is not None:
                        cancel.set()
        except (RedisError, OSError) as exc:
            log.warning("not listening for submits and cancels, polling meanwhile", error=str(exc))
            await asyncio.sleep(1)


async def heartbeat(deps: WorkerDeps) -> None:
    """Tell the reaper, through the database, that this worker's runs are alive.

    It also tracks since when this worker has reached the database without a break (`db_reachable_since`).
    """
    interval = deps.settings.worker_lost_after / 4
    while True:
        try:
            async with deps.sessions() as session:
                await JobRepository(session).heartbeat(sorted(deps.active))
                await session.commit()
        except (OperationalError, DBAPIError, OSError) as exc:
            deps.health.db_reachable_since = None
            log.warning("heartbeat not written", error=str(exc).splitlines()[0])
        else:
            if deps.health.db_reachable_since is None:
                deps.health.db_reachable_since = time.monotonic()
        await asyncio.sleep(interval)


async def run_job(ctx: dict[str, Any], job_id: str) -> None:
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        await execute_run(ctx["deps"], job_id)


async def reap(ctx: dict[str, Any]) -> int:
    """End running jobs whose worker stopped beating (killed, OOM, node lost). They are never re-run."""
    deps: WorkerDeps = ctx["deps"]
    queue: JobQueue = ctx["queue"]
    lost_after = deps.settings.worker_lost_after
    since = deps.health.db_reachable_since
    if since is None or time.monotonic() - since < lost_after:
        # After a database outage every heartbeat is stale: give the live workers one full period to
        # write theirs before reading silence as death.
        return 0
    before = utcnow() - timedelta(seconds=lost_after)
    reaped = 0
    async with deps.sessions() as session:
        repository = JobRepository(session)
        for job in await repository.stale_running(heartbeat_before=before, limit=500):
            if job.id in deps.active:
                continue  # ours, and alive: this process is the one asking
            reason = f"worker lost: {job.worker_id} gave no sign of life for {lost_after} s"
            if not await repository.mark_lost(job.id, heartbeat_before=before, reason=reason):
                continue
            await session.commit()
            reaped += 1
            log.warning("reaped a run whose worker was lost", job_id=job.id, worker=job.worker_id)
            try:
                # arq would keep the dead run's entry (and count it as in flight) until its lock expired.
                await queue.forget(job.id)
                await live.publish_end(
                    deps.redis, job.id, job.event_count, ttl=deps.settings.stream_ttl_after_end
                )
            except (RedisError, OSError) as exc:
                log.warning("arq entry of a reaped run left to expire", job_id=job.id, error=str(exc))
    return reaped


async def retention(ctx: dict[str, Any]) -> int:
    """Daily: delete jobs and events that finished more than RETENTION_DAYS ago (0 keeps everything)."""
    deps: WorkerDeps = ctx["deps"]
    days = deps.settings.retention_days
    if not days:
        return 0

    async def deleted(job_ids: list[str]) -> None:
        await live.changed(deps.redis, *job_ids)

    jobs_deleted, events_deleted = await jobs.purge_expired(
        deps.sessions, finished_before=utcnow() - timedelta(days=days), on_deleted=deleted
    )
    log.info("retention done", jobs=jobs_deleted, events=events_deleted, days=days)
    return jobs_deleted


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue stored runs that never reached Redis (it was down at submit) or whose arq entry expired."""
    deps: WorkerDeps = ctx["deps"]
    async with deps.sessions() as session:
        return await jobs.requeue_stranded(session, ctx["queue"], older_than_s=deps.settings.sweep_interval)


_settings = get_settings()
_every = set(range(0, 60, _settings.sweep_interval))


class WorkerSettings:
    """arq's settings, read at import time, so from the environment then (arq's CLI takes them too)."""

    functions = [
        func(run_job, name=RUN_JOB, max_tries=1, timeout=_settings.max_run_timeout + 600),
    ]
    cron_jobs = [
        cron(sweep, second=_every, run_at_startup=True, unique=True, timeout=60),
        cron(reap, second=_every, run_at_startup=True, unique=True, timeout=60),
        cron(retention, hour={3}, minute={17}, second={0}, unique=True, timeout=6 * 3600),
    ]
    on_startup = startup
    on_shutdown = shutdown
    # A pool of our own rather than `redis_settings`: it survives Redis outages (see PatientConnectionPool).
    redis_pool = create_arq_redis(_settings)
    queue_name = _settings.queue_name
    max_jobs = _settings.worker_max_jobs
    poll_delay = _settings.worker_poll_delay
    job_completion_wait = _settings.job_completion_wait
    keep_result = 0
    max_tries = 1
    retry_jobs = False
    health_check_interval = 10


class Worker(arq_worker.Worker):
    """arq's worker, woken when there is work rather than polling Redis 20 times a second.

    arq looks at the queue every `poll_delay`: a short one is start latency bought with CPU on every idle
    worker (20 ms/s at 50 ms), a long one is latency. Here the worker looks when a submit publishes on the
    queue's wake channel, when one of its own runs ends (a slot is free), and otherwise every
    WORKER_POLL_DELAY. It overrides two private methods of arq 0.28 (pinned in pyproject.toml);
    tests/test_worker_signals.py fails if either stops being called.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.idle_poll_s = float(kwargs.pop("poll_delay"))
        super().__init__(poll_delay=0, **kwargs)
        self.wake = asyncio.Event()
        self.ctx["wake"] = self.wake

    async def _poll_iteration(self) -> None:
        await super()._poll_iteration()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.idle_poll_s):
                await self.wake.wait()
        self.wake.clear()

    def _release_sem_dec_counter_on_complete(self) -> None:
        # arq's done-callback of every run: the freed slot takes the next run now, not at the next poll.
        super()._release_sem_dec_counter_on_complete()
        self.wake.set()


def run_worker() -> None:
    """`ars worker`."""
    Worker(**get_kwargs(dict(vars(WorkerSettings)))).run()
