"""Every query on `job` and `job_event`. State changes are conditional UPDATEs, so races have one winner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import Job, JobEvent, JobStatus, utcnow


@dataclass(frozen=True)
class JobFilters:
    statuses: Sequence[str] = ()
    playbook: str | None = None
    labels: Sequence[tuple[str, str]] = ()
    created_after: datetime | None = None


# The tables themselves, for Core statements: an UPDATE through the ORM entity takes the ORM's bulk path
# (it looks for objects to keep in sync), several times the cost of the statement on a worker's hot path.
_JOB_TABLE = cast(sa.Table, Job.__table__)  # type: ignore[attr-defined]
_EVENT_TABLE = cast(sa.Table, JobEvent.__table__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Lease:
    job_id: str
    exclusive: bool
    targets: list[str] | None
    locks: list[str] | None


# A running job that goes back to `queued` (requeued after its worker was lost, or waiting for leases)
# leaves its worker: a claim starts it afresh.
_BACK_IN_THE_QUEUE: dict[str, Any] = {
    "status": JobStatus.queued,
    "worker_id": None,
    "started_at": None,
    "heartbeat_at": None,
}


def _rowcount(result: sa.Result[Any]) -> int:
    return cast(CursorResult[Any], result).rowcount


class JobRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, job: Job) -> None:
        self.session.add(job)
        await self.session.flush()

    async def get(self, job_id: str) -> Job | None:
        return await self.session.get(Job, job_id, populate_existing=True)

    async def row(self, job_id: str) -> sa.RowMapping | None:
        """The job's columns, read with Core: a third of the ORM's cost, for reads that change nothing."""
        result = await self.session.execute(sa.select(_JOB_TABLE).where(_JOB_TABLE.c.id == job_id))
        return result.mappings().one_or_none()

    async def exists(self, job_id: str) -> bool:
        result = await self.session.execute(sa.select(_JOB_TABLE.c.id).where(_JOB_TABLE.c.id == job_id))
        return result.first() is not None

    async def get_by_idempotency_key(self, submitted_by: str, key: str) -> Job | None:
        result = await self.session.execute(
            sa.select(Job).where(col(Job.submitted_by) == submitted_by, col(Job.idempotency_key) == key)
        )
        return result.scalar_one_or_none()

    async def release_idempotency_key(self, job_id: str, key: str) -> None:
        """Forget an expired key, so that the unique constraint lets a new run take it."""
        await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(_JOB_TABLE.c.id == job_id, _JOB_TABLE.c.idempotency_key == key)
            .values(idempotency_key=None)
        )

    async def list(
        self,
        filters: JobFilters,
        *,
        columns: Sequence[str],
        limit: int,
        before: tuple[datetime, str] | None,
    ) -> Sequence[sa.RowMapping]:
        """These columns of jobs, newest first; `before` is the (created_at, id) of the last job of the
        previous page. Core, and only the columns asked for: a page of the list is read for every poll of a
        list that changed."""
        job = _JOB_TABLE.c
        query = sa.select(*(job[name] for name in columns))
        if filters.statuses:
            query = query.where(job.status.in_(filters.statuses))
        if filters.playbook:
            query = query.where(job.playbook == filters.playbook)
        for key, value in filters.labels:
            query = query.where(sa.type_coerce(job.labels, sa.JSON)[key].as_string() == value)
        if filters.created_after:
            query = query.where(job.created_at > filters.created_after)
        if before:
            created_at, job_id = before
            query = query.where(
                sa.or_(job.created_at < created_at, sa.and_(job.created_at == created_at, job.id < job_id))
            )
        query = query.order_by(job.created_at.desc(), job.id.desc()).limit(limit)
        return (await self.session.execute(query)).mappings().all()

    async def cancel_queued(self, job_id: str) -> bool:
        """queued → canceled, if it is still queued (a worker claiming it at the same time wins or loses)."""
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(_JOB_TABLE.c.id == job_id, _JOB_TABLE.c.status == JobStatus.queued)
            .values(
                status=JobStatus.canceled,
                cancel_requested=True,
                finished_at=utcnow(),
                reason="canceled before it started",
                waiting_for=None,
            )
        )
        return _rowcount(result) == 1

    async def request_cancel(self, job_id: str) -> bool:
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(_JOB_TABLE.c.id == job_id, _JOB_TABLE.c.status == JobStatus.running)
            .values(cancel_requested=True)
        )
        return _rowcount(result) == 1

    async def claim(self, job_id: str, worker_id: str) -> bool:
        """queued → running for this worker; again for the same worker before launch (a commit whose answer
        was lost on the way is retried)."""
        now = utcnow()
        job = _JOB_TABLE.c
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(
                job.id == job_id,
                sa.or_(
                    job.status == JobStatus.queued,
                    sa.and_(
                        job.status == JobStatus.running, job.worker_id == worker_id, job.launched_at.is_(None)
                    ),
                ),
            )
            .values(
                status=JobStatus.running,
                started_at=now,
                heartbeat_at=now,
                worker_id=worker_id,
                waiting_for=None,
            )
        )
        return _rowcount(result) == 1

    async def wait(self, job_id: str, worker_id: str, waiting_for: Mapping[str, Sequence[str]]) -> bool:
        """running → queued for a run of this worker that must wait for leases before it launched, unless
        a cancel was asked meanwhile."""
        job = _JOB_TABLE.c
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(
                job.id == job_id,
                job.status == JobStatus.running,
                job.worker_id == worker_id,
                job.launched_at.is_(None),
                job.cancel_requested.is_(False),
            )
            .values(**_BACK_IN_THE_QUEUE, waiting_for=waiting_for)
        )
        return _rowcount(result) == 1

    async def set_waiting_for(self, job_id: str, waiting_for: Mapping[str, Sequence[str]] | None) -> bool:
        """What a queued run waits for now (None: nothing, it was granted its leases)."""
        job = _JOB_TABLE.c
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(job.id == job_id, job.status == JobStatus.queued)
            .values(waiting_for=waiting_for)
        )
        return _rowcount(result) == 1

    async def set_targets(self, job_id: str, targets: Sequence[str]) -> None:
        await self.session.execute(
            sa.update(_JOB_TABLE).where(_JOB_TABLE.c.id == job_id).values(targets=targets)
        )

    async def leases(self) -> Sequence[Lease]:
        """Every running job's lease fields: what it holds or may hold."""
        job = _JOB_TABLE.c
        query = sa.select(job.id, job.exclusive, job.targets, job.locks).where(
            job.status == JobStatus.running
        )
        return [Lease(*row) for row in (await self.session.execute(query)).all()]

    async def statuses(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The status of each of these jobs that exists."""
        job = _JOB_TABLE.c
        result = await self.session.execute(sa.select(job.id, job.status).where(job.id.in_(job_ids)))
        return {job_id: status for job_id, status in result.all()}

    async def launch(self, job_id: str, worker_id: str) -> bool:
        """Record that ansible-playbook is about to start for this worker's run."""
        job = _JOB_TABLE.c
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(job.id == job_id, job.status == JobStatus.running, job.worker_id == worker_id)
            .values(launched_at=utcnow())
        )
        return _rowcount(result) == 1

    async def heartbeat(self, job_ids: Sequence[str]) -> None:
        if not job_ids:
            await self.session.execute(sa.select(1))  # still a sign the database answers
            return
        await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(_JOB_TABLE.c.id.in_(job_ids), _JOB_TABLE.c.status == JobStatus.running)
            .values(heartbeat_at=utcnow())
        )

    async def stale_running(self, *, heartbeat_before: datetime, limit: int) -> Sequence[Job]:
        query = (
            sa.select(Job)
            .where(col(Job.status) == JobStatus.running, col(Job.heartbeat_at) < heartbeat_before)
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def requeue_lost(self, job_id: str, *, heartbeat_before: datetime, max_requeues: int) -> bool:
        """running → queued for a run whose worker died before it launched ansible-playbook, unless it was
        queued again that many times already or a heartbeat came in since it was found stale."""
        job = _JOB_TABLE.c
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(
                job.id == job_id,
                job.status == JobStatus.running,
                job.heartbeat_at < heartbeat_before,
                job.launched_at.is_(None),
                job.requeues < max_requeues,
            )
            .values(**_BACK_IN_THE_QUEUE, requeues=job.requeues + 1)
        )
        return _rowcount(result) == 1

    async def mark_lost(self, job_id: str, *, heartbeat_before: datetime, reason: str) -> bool:
        """running → error, unless a heartbeat came in since the job was found stale."""
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(
                _JOB_TABLE.c.id == job_id,
                _JOB_TABLE.c.status == JobStatus.running,
                _JOB_TABLE.c.heartbeat_at < heartbeat_before,
            )
            .values(status=JobStatus.error, reason=reason, finished_at=utcnow())
        )
        return _rowcount(result) == 1

    async def set_source_commit(self, job_id: str, commit: str) -> None:
        await self.session.execute(
            sa.update(_JOB_TABLE).where(_JOB_TABLE.c.id == job_id).values(source_commit=commit)
        )

    async def finish(
        self,
        job_id: str,
        *,
        status: JobStatus,
        rc: int | None,
        reason: str | None,
        host_stats: dict[str, dict[str, int]] | None,
        event_count: int,
    ) -> bool:
        """running → a final status, with everything that describes the end, in one statement."""
        result = await self.session.execute(
            sa.update(_JOB_TABLE)
            .where(_JOB_TABLE.c.id == job_id, _JOB_TABLE.c.status == JobStatus.running)
            .values(
                status=status,
                rc=rc,
                reason=reason,
                host_stats=host_stats,
                event_count=event_count,
                finished_at=utcnow(),
            )
        )
        return _rowcount(result) == 1

    async def count_by_status(self) -> dict[str, int]:
        """Jobs per status, every status present (0 when none): the index on status answers it."""
        result = await self.session.execute(
            sa.select(col(Job.status), sa.func.count()).group_by(col(Job.status))
        )
        counts = {status.value: 0 for status in JobStatus}
        for status, count in result.all():
            counts[str(getattr(status, "value", status))] = int(count)
        return counts

    async def is_cancel_requested(self, job_id: str) -> bool:
        result = await self.session.execute(sa.select(col(Job.cancel_requested)).where(col(Job.id) == job_id))
        return bool(result.scalar_one_or_none())

    async def queued(self, *, created_before: datetime, limit: int) -> Sequence[Job]:
        query = (
            sa.select(Job)
            .where(col(Job.status) == JobStatus.queued, col(Job.created_at) < created_before)
            .order_by(col(Job.created_at))
            .limit(limit)
        )
        return (await self.session.execute(query)).scalars().all()

    async def expired(self, *, finished_before: datetime, limit: int) -> Sequence[tuple[str, int]]:
        """(id, event_count) of finished jobs that ended before `finished_before`, oldest first."""
        finished = [status.value for status in JobStatus if status.finished]
        query = (
            sa.select(col(Job.id), col(Job.event_count))
            .where(col(Job.status).in_(finished), col(Job.finished_at) < finished_before)
            .order_by(col(Job.finished_at))
            .limit(limit)
        )
        return [(job_id, count) for job_id, count in (await self.session.execute(query)).all()]

    async def delete(self, job_ids: Sequence[str]) -> int:
        result = await self.session.execute(sa.delete(Job).where(col(Job.id).in_(job_ids)))
        return _rowcount(result)


class EventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_batch(self, job_id: str, rows: Sequence[dict[str, Any]], event_count: int) -> None:
        """Insert a batch of events in one statement and move the job's live event count.

        Core statements on the session's connection: the hot path of a run skips the ORM's bulk
        machinery (no objects are loaded here for it to keep in sync).
        """
        connection = await self.session.connection()
        # The job row is locked first: inserting events first takes a shared lock on it (the foreign key)
        # that the UPDATE then upgrades, and a concurrent cancel's UPDATE makes that a deadlock on MariaDB.
        await connection.execute(
            sa.update(_JOB_TABLE).where(_JOB_TABLE.c.id == job_id).values(event_count=event_count)
        )
        await connection.execute(sa.insert(_EVENT_TABLE), list(rows))

    async def delete_range(self, job_id: str, *, after: int, up_to: int) -> int:
        """Delete events after < seq <= up_to: a primary-key range, so the lock stays small."""
        result = await self.session.execute(
            sa.delete(JobEvent).where(
                col(JobEvent.job_id) == job_id, col(JobEvent.seq) > after, col(JobEvent.seq) <= up_to
            )
        )
        return _rowcount(result)

    async def max_seq(self, job_id: str) -> int:
        result = await self.session.execute(
            sa.select(sa.func.max(JobEvent.seq)).where(col(JobEvent.job_id) == job_id)
        )
        return int(result.scalar_one_or_none() or 0)

    async def page(
        self, job_id: str, *, columns: Sequence[str], after: int, limit: int
    ) -> Sequence[sa.RowMapping] | None:
        """These columns of the job's events with seq > after, in order; None when there is no such job.

        Events only exist with their job (retention deletes them first): the job's row is read only for an
        empty page. (Joined to the job in one statement, MariaDB sorts every later event of the job.)
        """
        event = _EVENT_TABLE.c
        query = (
            sa.select(*(event[name] for name in columns))
            .where(event.job_id == job_id, event.seq > after)
            .order_by(event.seq)
            .limit(limit)
        )
        rows = (await self.session.execute(query)).mappings().all()
        if not rows and not await JobRepository(self.session).exists(job_id):
            return None
        return rows

    async def stdout_after(self, job_id: str, after: int, limit: int) -> Sequence[tuple[int, str]]:
        query = (
            sa.select(col(JobEvent.seq), col(JobEvent.stdout))
            .where(col(JobEvent.job_id) == job_id, col(JobEvent.seq) > after)
            .order_by(col(JobEvent.seq))
            .limit(limit)
        )
        return [(seq, stdout) for seq, stdout in (await self.session.execute(query)).all()]
