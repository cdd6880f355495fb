"""Following a job: replay from the database, then live from Redis, without gaps or duplicates.

The database is the record; the live stream only says early that there is more. A reader replays what is
stored, takes live events that continue exactly where it is, and goes back to the database for anything
else (a gap, a trimmed stream, a reader that fell behind, Redis unavailable, a quiet minute). A database
session is held only for one read, never across a wait.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.errors import NotFound
from service.faults import Backoff, retry, transient_db
from service.jobs.repository import EventRepository, JobRepository
from service.jobs.schemas import BRIEF_EVENT_COLUMNS, EVENT_COLUMNS, JobOut, brief_event_json, event_json
from service.live.hub import LiveEnd, LiveEvent, LiveHub
from service.models import JobStatus

log = structlog.get_logger(__name__)
T = TypeVar("T")

_PAGE = 500


@dataclass(frozen=True)
class JobEnd:
    """The last item of a follow: the finished job (as GET /jobs/{id})."""

    job: JobOut


FollowItem = LiveEvent | JobEnd


@dataclass(frozen=True)
class FollowTiming:
    # With Redis, how long a reader waits for live news before looking at the database anyway (a worker
    # lost without an end marker); without Redis, how often it polls.
    recheck_s: float
    poll_s: float


async def _finished_job(sessions: async_sessionmaker[AsyncSession], job_id: str) -> JobOut | None:
    async with sessions() as session:
        job = await JobRepository(session).get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return JobOut.of(job) if JobStatus(job.status).finished else None


async def _page(
    sessions: async_sessionmaker[AsyncSession], job_id: str, after: int, brief: bool
) -> list[LiveEvent]:
    columns = BRIEF_EVENT_COLUMNS if brief else EVENT_COLUMNS
    async with sessions() as session:
        rows = await EventRepository(session).page(job_id, columns=columns, after=after, limit=_PAGE)
    # An unknown job's empty page: _finished_job, read before each catch-up, says it is gone.
    if brief:
        return [LiveEvent(row["seq"], row["event"], "", brief_event_json(row)) for row in rows or ()]
    return [LiveEvent(row["seq"], row["event"], event_json(row), "") for row in rows or ()]


async def _patiently(read: Callable[[], Awaitable[T]], job_id: str) -> T:
    """One database read, waiting out a database that refuses connections: the reader stays connected."""
    return await retry(
        read, transient=transient_db, what="stream reader", backoff=Backoff(first=0.2), job_id=job_id
    )


async def follow_job(
    sessions: async_sessionmaker[AsyncSession],
    hub: LiveHub,
    job_id: str,
    *,
    after: int,
    timing: FollowTiming,
    brief: bool = False,
) -> AsyncGenerator[FollowItem, None]:
    """Every event with seq > `after`, exactly once and in order, then the finished job. `brief`: the events
    need only their `brief` JSON (their `data` JSON is not made)."""
    last = after
    async with hub.subscribe(job_id) as live:
        catch_up = True
        while True:
            if catch_up:
                # The status is read before the events: a run's events are all stored before it is marked
                # finished, so a finished job's events read after it are all of them.
                finished = await _patiently(functools.partial(_finished_job, sessions, job_id), job_id)
                while True:
                    page = await _patiently(functools.partial(_page, sessions, job_id, last, brief), job_id)
                    for event in page:
                        yield event
                        last = event.seq
                    if len(page) < _PAGE:
                        break
                if finished is not None:
                    yield JobEnd(finished)
                    return
                catch_up = False
            item = await live.next(timing.poll_s if live.degraded else timing.recheck_s)
            if item is None or isinstance(item, LiveEnd):
                catch_up = True
            elif item.seq == last + 1:
                yield item
                last = item.seq
            elif item.seq > last + 1:
                # Events between were stored before this one was published: read them, then this one.
                catch_up = True
