"""The worker: `ars worker`, arq's worker woken by submits instead of polling (service.arq_compat).

Runs are never retried by arq (`max_tries=1`): an Ansible run must not be repeated behind anyone's back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import structlog
from arq.connections import ArqRedis
from arq.cron import cron
from arq.worker import func, get_kwargs
from prometheus_client import start_http_server

from service.arq_compat import WokenWorker
from service.capabilities import build_lifecycle
from service.config import Settings, get_settings
from service.db import create_engine, session_factory
from service.faults import REDIS_UNAVAILABLE, Backoff, transient_db
from service.jobs import service as jobs
from service.jobs.repository import JobRepository
from service.logging import JobIdFilter, configure_logging
from service.metrics import WorkerMetrics
from service.models import utcnow
from service.queue import RUN_JOB, JobQueue, cancel_channel, create_arq_redis, create_redis, wake_channel
from service.redaction import Redactor
from service.runner.environment import check_started_clean, keep_private, scrub_environment
from service.runner.execute import RUN_MARKER, ansible_environment
from service.runner.pipeline import WorkerDeps, execute_run
from service.runner.spawn import use_vfork_spawn
from service.runner.warm import ForkServer
from service.schedules.repository import ScheduleRepository
from service.sources.git import MirrorCache

log = structlog.get_logger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    # Runs inherit the worker's environment and can read the one it was started with (runner/environment.py).
    check_started_clean(settings)
    if not keep_private():
        log.warning("the worker's memory is readable by its runs: prctl(PR_SET_DUMPABLE) is not available")
    removed = scrub_environment(settings)
    redactor = Redactor([*settings.secret_values(), *removed])
    configure_logging(settings, redactor)
    # What the worker writes (a run's variables, ansible-runner's record of its events) is its own, 0600;
    # ansible-playbook keeps the umask the worker was given, for what a playbook writes on this machine.
    use_vfork_spawn(child_umask=os.umask(0o077))
    fork_server = None
    if settings.run_fork_server:
        # Started once the environment is scrubbed: it holds what runs may see, nothing else.
        run_environment = ansible_environment(settings, "")
        del run_environment[RUN_MARKER]
        try:
            fork_server = ForkServer(run_environment)
        except OSError as exc:
            log.warning("fork server off: each run starts a fresh ansible-playbook", error=str(exc))
        else:
            fork_server.start()
    # arq's CLI gives its logger a handler of its own; ours formats everything once.
    logging.getLogger("arq").handlers.clear()
    logging.getLogger("arq").propagate = True
    logging.getLogger("arq.worker").addFilter(JobIdFilter())
    # No ping per checkout: every write of a run goes through retry_db, and a statement on a connection the
    # server dropped fails before it is carried out, so the retry is safe (SQLAlchemy then renews the pool).
    engine = create_engine(settings, pool_size=settings.worker_max_jobs + 2, pre_ping=False)
    arq_redis: ArqRedis = ctx["redis"]
    sessions = session_factory(engine)
    redis = create_redis(settings)
    queue = JobQueue(arq_redis, settings)
    metrics = WorkerMetrics()
    lifecycle = build_lifecycle(sessions, redis, queue, settings)
    lifecycle.after_commit(metrics.observe_transition)
    deps = WorkerDeps(
        settings=settings,
        sessions=sessions,
        lifecycle=lifecycle,
        redis=redis,
        metrics=metrics,
        worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        limiter=anyio.CapacityLimiter(settings.worker_max_jobs),
        redactor=redactor,
        mirrors=MirrorCache(settings),
        fork_server=fork_server,
    )
    ctx["engine"] = engine
    ctx["deps"] = deps
    ctx["queue"] = queue
    ctx["heartbeat"] = asyncio.create_task(heartbeat(deps))
    # Set by Worker when it is the one running (`ars worker`); arq's own CLI just polls.
    wake: asyncio.Event = ctx.setdefault("wake", asyncio.Event())
    ctx["listener"] = asyncio.create_task(listen(deps, wake))
    deps.metrics.runs_in_flight.set_function(lambda: len(deps.active))
    deps.metrics.fork_server_rss.set_function(lambda: fork_server.rss_bytes() if fork_server else 0)
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
    if "deps" in ctx and ctx["deps"].fork_server is not None:
        ctx["deps"].fork_server.stop()


async def listen(deps: WorkerDeps, wake: asyncio.Event) -> None:
    """The API's messages: a run was queued (set `wake`), a run is to be cancelled (set its flag if it is
    ours). One connection for both, whatever the number of runs. A message lost while Redis is away costs
    WORKER_POLL_DELAY for a submit, and the database flag's poll for a cancel."""
    submits, cancels = wake_channel(deps.settings.queue_name), cancel_channel(deps.settings.queue_name)
    backoff = Backoff(first=1, cap=5)
    while True:
        try:
            async with deps.redis.pubsub() as pubsub:
                await pubsub.subscribe(submits, cancels)
                async for message in pubsub.listen():
                    backoff.reset()
                    if message["type"] != "message":
                        continue
                    if message["channel"] == submits.encode():
                        wake.set()
                    elif (cancel := deps.cancels.get(message["data"].decode())) is not None:
                        cancel.set()
        except REDIS_UNAVAILABLE as exc:
            log.warning("not listening for submits and cancels, polling meanwhile", error=str(exc))
            await backoff.sleep()


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
        except Exception as exc:
            deps.health.db_reachable_since = None
            if not transient_db(exc):
                # Not a pause of the database but a bug or a broken schema: said loudly, and beating goes on.
                log.exception("heartbeat not written")
            else:
                log.warning("heartbeat not written", error=str(exc).splitlines()[0])
        else:
            if deps.health.db_reachable_since is None:
                deps.health.db_reachable_since = time.monotonic()
        await asyncio.sleep(interval)


async def run_job(ctx: dict[str, Any], job_id: str) -> None:
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        await execute_run(ctx["deps"], job_id)


async def reap(ctx: dict[str, Any]) -> int:
    """Deal with running jobs whose worker stopped beating (killed, OOM, node lost): queued again if it was
    lost before it launched ansible-playbook (once), else ended `error`, never run again."""
    deps: WorkerDeps = ctx["deps"]
    lost_after = deps.settings.worker_lost_after
    since = deps.health.db_reachable_since
    if since is None or time.monotonic() - since < lost_after:
        # After a database outage every heartbeat is stale: give the live workers one full period to
        # write theirs before reading silence as death.
        return 0
    before = utcnow() - timedelta(seconds=lost_after)
    async with deps.sessions() as session:
        stale = await JobRepository(session).stale_running(heartbeat_before=before, limit=500)
    reaped = 0
    for job in stale:
        if job.id in deps.active:
            continue  # ours, and alive: this process is the one asking
        async with deps.lifecycle.transaction() as transaction:
            change = await transaction.reap(job, heartbeat_before=before, lost_after=lost_after)
        if change is not None:
            reaped += 1
            log.warning(
                "reaped a run whose worker was lost", job_id=job.id, worker=job.worker_id, change=change
            )
    return reaped


async def retention(ctx: dict[str, Any]) -> int:
    """Daily: delete jobs and events that finished more than RETENTION_DAYS ago, and the record of schedules'
    fire times as old (0 keeps everything)."""
    deps: WorkerDeps = ctx["deps"]
    days = deps.settings.retention_days
    if not days:
        return 0
    horizon = utcnow() - timedelta(days=days)
    jobs_deleted, events_deleted = await jobs.purge_expired(deps.lifecycle, finished_before=horizon)
    async with deps.sessions() as session:
        fires_deleted = await ScheduleRepository(session).forget_fires(horizon)
        await session.commit()
    log.info("retention done", jobs=jobs_deleted, events=events_deleted, fires=fires_deleted, days=days)
    return jobs_deleted


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue stored runs that never reached Redis (it was down at submit) or whose arq entry expired, and
    release leases whose release was missed."""
    deps: WorkerDeps = ctx["deps"]
    await deps.lifecycle.collect_locks()
    async with deps.sessions() as session:
        return await jobs.requeue_stranded(
            session, ctx["queue"], deps.lifecycle.locks, older_than_s=deps.settings.sweep_interval
        )


def worker_settings(settings: Settings) -> type:
    """arq's settings class for a worker with this configuration (arq's CLI takes it as WorkerSettings)."""
    every = set(range(0, 60, settings.sweep_interval))
    return type(
        "WorkerSettings",
        (),
        {
            "functions": [func(run_job, name=RUN_JOB, max_tries=1, timeout=settings.max_run_timeout + 600)],
            "cron_jobs": [
                cron(sweep, second=every, run_at_startup=True, unique=True, timeout=60),
                cron(reap, second=every, run_at_startup=True, unique=True, timeout=60),
                cron(retention, hour={3}, minute={17}, second={0}, unique=True, timeout=6 * 3600),
            ],
            "on_startup": startup,
            "on_shutdown": shutdown,
            # A pool of our own, not `redis_settings`: it survives Redis outages (PatientConnectionPool).
            "redis_pool": create_arq_redis(settings),
            "queue_name": settings.queue_name,
            "max_jobs": settings.worker_max_jobs,
            "poll_delay": settings.worker_poll_delay,
            "job_completion_wait": settings.job_completion_wait,
            "keep_result": 0,
            "max_tries": 1,
            "retry_jobs": False,
            "health_check_interval": 10,
        },
    )


def __getattr__(name: str) -> Any:
    # `arq service.worker.WorkerSettings`: the settings are read when arq asks for them, not at import.
    if name == "WorkerSettings":
        return worker_settings(get_settings())
    raise AttributeError(name)


def run_worker() -> None:
    """`ars worker`."""
    WokenWorker(**get_kwargs(dict(vars(worker_settings(get_settings()))))).run()
