"""The rules of jobs, without HTTP: submit, cancel, read."""

from __future__ import annotations

import base64
import binascii
import uuid
from datetime import datetime, timedelta

import anyio
import structlog
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.errors import Conflict, InvalidRequest, NotFound
from service.jobs.checks import check_job
from service.jobs.lifecycle import Lifecycle
from service.jobs.locks import LockTable
from service.jobs.repository import EventRepository, JobFilters, JobRepository
from service.jobs.schemas import (
    EVENT_COLUMNS,
    JOB_COLUMNS,
    JobOut,
    JobRequest,
    event_page_json,
    job_page_json,
)
from service.models import Job, JobStatus, utcnow
from service.queue import JobQueue
from service.runner.targets import TargetResolver

log = structlog.get_logger(__name__)


async def submit(
    session: AsyncSession,
    lifecycle: Lifecycle,
    settings: Settings,
    request: JobRequest,
    idempotency_key: str | None,
    submitted_by: str,
    *,
    targets: TargetResolver,
) -> tuple[Job, bool]:
    """Store and queue a run. Returns (job, created); created is False for a repeated Idempotency-Key.

    Idempotency keys are per token (`submitted_by`): one client cannot fetch another's job by guessing
    its key. The unique (submitted_by, idempotency_key) constraint settles races. A key is remembered for
    `IDEMPOTENCY_WINDOW` seconds; after that the same key starts a new run.
    """
    repository = JobRepository(session)
    if idempotency_key is not None:
        existing = await repository.get_by_idempotency_key(submitted_by, idempotency_key)
        window_start = utcnow() - timedelta(seconds=settings.idempotency_window)
        if existing is not None and existing.created_at >= window_start:
            return existing, False
        if existing is not None:
            await repository.release_idempotency_key(existing.id, idempotency_key)
            await session.commit()
    job = await new_job(settings, request, submitted_by, targets=targets, idempotency_key=idempotency_key)
    try:
        async with lifecycle.transaction() as transaction:
            await transaction.submit(job)
    except IntegrityError:
        # Two identical idempotent requests raced: the unique key let one in; return that one.
        if idempotency_key is None:
            raise
        existing = await repository.get_by_idempotency_key(submitted_by, idempotency_key)
        if existing is None:
            raise
        return existing, False
    log.info("job submitted", job_id=job.id, playbook=job.playbook, priority=job.priority)
    return job, True


async def new_job(
    settings: Settings,
    request: JobRequest,
    submitted_by: str | None,
    *,
    targets: TargetResolver,
    idempotency_key: str | None = None,
    schedule_id: str | None = None,
    labels: dict[str, str] | None = None,
) -> Job:
    """The run a request asks for, checked as a submit checks it (InvalidRequest naming the field)."""
    job = Job(
        id=str(uuid.uuid4()),
        status=JobStatus.queued,
        playbook=request.playbook,
        source=request.source.model_dump(),
        inventory=request.inventory,
        extra_vars=request.extra_vars,
        limit=request.limit,
        tags=request.tags,
        skip_tags=request.skip_tags,
        check=request.check,
        diff=request.diff,
        verbosity=request.verbosity,
        forks=request.forks,
        timeout=request.timeout,
        priority=request.priority,
        labels=request.labels if labels is None else labels,
        exclusive=settings.exclusive_default if request.exclusive is None else request.exclusive,
        locks=request.locks,
        idempotency_key=idempotency_key,
        submitted_by=submitted_by,
        schedule_id=schedule_id,
        created_at=utcnow(),
    )
    checked = check_job(job, settings, source_root=None)
    if job.exclusive and checked.location is None:
        # A bundled playbook's inventory is at hand: a limit that selects nothing is the request's error.
        job.targets = await anyio.to_thread.run_sync(targets.bundled, job, checked.inventory)
    return job


async def get(session: AsyncSession, job_id: str) -> Job:
    job = await JobRepository(session).get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id}")
    return job


async def view(session: AsyncSession, job_id: str) -> JobOut:
    row = await JobRepository(session).row(job_id)
    if row is None:
        raise NotFound(f"no job {job_id}")
    return JobOut.of(row)


async def cancel(session: AsyncSession, lifecycle: Lifecycle, job_id: str) -> Job:
    """A queued run is canceled at once; a running one is signalled and ends within the poll interval."""
    job = await get(session, job_id)
    if JobStatus(job.status).finished:
        raise Conflict(f"job {job_id} already finished as {job.status}")
    async with lifecycle.transaction() as transaction:
        change = await transaction.cancel(job_id)
    job = await get(session, job_id)
    if change is None:
        raise Conflict(f"job {job_id} already finished as {job.status}")
    return job


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """Where the next page of the list starts: after the job created at `created_at` with this id."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor: not a cursor returned by this API") from None


async def job_page(session: AsyncSession, filters: JobFilters, *, limit: int, cursor: str | None) -> bytes:
    """A page of the list, newest first, as the JSON of JobPage."""
    before = decode_cursor(cursor) if cursor else None
    rows = await JobRepository(session).list(filters, columns=JOB_COLUMNS, limit=limit + 1, before=before)
    if len(rows) > limit:
        rows = rows[:limit]
        return job_page_json(rows, encode_cursor(rows[-1]["created_at"], rows[-1]["id"]))
    return job_page_json(rows, None)


async def event_page(session: AsyncSession, job_id: str, *, after: int, limit: int) -> tuple[bytes, bool]:
    """The job's events with seq > after, as the JSON of EventPage, and whether the page is full: events
    are stored contiguous from 1 and never changed, so a full page stays as it is until the job is deleted.
    NotFound for an unknown job."""
    rows = await EventRepository(session).page(job_id, columns=EVENT_COLUMNS, after=after, limit=limit)
    if rows is None:
        raise NotFound(f"no job {job_id}")
    return event_page_json(rows), len(rows) == limit


async def requeue_stranded(
    session: AsyncSession, queue: JobQueue, locks: LockTable, *, older_than_s: float
) -> int:
    """Queue stored runs that arq does not hold (Redis was down at submit, or the arq entry expired) and
    that the lock table does not queue itself (waiting for leases, or granted them)."""
    jobs = await JobRepository(session).queued(
        created_before=utcnow() - timedelta(seconds=older_than_s), limit=1000
    )
    kept = await locks.kept([job.id for job in jobs])
    queued = 0
    for job in jobs:
        if job.id in kept:
            continue
        if await queue.enqueue(job.id, job.priority, job.created_at):
            queued += 1
            log.info("requeued a stored run", job_id=job.id)
    return queued


async def purge_expired(
    lifecycle: Lifecycle,
    *,
    finished_before: datetime,
    jobs_per_batch: int = 100,
    events_per_batch: int = 5000,
) -> tuple[int, int]:
    """Delete finished jobs (and their events) that ended before `finished_before`.

    Every statement touches a bounded range and commits on its own: the event table can be huge, and a
    long DELETE would hold locks the running workers need. Returns (jobs, events) deleted.
    """
    sessions = lifecycle.sessions
    jobs_deleted = events_deleted = 0
    while True:
        async with sessions() as session:
            batch = await JobRepository(session).expired(
                finished_before=finished_before, limit=jobs_per_batch
            )
        if not batch:
            return jobs_deleted, events_deleted
        for job_id, event_count in batch:
            # The last, open-ended range also takes events stored past event_count (a crash between writes).
            bounds = [*range(0, event_count, events_per_batch), event_count]
            for after, up_to in zip(bounds, [*bounds[1:], 2**31 - 1], strict=True):
                async with sessions() as session:
                    events_deleted += await EventRepository(session).delete_range(
                        job_id, after=after, up_to=up_to
                    )
                    await session.commit()
        async with lifecycle.transaction() as transaction:
            jobs_deleted += await transaction.delete([job_id for job_id, _ in batch])
        log.info("retention: deleted a batch", jobs=len(batch))
