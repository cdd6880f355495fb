"""The job lifecycle with every capability that hangs work on a job's changes: the one place a process
builds it (the API's lifespan, the worker's startup), so a change made anywhere is followed by all of them.
A new capability registers its hooks here (service/jobs/lifecycle.py says what a hook may do)."""

from __future__ import annotations

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.jobs.lifecycle import Lifecycle
from service.queue import JobQueue
from service.webhooks.outbox import Outbox


def build_lifecycle(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, queue: JobQueue, settings: Settings
) -> Lifecycle:
    lifecycle = Lifecycle(sessions, redis, queue, settings)
    lifecycle.on_change(Outbox(redis, settings.queue_name).on_change)
    return lifecycle
