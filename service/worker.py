"""The arq worker: `arq service.worker.WorkerSettings`.

Runs are never retried by arq (`max_tries=1`): an Ansible run must not be repeated behind anyone's back.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Any

import anyio
import structlog
from arq.connections import ArqRedis, RedisSettings
from arq.cron import cron
from arq.worker import func

from service.config import get_settings, scrub_environment
from service.db import create_engine, session_factory
from service.jobs import service as jobs
from service.logging import configure_logging
from service.queue import RUN_JOB, JobQueue
from service.redaction import Redactor
from service.runner.pipeline import WorkerDeps, execute_run

log = structlog.get_logger(__name__)


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    # From here on the worker holds no secret in its environment: runs inherit it (DESIGN section 8).
    removed = scrub_environment(settings)
    redactor = Redactor([*settings.secret_values(), *removed])
    configure_logging(settings, redactor)
    # arq's CLI gives its logger a handler of its own; ours formats everything once.
    logging.getLogger("arq").handlers.clear()
    logging.getLogger("arq").propagate = True
    engine = create_engine(settings, pool_size=settings.worker_max_jobs + 2)
    redis: ArqRedis = ctx["redis"]
    ctx["engine"] = engine
    ctx["deps"] = WorkerDeps(
        settings=settings,
        sessions=session_factory(engine),
        redis=redis,
        worker_id=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        limiter=anyio.CapacityLimiter(settings.worker_max_jobs),
        redactor=redactor,
    )
    ctx["queue"] = JobQueue(redis, settings)
    log.info("worker started", worker_id=ctx["deps"].worker_id, max_jobs=settings.worker_max_jobs)


async def shutdown(ctx: dict[str, Any]) -> None:
    if "engine" in ctx:
        await ctx["engine"].dispose()


async def run_job(ctx: dict[str, Any], job_id: str) -> None:
    with structlog.contextvars.bound_contextvars(job_id=job_id):
        await execute_run(ctx["deps"], job_id)


async def sweep(ctx: dict[str, Any]) -> int:
    """Queue stored runs that never reached Redis (it was down at submit) or whose arq entry expired."""
    deps: WorkerDeps = ctx["deps"]
    async with deps.sessions() as session:
        return await jobs.requeue_stranded(session, ctx["queue"], older_than_s=deps.settings.sweep_interval)


_settings = get_settings()


class WorkerSettings:
    """Read by arq's CLI. arq reads these at import time, so they come from the environment then."""

    functions = [
        func(run_job, name=RUN_JOB, max_tries=1, timeout=_settings.max_run_timeout + 600),
    ]
    cron_jobs = [
        cron(
            sweep,
            second=set(range(0, 60, _settings.sweep_interval)),
            run_at_startup=True,
            unique=True,
            timeout=60,
        ),
    ]
    on_startup = startup
    on_shutdown = shutdown
    redis_settings = RedisSettings.from_dsn(_settings.require_redis_url())
    queue_name = _settings.queue_name
    max_jobs = _settings.worker_max_jobs
    poll_delay = _settings.worker_poll_delay
    job_completion_wait = _settings.job_completion_wait
    keep_result = 0
    max_tries = 1
    retry_jobs = False
    health_check_interval = 10
