"""Following a job: replay from the database, then live from Redis, without gaps or duplicates.

The database is the record; the live stream only says early that there is more. A reader replays what is
stored, takes live events that continue exactly where it is, and goes back to the database for anything
else (a gap, a trimmed stream, a reader that fell behind, Redis unavailable, a quiet minute). A database
session is held only for one read, never across a wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import structlog
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.errors import NotFound
from service.jobs.repository import EventRepository, JobRepository
from service.jobs.schemas import EventOut, JobOut
from service.live import LiveEnd, LiveEvent, LiveHub
from service.models import JobStatus

log = structlog.get_logger(__name__)

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


@dataclass(frozen=True)
class _CatchUp:
    events: list[LiveEvent]
    finished: JobOut | None


async def _catch_up(sessions: async_sessionmaker[AsyncSession], job_id: str, after: int) -> _CatchUp:
    """Stored events after `after`; and the job, if it is finished (then those are all its events)."""
    # The status is read before the events: a run's events are all stored before it is marked finished.
    async with sessions() as session:
        job = await JobRepository(session).get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    finished = JobOut.of(job) if JobStatus(job.status).finished else None
    events: list[LiveEvent] = []
    while True:
        async with sessions() as session:
            rows = await EventRepository(session).after(job_id, after, _PAGE)
        events.extend(LiveEvent(row.seq, row.event, EventOut.of(row).model_dump_json()) for row in rows)
        if len(rows) < _PAGE:
            return _CatchUp(events, finished)
        after = rows[-1].seq


async def _catch_up_patiently(
    sessions: async_sessionmaker[AsyncSession], job_id: str, after: int
) -> _CatchUp:
    """`_catch_up`, waiting out a database that refuses connections: the reader stays connected."""
    delay = 0.2
    while True:
        try:
            return await _catch_up(sessions, job_id, after)
        except (OperationalError, OSError) as exc:
            log.warning("database unavailable, stream reader waits", job_id=job_id, error=str(exc)[:200])
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def follow_job(
    sessions: async_sessionmaker[AsyncSession],
    hub: LiveHub,
    job_id: str,
    *,
    after: int,
    timing: FollowTiming,
) -> AsyncGenerator[FollowItem, None]:
    """Every event with seq > `after`, exactly once and in order, then the finished job."""
    last = after
    async with hub.subscribe(job_id) as live:
        catch_up = True
        while True:
            if catch_up:
                caught = await _catch_up_patiently(sessions, job_id, last)
                for event in caught.events:
                    yield event
                    last = event.seq
                if caught.finished is not None:
                    yield JobEnd(caught.finished)
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
