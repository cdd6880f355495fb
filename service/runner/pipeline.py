"""One run, from claim to final status: the worker side of DESIGN section 4."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import structlog
from redis.asyncio import Redis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.errors import Canceled, ServiceError
from service.faults import retry, transient_db, transient_redis
from service.jobs.checks import check_job
from service.jobs.lifecycle import Lifecycle, Transaction
from service.jobs.locks import Blockers, Want, rebuild_locks
from service.jobs.repository import EventRepository, JobRepository
from service.metrics import WorkerMetrics
from service.models import Job, JobStatus
from service.redaction import Redactor
from service.runner.events import STATS_EVENT, EventChannel, host_stats, read_event_files, to_row
from service.runner.execute import RunOutcome, run_ansible
from service.runner.targets import TargetsError, no_targets_reason, resolve_targets
from service.runner.warm import ForkServer
from service.runner.workspace import Workspace, create_private_dir, fetch_source, prepare
from service.sources.git import MirrorCache

log = structlog.get_logger(__name__)
T = TypeVar("T")


@dataclass
class WorkerHealth:
    # time.monotonic() since which the database has answered every heartbeat; None while it does not.
    db_reachable_since: float | None = None


@dataclass(frozen=True)
class WorkerDeps:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    # Every change of a job's state, and what follows it (announced with our own Redis client, whose calls
    # fail fast when Redis is away, unlike arq's pool, which waits for it).
    lifecycle: Lifecycle
    redis: Redis
    worker_id: str
    limiter: anyio.CapacityLimiter
    redactor: Redactor
    mirrors: MirrorCache
    # Runs in progress on this worker: the heartbeat keeps them alive for the reaper.
    active: set[str] = field(default_factory=set)
    health: WorkerHealth = field(default_factory=WorkerHealth)
    # The hand-offs of the runs in progress: what they hold is the worker's event backlog.
    channels: set[EventChannel] = field(default_factory=set)
    # The cancel flag of each run this worker claims or runs, for the API's cancel messages.
    cancels: dict[str, threading.Event] = field(default_factory=dict)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    # Where runs start from (RUN_FORK_SERVER); None: each starts a fresh ansible-playbook.
    fork_server: ForkServer | None = None


class EventRecorder:
    """Stores events in order, in batches, then appends them to the live stream.

    A batch it cannot store (the database stayed away past `db_retry_for`) it holds, and it takes no more
    from the channel, which fills up, then spills: ansible-runner writes the rest to its job_events files.
    `complete()` stores what is held, what the channel still carries, then those files, in that order, so
    what is stored is always contiguous from 1.
    """

    def __init__(self, deps: WorkerDeps, job_id: str) -> None:
        self.deps = deps
        self.job_id = job_id
        self.stored_seq = 0
        self.stats: dict[str, Any] | None = None
        self.stalled = False
        # Taken from the channel, not stored yet: the batch being written, or the one the database refused.
        self.held: list[dict[str, Any]] = []

    async def consume(self, channel: EventChannel) -> None:
        settings = self.deps.settings
        while not self.stalled and (
            batch := await channel.get_batch(settings.event_batch_size, settings.event_batch_linger)
        ):
            await self._store(batch)

    async def complete(self, channel: EventChannel, workspace: Workspace) -> bool:
        """Store whatever is not stored yet (see the class). False when the database stayed away past
        `db_retry_for`: some events are not stored."""
        pending = [*self.held, *channel.take_all()]
        after = max([self.stored_seq, *(int(event["counter"]) for event in pending)])
        pending += await anyio.to_thread.run_sync(read_event_files, workspace.artifact_dir, after)
        self.stalled = False
        size = self.deps.settings.event_batch_size
        for start in range(0, len(pending), size):
            await self._store(pending[start : start + size])
            if self.stalled:
                return False
        return True

    async def _store(self, batch: list[dict[str, Any]]) -> None:
        self.held = batch
        rows = [
            to_row(self.job_id, event, self.deps.redactor)
            for event in batch
            if int(event["counter"]) > self.stored_seq
        ]
        if not rows:
            self.held = []
            return
        if rows[0]["seq"] != self.stored_seq + 1:
            # ansible-runner numbers the events it hands over one by one, and only a spill ends the
            # channel (for good): a gap here is a bug, not a fault to wait out.
            raise RuntimeError(f"event {rows[0]['seq']} arrived after {self.stored_seq}")
        for row in rows:
            if row["event"] == STATS_EVENT:
                self.stats = row["data"]
        last = rows[-1]["seq"]
        started = time.perf_counter()
        try:
            await self.deps.lifecycle.run(
                lambda transaction: transaction.record_events(self.job_id, rows, last),
                what="store events",
                retry_for=self.deps.settings.db_retry_for,
            )
        except IntegrityError:
            # A commit whose answer was lost on the way: the rows are there already.
            await self._resync()
            if self.stored_seq < last:
                raise
        except Exception as exc:
            if not transient_db(exc):
                raise
            self.stalled = True
            log.error("events not stored, will store them at the end of the run", first_seq=rows[0]["seq"])
            return
        self.stored_seq = last
        self.held = []
        self.deps.metrics.events.inc(len(rows))
        self.deps.metrics.batch_latency.observe(time.perf_counter() - started)

    async def _resync(self) -> None:
        async with self.deps.sessions() as session:
            self.stored_seq = await EventRepository(session).max_seq(self.job_id)


# How often a run reads its cancel flag in the database: the API's message (`WorkerDeps.cancels`) stops it
# at once; this is for a message lost while Redis was away.
_CANCEL_POLL_S = 5


async def _watch_cancel(deps: WorkerDeps, job_id: str, cancel: threading.Event) -> None:
    while not cancel.is_set():
        await anyio.sleep(_CANCEL_POLL_S)
        try:
            async with deps.sessions() as session:
                if await JobRepository(session).is_cancel_requested(job_id):
                    cancel.set()
        except Exception as exc:
            if not transient_db(exc):
                raise


async def _run_in_thread(
    deps: WorkerDeps, job: Job, workspace: Workspace, channel: EventChannel, cancel: threading.Event
) -> RunOutcome:
    done = threading.Event()

    def target() -> RunOutcome:
        try:
            return run_ansible(job, workspace, deps.settings, channel, cancel, deps.fork_server)
        finally:
            done.set()

    try:
        return await anyio.to_thread.run_sync(target, abandon_on_cancel=True, limiter=deps.limiter)
    except anyio.get_cancelled_exc_class():
        # The worker is stopping: a thread cannot be cancelled, so stop Ansible and wait for the thread,
        # or the playbook would go on unsupervised while the database says the run ended.
        cancel.set()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(done.wait)
        raise


def _final(
    outcome: RunOutcome, timeout: int, cancel: threading.Event, stats: dict[str, dict[str, int]] | None
) -> tuple[JobStatus, str | None]:
    status = outcome.status
    if outcome.error:
        return JobStatus.error, outcome.error
    if status == "successful":
        return JobStatus.successful, None
    if outcome.timed_out:
        return JobStatus.timeout, f"the run exceeded its timeout of {timeout} s"
    if status == "canceled" or cancel.is_set():
        return JobStatus.canceled, "canceled by request"
    if status == "failed":
        bad = sorted(
            host for host, counts in (stats or {}).items() if counts["failures"] or counts["unreachable"]
        )
        where = f" (failed or unreachable: {', '.join(bad)})" if bad else ""
        return JobStatus.failed, f"ansible-playbook exited with rc {outcome.rc}{where}"
    return JobStatus.error, f"ansible-runner ended with status {status!r}"


async def execute_run(deps: WorkerDeps, job_id: str) -> None:
    if job_id in deps.cancels:
        # Two arq entries of one run (the sweeper's and a lock grant's): the claim would let this worker
        # take it twice (it takes back its own unlaunched claim), so the second one stops here.
        log.info("not claimed: this worker runs it already")
        return
    # Listening before the claim: a cancel can be asked as soon as the claim is committed.
    cancel = deps.cancels[job_id] = threading.Event()
    try:
        # If the database stays away, the job stays queued and the sweeper queues it again later.
        job = await deps.lifecycle.run(
            lambda transaction: transaction.claim(job_id, deps.worker_id),
            what="claim",
            retry_for=deps.settings.db_retry_for,
        )
        if job is None:
            log.info("not claimed: canceled or taken by another worker")
            return
        log.info("run started", playbook=job.playbook)
        deps.active.add(job_id)
        await _execute_claimed(deps, job, cancel)
    finally:
        deps.active.discard(job_id)
        del deps.cancels[job_id]


def _internal_error(exc: BaseException) -> str:
    """A job's reason for a bug of ours: the error itself, not the task group that carried it."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"internal error: {type(exc).__name__}: {exc}"


async def _launch(deps: WorkerDeps, job: Job) -> bool:
    """Record the start of ansible-playbook; False if the run is no longer this worker's (reaped meanwhile,
    which a worker cut off from the database for longer than WORKER_LOST_AFTER can find)."""
    return await deps.lifecycle.run(
        lambda transaction: transaction.launch(job.id, deps.worker_id),
        what="launch",
        retry_for=deps.settings.db_retry_for,
    )


async def _execute_claimed(deps: WorkerDeps, job: Job, cancel: threading.Event) -> None:
    """Carry out a claimed run to its final status (raises when the worker is stopped)."""
    workspace = await _prepare(deps, job, cancel)
    if workspace is None:
        return
    recorder = EventRecorder(deps, job.id)
    channel = EventChannel(asyncio.get_running_loop(), deps.settings.event_buffer_size)
    deps.channels.add(channel)
    try:
        if not await _take_leases(deps, job, workspace):
            return
        if not await _launch(deps, job):
            log.warning("run not started: it is no longer this worker's")
            return
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(recorder.consume, channel)
                watcher = anyio.CancelScope()
                group.start_soon(_scoped, watcher, _watch_cancel(deps, job.id, cancel))
                try:
                    outcome = await _run_in_thread(deps, job, workspace, channel, cancel)
                finally:
                    watcher.cancel()
        except anyio.get_cancelled_exc_class():
            # The worker is shutting down past its grace period: the run was stopped above.
            with anyio.CancelScope(shield=True):
                await _finish_interrupted(deps, job, recorder, channel, workspace)
            raise
        except Exception as exc:
            log.exception("run failed inside the service")
            with anyio.CancelScope(shield=True):
                await _finish(
                    deps, job, JobStatus.error, reason=_internal_error(exc), events=recorder.stored_seq
                )
            return
        stored_all = await recorder.complete(channel, workspace)
        stats = host_stats(recorder.stats) if recorder.stats is not None else None
        deps.metrics.run_starts.labels(mode=outcome.start).inc()
        status, reason = _final(outcome, job.timeout or deps.settings.max_run_timeout, cancel, stats)
        if not stored_all:
            status, reason = (
                JobStatus.error,
                (
                    f"the database was unreachable for more than {deps.settings.db_retry_for:g} s: events"
                    f" after {recorder.stored_seq} are not stored (Ansible itself ended as {outcome.status})"
                ),
            )
        # Never left running: the final status is retried until the database takes it.
        await _finish(
            deps, job, status, rc=outcome.rc, reason=reason, stats=stats, events=recorder.stored_seq
        )
        log.info("run finished", status=status, rc=outcome.rc, events=recorder.stored_seq)
    finally:
        deps.channels.discard(channel)
        if not deps.settings.keep_work_dirs:
            await anyio.to_thread.run_sync(workspace.remove)


async def _take_leases(deps: WorkerDeps, job: Job, workspace: Workspace) -> bool:
    """Hold every lease the run needs (service/jobs/locks.py) before it launches. False when it does not
    launch here: it waits, off this worker (queued again, registered as a waiter), or it ended."""
    table = deps.lifecycle.locks
    targets = job.targets
    if job.exclusive and targets is None and (targets := await _resolve(deps, job, workspace)) is None:
        return False
    while True:
        want = Want.of(job.exclusive, targets, job.locks or ())
        acquired = await retry(
            partial(table.acquire, job.id, job.priority, job.created_at, want),
            transient=transient_redis,
            what="take leases",
        )
        if acquired.outcome == "granted":
            if not want.asks_nothing:
                log.info("leases taken", kind=want.kind, hosts=list(want.hosts), locks=list(want.locks))
            return True
        if acquired.outcome == "rebuild":
            await rebuild_locks(deps.sessions, table)
        elif acquired.outcome == "resolve":
            if (targets := await _resolve(deps, job, workspace)) is None:
                return False
        else:
            assert acquired.blockers is not None
            blockers = acquired.blockers
            waiting = await deps.lifecycle.run(
                partial(_wait, job=job, worker_id=deps.worker_id, want=want, blockers=blockers),
                what="wait for leases",
                retry_for=deps.settings.db_retry_for,
            )
            if waiting:
                log.info("waiting for leases", **blockers.as_dict())
            elif await _cancel_requested(deps, job.id):
                await _finish(deps, job, JobStatus.canceled, reason="canceled by request", events=0)
            else:
                log.warning("run not started: it is no longer this worker's")
            return False


async def _cancel_requested(deps: WorkerDeps, job_id: str) -> bool:
    async with deps.sessions() as session:
        job = await JobRepository(session).get(job_id)
    return job is not None and job.worker_id == deps.worker_id and job.cancel_requested


async def _wait(
    transaction: Transaction, *, job: Job, worker_id: str, want: Want, blockers: Blockers
) -> bool:
    return await transaction.wait(job, worker_id, want, blockers)


async def _resolve(deps: WorkerDeps, job: Job, workspace: Workspace) -> list[str] | None:
    """The run's target hosts, recorded; None after ending the run `error` when there are none or Ansible
    cannot read the inventory."""
    try:
        targets = await anyio.to_thread.run_sync(
            partial(
                resolve_targets,
                deps.settings,
                job.id,
                inventory=workspace.inventory,
                limit=job.limit,
                cwd=workspace.project_dir,
                extra_environment=workspace.environment,
            )
        )
    except TargetsError as exc:
        await _finish(
            deps, job, JobStatus.error, reason=f"could not resolve the target hosts: {exc}", events=0
        )
        return None
    if not targets:
        await _finish(deps, job, JobStatus.error, reason=no_targets_reason(job.limit), events=0)
        return None
    await deps.lifecycle.run(
        lambda transaction: transaction.record_targets(job.id, targets),
        what="record targets",
        retry_for=deps.settings.db_retry_for,
    )
    return targets


async def _prepare(deps: WorkerDeps, job: Job, cancel: threading.Event) -> Workspace | None:
    """The run's workspace, or None after ending the run (`error` with a reason for a person, or
    `canceled` when it was canceled meanwhile)."""
    private = await anyio.to_thread.run_sync(create_private_dir, job, deps.settings)
    commit: str | None = None
    try:
        # The check the API made at submit, again: the configuration may have changed since.
        location = check_job(job, deps.settings, source_root=None).location
        source = await anyio.to_thread.run_sync(
            fetch_source, job, location, deps.settings, deps.mirrors, private, cancel
        )
        if source.fetch_seconds is not None:
            deps.metrics.git_fetch.labels(provider=source.provider).observe(source.fetch_seconds)
        commit = source.commit
        if commit is not None:
            await deps.lifecycle.run(
                lambda transaction: transaction.record_source(job.id, str(commit)),
                what="record commit",
                retry_for=deps.settings.db_retry_for,
            )
        return await anyio.to_thread.run_sync(prepare, job, deps.settings, private, source)
    except BaseException as exc:
        with anyio.CancelScope(shield=True):
            if not deps.settings.keep_work_dirs:
                await anyio.to_thread.run_sync(partial(shutil.rmtree, private, ignore_errors=True))
            status = JobStatus.error
            if isinstance(exc, Canceled):
                status, reason = JobStatus.canceled, "canceled by request"
            elif isinstance(exc, ServiceError | OSError):
                detail = exc.detail if isinstance(exc, ServiceError) else str(exc)
                where = f" ({job.source['repo']} at {commit})" if commit else ""
                reason = f"could not prepare the run: {detail}{where}"
                log.warning("run not started", reason=reason)
            elif isinstance(exc, anyio.get_cancelled_exc_class()):
                reason = "worker shut down before the run started"
            elif isinstance(exc, Exception):
                log.exception("preparing the run failed inside the service")
                reason = _internal_error(exc)
            else:
                raise
            await _finish(deps, job, status, reason=reason, events=0)
        if isinstance(exc, Exception):
            return None
        raise


async def _scoped(scope: anyio.CancelScope, coroutine: Awaitable[None]) -> None:
    with scope:
        await coroutine


# A stopping worker has terminationGracePeriodSeconds left, not forever; the reaper covers the rest.
_SHUTDOWN_DB_RETRY_S = 10.0


async def _finish_interrupted(
    deps: WorkerDeps, job: Job, recorder: EventRecorder, channel: EventChannel, workspace: Workspace
) -> None:
    try:
        with anyio.fail_after(_SHUTDOWN_DB_RETRY_S):
            await recorder.complete(channel, workspace)
        await _finish(
            deps,
            job,
            JobStatus.error,
            reason="worker shut down before the run finished",
            stats=host_stats(recorder.stats) if recorder.stats else None,
            events=recorder.stored_seq,
            retry_for=_SHUTDOWN_DB_RETRY_S,
        )
    except Exception as exc:
        if not (isinstance(exc, TimeoutError) or transient_db(exc)):
            raise
        log.exception("interrupted run not recorded; the reaper will end it")


async def _finish(
    deps: WorkerDeps,
    job: Job,
    status: JobStatus,
    *,
    reason: str | None,
    events: int,
    rc: int | None = None,
    stats: dict[str, dict[str, int]] | None = None,
    retry_for: float | None = None,
) -> None:
    """The final status, retried while the database has a transient fault (`retry_for`; None: until it
    takes it): a run is never left running."""
    reason = None if reason is None else deps.redactor.text(reason)
    finished = await deps.lifecycle.run(
        lambda transaction: transaction.finish(
            job, status, rc=rc, reason=reason, host_stats=stats, event_count=events
        ),
        what="finish",
        retry_for=retry_for,
    )
    if not finished:
        log.warning("run was already finished elsewhere", status=status)
