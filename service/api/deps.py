"""FastAPI dependencies: shared resources come from the app's lifespan state.

All are `async def`: FastAPI runs a plain `def` dependency in the thread pool, a thread hop per request."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.jobs.lifecycle import Lifecycle
from service.jobs.views import JobViews
from service.queue import JobQueue
from service.runner.targets import TargetResolver


async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def _queue(request: Request) -> JobQueue:
    queue: JobQueue = request.app.state.queue
    return queue


async def _lifecycle(request: Request) -> Lifecycle:
    lifecycle: Lifecycle = request.app.state.lifecycle
    return lifecycle


async def _views(request: Request) -> JobViews:
    views: JobViews = request.app.state.views
    return views


SettingsDep = Annotated[Settings, Depends(_settings)]
UUID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# Checked before any lookup: nothing else reaches the database, Redis keys or an error message.
JobId = Annotated[
    str,
    Path(
        description="the job's id (a UUID, as `POST /jobs` returned it)",
        max_length=36,
        pattern=UUID_PATTERN,
    ),
]
SessionDep = Annotated[AsyncSession, Depends(_session)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
ViewsDep = Annotated[JobViews, Depends(_views)]
LifecycleDep = Annotated[Lifecycle, Depends(_lifecycle)]


async def _targets(request: Request) -> TargetResolver:
    targets: TargetResolver = request.app.state.targets
    return targets


TargetsDep = Annotated[TargetResolver, Depends(_targets)]
