"""The rules of jobs, without HTTP: submit, cancel, read."""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta

import structlog
from redis.exceptions import RedisError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import live
from service.config import Settings
from service.errors import Conflict, InvalidRequest, NotFound
from service.jobs.repository import EventRepository, JobFilters, JobRepository
from service.jobs.schemas import GitSource, JobOut, JobRequest
from service.jobs.variables import check_inventory, check_variables
from service.models import Job, JobEvent, JobStatus, utcnow
from service.queue import JobQueue
from service.sources.paths import PLAYBOOK_SUFFIXES, check_relative, resolve_inventory, resolve_playbook
from service.sources.providers import check_ref, locate_repo

log = structlog.get_logger(__name__)


def _validate_source(request: JobRequest, settings: Settings) -> None:
    if isinstance(request.source, GitSource):
        locate_repo(request.source.repo, settings.git_providers)
        check_ref(request.source.ref)
        # Whether the files exist is known only once a worker has fetched the ref.
        pure = check_relative(request.playbook, "playbook")
        if pure.suffix not in PLAYBOOK_SUFFIXES:
            raise InvalidRequest(f"playbook: {request.playbook!r} is not a .yml or .yaml file")
        if isinstance(request.inventory, str):
            check_relative(request.inventory, "inventory")
        return
    root = settings.playbooks_dir
    resolve_playbook(root, request.playbook)
    if isinstance(request.inventory, str):
        resolve_inventory(root, request.inventory)


def _validate_limits(request: JobRequest, settings: Settings) -> None:
    if request.timeout is not None and request.timeout > settings.max_run_timeout:
        raise InvalidRequest(f"timeout: at most {settings.max_run_timeout} seconds")
    if request.forks is not None and request.forks > settings.max_forks:
        raise InvalidRequest(f"forks: at most {settings.max_forks} (MAX_FORKS)")
    check_variables(request.extra_vars, "extra_vars", settings.extra_vars_allow)
    if isinstance(request.inventory, dict):
        check_inventory(request.inventory, settings.extra_vars_allow, settings.max_inline_hosts)


async def submit(
    session: AsyncSession,
    queue: JobQueue,
    settings: Settings,
    request: JobRequest,
    idempotency_key: str | None,
    submitted_by: str,
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
    _validate_source(request, settings)
    _validate_limits(request, settings)
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
        labels=request.labels,
        idempotency_key=idempotency_key,
        submitted_by=submitted_by,
        created_at=utcnow(),
    )
    try:
        await repository.add(job)
        await session.commit()
    except IntegrityError:
        # Two identical idempotent requests raced: the unique key let one in; return that one.
        await session.rollback()
        if idempotency_key is None:
            raise
        existing = await repository.get_by_idempotency_key(submitted_by, idempotency_key)
        if existing is None:
            raise
        return existing, False
    await _enqueue(queue, job)
    log.info("job submitted", job_id=job.id, playbook=job.playbook, priority=job.priority)
    return job, True


async def _enqueue(queue: JobQueue, job: Job) -> None:
    try:
        await queue.enqueue(job.id, job.priority, job.created_at)
    except (RedisError, OSError) as exc:
        # The job is stored; the sweeper queues it once Redis answers again.
        log.warning("enqueue failed, left for the sweeper", job_id=job.id, error=str(exc))


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


async def cancel(session: AsyncSession, queue: JobQueue, job_id: str) -> Job:
    """A queued run is canceled at once; a running one is signalled and ends within the poll interval."""
    repository = JobRepository(session)
    job = await get(session, job_id)
    if JobStatus(job.status).finished:
        raise Conflict(f"job {job_id} already finished as {job.status}")
    if await repository.cancel_queued(job_id):
        await session.commit()
        await live.changed(queue.redis, job_id)
        return await get(session, job_id)
    if await repository.request_cancel(job_id):
        await session.commit()
        await live.changed(queue.redis, job_id)
        try:
            await queue.signal_cancel(job_id)
        except (RedisError, OSError) as exc:
            # The worker also reads the flag from the database when Redis is away.
            log.warning("cancel signal not sent", job_id=job_id, error=str(exc))
        return await get(session, job_id)
    job = await get(session, job_id)
    raise Conflict(f"job {job_id} already finished as {job.status}")


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created_at, job_id = raw.split("|", 1)
        return datetime.fromisoformat(created_at), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidRequest("cursor: not a cursor returned by this API") from None


async def list_jobs(
    session: AsyncSession, filters: JobFilters, *, limit: int, cursor: str | None
) -> tuple[Sequence[Job], str | None]:
    before = decode_cursor(cursor) if cursor else None
    jobs = await JobRepository(session).list(filters, limit=limit + 1, before=before)
    if len(jobs) > limit:
        jobs = jobs[:limit]
        return jobs, encode_cursor(jobs[-1])
    return jobs, None


async def events(session: AsyncSession, job_id: str, *, after: int, limit: int) -> Sequence[JobEvent]:
    await get(session, job_id)
    return await EventRepository(session).after(job_id, after, limit)


async def requeue_stranded(session: AsyncSession, queue: JobQueue, *, older_than_s: float) -> int:
    """Queue stored runs that arq does not hold (Redis was down at submit, or the arq entry expired)."""
    jobs = await JobRepository(session).queued(
        created_before=utcnow() - timedelta(seconds=older_than_s), limit=1000
    )
    queued = 0
    for job in jobs:
        if await queue.enqueue(job.id, job.priority, job.created_at):
            queued += 1
            log.info("requeued a stored run", job_id=job.id)
    return queued


async def purge_expired(
    sessions: async_sessionmaker[AsyncSession],
    *,
    finished_before: datetime,
    on_deleted: Callable[[list[str]], Awaitable[None]] | None = None,
    jobs_per_batch: int = 100,
    events_per_batch: int = 5000,
) -> tuple[int, int]:
    """Delete finished jobs (and their events) that ended before `finished_before`; `on_deleted` hears of
    each batch of deleted jobs once committed.

    Every statement touches a bounded range and commits on its own: the event table can be huge, and a
    long DELETE would hold locks the running workers need. Returns (jobs, events) deleted.
    """
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
        deleted = [job_id for job_id, _ in batch]
        async with sessions() as session:
            jobs_deleted += await JobRepository(session).delete(deleted)
            await session.commit()
        if on_deleted is not None:
            await on_deleted(deleted)
        log.info("retention: deleted a batch", jobs=len(batch))
