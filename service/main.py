"""The API: `uvicorn service.main:app`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.api import health, jobs, metrics, queue, schedules, stream, webhooks
from service.api.auth import Authenticator
from service.api.errors import install_error_handlers
from service.api.limits import BodyLimitMiddleware
from service.api.stream import StreamAllowance
from service.capabilities import build_lifecycle
from service.config import Settings, get_settings
from service.console import routes as console
from service.db import create_engine, session_factory
from service.faults import supervised
from service.jobs.views import JobViews
from service.live.hub import LiveHub, create_live_redis
from service.logging import configure_logging
from service.metrics import ApiMetrics, RequestMiddleware
from service.queue import JobQueue, create_redis
from service.redaction import Redactor
from service.runner.targets import TargetResolver
from service.schedules.scheduler import Scheduler
from service.webhooks.sender import Sender


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Refuses an open API and a missing Redis before anything starts."""
    settings = settings or get_settings()
    settings.check_auth()
    settings.require_redis_url()
    configure_logging(settings, Redactor(settings.secret_values()))
    authenticator = Authenticator(settings)
    api_metrics = ApiMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        redis = create_redis(settings)
        app.state.settings = settings
        app.state.authenticator = authenticator
        app.state.metrics = api_metrics
        app.state.sessions = session_factory(engine)
        app.state.redis = redis
        app.state.queue = JobQueue(redis, settings)
        app.state.lifecycle = build_lifecycle(app.state.sessions, redis, app.state.queue, settings)
        app.state.targets = TargetResolver(settings)
        app.state.views = JobViews(
            app.state.sessions,
            redis,
            settings.job_view_cache_size,
            api_metrics.job_view_reads,
            api_metrics.page_reads,
            settings.queue_name,
        )
        # The live read loop's blocking XREAD holds a connection: it gets a pool of its own.
        live_redis = create_live_redis(settings)
        app.state.live = LiveHub(live_redis)
        app.state.stream_allowance = StreamAllowance(settings.max_streams_per_token)
        # The API replicas are always up, the workers may be scaled to zero: the API sends webhooks.
        sender = Sender(app.state.sessions, redis, settings, api_metrics.webhooks)
        # It fires schedules too: a fired run is queued, and KEDA starts a worker for it.
        app.state.scheduler = Scheduler(
            app.state.lifecycle, settings, app.state.targets, api_metrics.schedules
        )
        background = [
            asyncio.create_task(supervised(sender.run, "webhook sender")),
            asyncio.create_task(supervised(app.state.scheduler.run, "scheduler")),
        ]
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            app.state.targets.close()
            await app.state.live.close()
            await live_redis.aclose()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(
        title="ansible-runner-service",
        version="1",
        summary="Run Ansible playbooks on demand; read every event and per-host result.",
        lifespan=lifespan,
    )
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth
    )
    # Outermost: every answer, a refused body included, is counted and carries the request id.
    app.add_middleware(RequestMiddleware, metrics=api_metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(jobs.router)
    app.include_router(queue.build_router(settings))
    app.include_router(stream.router)
    app.include_router(webhooks.router)
    app.include_router(schedules.router)
    app.include_router(console.router)
    app.mount("/static", console.static_files, name="static")
    return app


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.main:app`: the app is built when the server asks for it, not at import.
    if name == "app":
        return create_app()
    raise AttributeError(name)
