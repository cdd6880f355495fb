"""Every change of a job's state, and what follows each once it is committed.

A change is one conditional statement (an UPDATE; an INSERT for a submit, a DELETE for retention), so of
concurrent writers one wins. Changes are made inside `Lifecycle.transaction()`. What must follow a change
runs once its transaction has committed, and not at all when it rolls back:

- in Redis, in one round trip (service/live/publish.py): the job's new version token, which GET /jobs/{id}
  and its pages of events are answered under; the job list's new token, which GET /jobs pages are answered
  under; newly stored events and the end of a run on the job's live stream;
- in arq: queue a submitted or requeued run, forget the entry of a run whose worker is gone, tell the
  worker of a running job to cancel it;
- in the lock table (service/jobs/locks.py): release the leases and the wait of a run that ended or went
  back to the queue, register a run that must wait; what that grants is queued in arq by the table, and the
  `waiting_for` of the runs it concerns is written in a transaction of its own (`Change.wait_changed`);
- the hooks other modules register (service/capabilities.py): `on_change` runs inside the transaction (to
  write rows of their own atomically with the change) and may return a step to run once it committed (the
  webhooks' outbox rows, then a word to their senders); `after_commit` runs after every change (metrics).

No caller announces anything by hand: a new state change is a method of `Transaction` that calls
`_changed`, and `tests/test_lifecycle.py` fails for one that announces nothing.

A run lost before it began: `launch` records the moment just before ansible-playbook starts. A running job
whose worker stops beating before that moment (killed during the Git fetch or the workspace) is queued
again, once (`MAX_REQUEUES`); after it, the job ends `error` ("worker lost") and is never run again: Ansible
may have changed hosts.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.faults import REDIS_UNAVAILABLE, retry, transient_db
from service.jobs.locks import Blockers, LockTable, Released, Want
from service.jobs.repository import EventRepository, JobRepository
from service.live.publish import Announcements, announce, list_version_key
from service.models import Job, JobStatus
from service.queue import JobQueue

log = structlog.get_logger(__name__)
T = TypeVar("T")

# A run lost before it launched ansible-playbook is queued again this many times at most.
MAX_REQUEUES = 1


class Change(enum.StrEnum):
    submitted = "submitted"
    claimed = "claimed"
    source_recorded = "source_recorded"
    launched = "launched"
    events_recorded = "events_recorded"
    cancel_requested = "cancel_requested"
    canceled = "canceled"
    finished = "finished"
    requeued = "requeued"
    lost = "lost"
    deleted = "deleted"
    targets_recorded = "targets_recorded"
    waiting = "waiting"
    wait_changed = "wait_changed"


@dataclass(frozen=True)
class Transition:
    """One committed change of one job. `job` is the row as the change left it, when the change loaded it."""

    change: Change
    job_id: str
    status: JobStatus | None = None
    job: Job | None = None


FollowUp = Callable[[], Awaitable[None]]
# Returns what must follow once the transaction committed (dropped if it rolls back), or None.
InTransaction = Callable[[AsyncSession, Transition], Awaitable[FollowUp | None]]
AfterCommit = Callable[[Transition], Awaitable[None]]


@dataclass
class _Followups:
    """What a transaction's changes ask for once it commits."""

    announcements: Announcements = field(default_factory=Announcements)
    enqueue: list[Job] = field(default_factory=list)
    forget: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    release: list[str] = field(default_factory=list)
    wait: list[tuple[Job, Want, Blockers]] = field(default_factory=list)
    hooks: list[FollowUp] = field(default_factory=list)


class Transaction:
    """The changes of one database transaction. Reads go through `session` and the repositories."""

    def __init__(self, lifecycle: Lifecycle, session: AsyncSession) -> None:
        self._lifecycle = lifecycle
        self.session = session
        self.jobs = JobRepository(session)
        self.transitions: list[Transition] = []
        self._followups = _Followups()

    async def _changed(
        self, transition: Transition, *, shown: bool = True, listed: bool | None = None
    ) -> None:
        """Record a change; `shown`: the job as GET /jobs/{id} or its events show it changed (a new version
        token); `listed`: GET /jobs shows it (a new list token; by default when `shown`)."""
        self.transitions.append(transition)
        announcements = self._followups.announcements
        if shown:
            tokens = announcements.deleted if transition.change is Change.deleted else announcements.changed
            tokens.append(transition.job_id)
        if listed is None:
            listed = shown
        if listed:
            announcements.listed = True
        for hook in self._lifecycle.in_transaction:
            follow_up = await hook(self.session, transition)
            if follow_up is not None:
                self._followups.hooks.append(follow_up)

    async def submit(self, job: Job) -> None:
        """A new run, `queued`, queued in arq after the commit (the sweeper queues it if Redis is away)."""
        await self.jobs.add(job)
        self._followups.enqueue.append(job)
        # Nothing kept a view of a job that did not exist; lists gain it.
        await self._changed(
            Transition(Change.submitted, job.id, JobStatus.queued, job), shown=False, listed=True
        )

    async def claim(self, job_id: str, worker_id: str) -> Job | None:
        """queued → running for this worker; None if it was canceled or taken meanwhile."""
        if not await self.jobs.claim(job_id, worker_id):
            return None
        job = await self.jobs.get(job_id)
        assert job is not None
        await self._changed(Transition(Change.claimed, job_id, JobStatus.running, job))
        return job

    async def record_source(self, job_id: str, commit: str) -> None:
        """The commit a Git source's ref resolved to."""
        await self.jobs.set_source_commit(job_id, commit)
        await self._changed(Transition(Change.source_recorded, job_id, JobStatus.running))

    async def launch(self, job_id: str, worker_id: str) -> bool:
        """The moment before ansible-playbook starts: from here on, a lost run is never run again."""
        if not await self.jobs.launch(job_id, worker_id):
            return False
        await self._changed(Transition(Change.launched, job_id, JobStatus.running), shown=False)
        return True

    async def record_events(self, job_id: str, rows: Sequence[dict[str, Any]], last_seq: int) -> None:
        """A batch of stored events (and the job's event count, which lists show), then on its live
        stream."""
        await EventRepository(self.session).add_batch(job_id, rows, last_seq)
        self._followups.announcements.events[job_id] = [
            {key: value for key, value in row.items() if key != "job_id"} for row in rows
        ]
        await self._changed(Transition(Change.events_recorded, job_id, JobStatus.running))

    async def finish(
        self,
        job: Job,
        status: JobStatus,
        *,
        rc: int | None,
        reason: str | None,
        host_stats: dict[str, dict[str, int]] | None,
        event_count: int,
    ) -> bool:
        """running → a final status, with everything that describes the end; the end of its stream."""
        if not await self.jobs.finish(
            job.id, status=status, rc=rc, reason=reason, host_stats=host_stats, event_count=event_count
        ):
            return False
        self._followups.announcements.ended[job.id] = event_count
        self._followups.release.append(job.id)
        await self._changed(Transition(Change.finished, job.id, status, job))
        return True

    async def cancel(self, job_id: str) -> Change | None:
        """A queued run is canceled at once; a running one is asked to stop (its worker is told after the
        commit, and reads the flag from the database too). None when the job is finished already."""
        if await self.jobs.cancel_queued(job_id):
            self._followups.announcements.ended[job_id] = 0
            self._followups.release.append(job_id)
            await self._changed(Transition(Change.canceled, job_id, JobStatus.canceled))
            return Change.canceled
        if await self.jobs.request_cancel(job_id):
            self._followups.cancel.append(job_id)
            await self._changed(Transition(Change.cancel_requested, job_id, JobStatus.running))
            return Change.cancel_requested
        return None

    async def reap(self, job: Job, *, heartbeat_before: datetime, lost_after: int) -> Change | None:
        """A running job whose worker stopped beating: queued again if it never launched ansible-playbook
        (once), else ended `error`. None if a heartbeat came in since it was found stale."""
        if await self.jobs.requeue_lost(job.id, heartbeat_before=heartbeat_before, max_requeues=MAX_REQUEUES):
            self._followups.forget.append(job.id)
            self._followups.release.append(job.id)
            self._followups.enqueue.append(job)
            await self._changed(Transition(Change.requeued, job.id, JobStatus.queued, job))
            return Change.requeued
        reason = f"worker lost: {job.worker_id} gave no sign of life for {lost_after} s"
        if await self.jobs.mark_lost(job.id, heartbeat_before=heartbeat_before, reason=reason):
            self._followups.forget.append(job.id)
            self._followups.release.append(job.id)
            self._followups.announcements.ended[job.id] = job.event_count
            await self._changed(Transition(Change.lost, job.id, JobStatus.error, job))
            return Change.lost
        return None

    async def record_targets(self, job_id: str, targets: list[str]) -> None:
        """The hosts a run targets, once resolved (GET /jobs/{id} shows them)."""
        await self.jobs.set_targets(job_id, targets)
        await self._changed(Transition(Change.targets_recorded, job_id, JobStatus.running))

    async def wait(self, job: Job, worker_id: str, want: Want, blockers: Blockers) -> bool:
        """running → queued for a run whose leases are taken: it leaves its worker, and is registered as a
        waiter once committed (queued in arq when granted). False when a cancel was asked meanwhile."""
        if not await self.jobs.wait(job.id, worker_id, blockers.as_dict()):
            return False
        self._followups.wait.append((job, want, blockers))
        await self._changed(Transition(Change.waiting, job.id, JobStatus.queued, job))
        return True

    async def wait_changed(self, job_id: str, blockers: Blockers | None) -> None:
        """What a waiting run waits for changed (None: granted, it is queued for a worker)."""
        if await self.jobs.set_waiting_for(job_id, None if blockers is None else blockers.as_dict()):
            await self._changed(Transition(Change.wait_changed, job_id, JobStatus.queued))

    async def delete(self, job_ids: Sequence[str]) -> int:
        """Finished jobs whose events are deleted already (retention). Their tokens say so: the API drops
        even the pages of events it keeps across other changes."""
        deleted = await self.jobs.delete(job_ids)
        for job_id in job_ids:
            await self._changed(Transition(Change.deleted, job_id))
        return deleted


class Lifecycle:
    """Made once per process (API lifespan, worker startup) with its shared resources."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis,
        queue: JobQueue,
        settings: Settings,
    ) -> None:
        self.sessions = sessions
        self._redis = redis
        self._queue = queue
        self._settings = settings
        self.locks = LockTable(redis, settings.queue_name)
        self.in_transaction: list[InTransaction] = []
        self._after_commit: list[AfterCommit] = []

    def on_change(self, hook: InTransaction) -> None:
        """Run `hook` inside the transaction of every change (it may write rows of its own)."""
        self.in_transaction.append(hook)

    def after_commit(self, hook: AfterCommit) -> None:
        """Run `hook` for every change once its transaction committed."""
        self._after_commit.append(hook)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        """A transaction for changes: committed when the block ends, rolled back (and nothing announced)
        when it raises."""
        async with self.sessions() as session:
            transaction = Transaction(self, session)
            yield transaction
            await session.commit()
        await self._follow_up(transaction)

    async def run(
        self,
        work: Callable[[Transaction], Awaitable[T]],
        *,
        what: str,
        retry_for: float | None,
    ) -> T:
        """`work` in a transaction, the whole transaction retried while the database has a transient fault
        (for at most `retry_for` seconds; None: until it succeeds)."""

        async def once() -> T:
            async with self.transaction() as transaction:
                return await work(transaction)

        return await retry(once, transient=transient_db, what=what, for_s=retry_for)

    async def collect_locks(self) -> int:
        """Release the leases and waits of runs that are neither queued nor running: a release missed while
        Redis was away, or a rebuild that raced an end. Returns how many."""
        known = await self.locks.known()
        if not known:
            return 0
        async with self.sessions() as session:
            statuses = await JobRepository(session).statuses(sorted(known))
        stale = sorted(
            job_id for job_id in known if statuses.get(job_id) not in (JobStatus.queued, JobStatus.running)
        )
        if stale:
            waits: dict[str, Blockers | None] = {}
            await self._release(stale, waits)
            if waits:
                await self._record_waits(waits)
            log.warning("released leases of runs that ended", jobs=stale)
        return len(stale)

    async def _release(self, job_ids: list[str], waits: dict[str, Blockers | None]) -> None:
        released: Released = await self.locks.release(job_ids)
        waits |= dict.fromkeys(released.granted) | released.changed

    async def _register(
        self, job: Job, want: Want, blockers: Blockers, waits: dict[str, Blockers | None]
    ) -> None:
        record = self._queue.record(job.id)
        acquired = await self.locks.acquire(job.id, job.priority, job.created_at, want, record=record)
        if acquired.outcome in ("granted", "waiting"):
            # Granted (what blocked it ended meanwhile), or blocked by others than `waiting_for` says.
            if acquired.blockers != blockers:
                waits[job.id] = acquired.blockers
        else:
            # Redis lost the lock table meanwhile: the sweeper queues the run again, and it starts over.
            log.warning("wait not registered", job_id=job.id, outcome=acquired.outcome)

    async def _record_waits(self, waits: dict[str, Blockers | None]) -> None:
        """`waiting_for` of runs whose wait a follow-up changed: best effort, a later change writes it
        again, and a claim clears it."""

        async def record(transaction: Transaction) -> None:
            for job_id, blockers in waits.items():
                await transaction.wait_changed(job_id, blockers)

        try:
            await self.run(record, what="record waits", retry_for=self._settings.db_retry_for)
        except Exception as exc:
            if not transient_db(exc):
                log.exception("waiting_for not recorded")
            else:
                log.warning("waiting_for not recorded", error=str(exc).splitlines()[0])

    async def _follow_up(self, transaction: Transaction) -> None:
        # Each step on its own: the transaction committed whatever Redis does. Without them, kept copies of a
        # view expire on their own, readers fall back to the database, the sweeper queues stored runs, and a
        # worker reads the cancel flag from the database.
        followups = transaction._followups
        settings = self._settings
        steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = []
        if followups.announcements:
            ttl, maxlen = settings.stream_ttl_after_end, settings.stream_maxlen
            announced = partial(
                announce,
                self._redis,
                followups.announcements,
                maxlen=maxlen,
                ttl=ttl,
                list_key=list_version_key(settings.queue_name),
            )
            steps.append(("announce", announced))
        # arq keeps a dead run's entry (and counts it as in flight) until its lock expires.
        steps += [("forget in arq", partial(self._queue.forget, job_id)) for job_id in followups.forget]
        steps += [
            ("queue in arq", partial(self._queue.enqueue, job.id, job.priority, job.created_at))
            for job in followups.enqueue
        ]
        steps += [
            ("signal cancel", partial(self._queue.signal_cancel, job_id)) for job_id in followups.cancel
        ]
        # Leases are released before waits are registered: what one frees, the other may take at once.
        # Missed ones (Redis away) are caught by the sweeper (`collect_locks`).
        waits: dict[str, Blockers | None] = {}
        if followups.release:
            steps.append(("release leases", partial(self._release, followups.release, waits)))
        steps += [
            ("register wait", partial(self._register, job, want, blockers, waits))
            for job, want, blockers in followups.wait
        ]
        for what, step in steps:
            try:
                await step()
            except REDIS_UNAVAILABLE as exc:
                log.warning("committed change not followed up", step=what, error=str(exc))
            except RedisError:
                # A bug, said loudly; the change itself is committed and must not look failed to its caller.
                log.exception("committed change not followed up", step=what)
        if waits:
            await self._record_waits(waits)
        for follow_up in followups.hooks:
            try:
                await follow_up()
            except Exception:
                log.exception(
                    "follow-up of a hook failed", hook=getattr(follow_up, "__qualname__", repr(follow_up))
                )
        for transition in transaction.transitions:
            for hook in self._after_commit:
                try:
                    await hook(transition)
                except Exception:
                    log.exception("after-commit hook failed", hook=getattr(hook, "__qualname__", repr(hook)))
