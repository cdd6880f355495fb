"""Fires schedules: a task of every API process, since the API replicas are always up while KEDA may scale
the workers to zero. A fired run is queued like a submitted one, so KEDA sees it in /queue and starts a
worker.

Every process may find the same schedule due; one handles each fire time. In one transaction, a pass moves
the schedule's next fire time on (a conditional UPDATE: a concurrent pass waits for it, then finds it moved
and does nothing), records what became of the fire time (the unique `(schedule_id, fire_at)` row settles
any race the UPDATE did not) and submits the run through the job lifecycle. A process killed mid-pass
leaves nothing: the transaction rolls back and the next pass of any process handles the fire time.

Fire times that passed while no API process ran are made up once, by one run, when the latest is younger
than SCHEDULE_MISFIRE_GRACE; the others are recorded as `missed`. With `overlap: skip`, a fire time while
the previous run is queued or running is recorded as `skipped`.
"""

from __future__ import annotations

import os
import random
import socket
from datetime import UTC, datetime, timedelta

import anyio
import structlog
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from service.config import Settings
from service.errors import InvalidRequest
from service.faults import Backoff, transient_db
from service.jobs.lifecycle import Lifecycle, Transaction
from service.jobs.schemas import JobRequest, as_utc
from service.metrics import ScheduleMetrics
from service.models import FireOutcome, Job, Overlap, ScheduleFire, utcnow
from service.runner.targets import TargetResolver
from service.schedules.repository import ScheduleRepository
from service.schedules.service import scheduled_run
from service.schedules.times import Cron, ScheduleTimeError, plan, to_utc_naive

log = structlog.get_logger(__name__)

# Schedules handled per pass, and at once (each in a transaction of its own); more due are handled by the
# next pass, at once.
_PER_PASS = 200
_AT_ONCE = 8


class Scheduler:
    def __init__(
        self,
        lifecycle: Lifecycle,
        settings: Settings,
        targets: TargetResolver,
        metrics: ScheduleMetrics,
    ) -> None:
        self._lifecycle = lifecycle
        self._sessions = lifecycle.sessions
        self._settings = settings
        self._targets = targets
        self._metrics = metrics
        self.identity = f"{socket.gethostname()}:{os.getpid()}"[:128]
        self._woken = anyio.Event()

    def wake(self) -> None:
        """A schedule changed in this process: look again now (the others see it within their poll)."""
        self._woken.set()

    async def run(self) -> None:
        """Until cancelled (the API's shutdown)."""
        poll = self._settings.schedule_poll_interval
        backoff = Backoff(first=1, cap=poll)
        while True:
            self._woken = anyio.Event()
            try:
                await self.fire_due(datetime.now(UTC))
                wait = await self._until_next_due(poll)
            except Exception as exc:
                if not transient_db(exc):
                    raise
                log.warning("schedules not read", error=str(exc).splitlines()[0])
                await backoff.sleep()
                continue
            backoff.reset()
            with anyio.move_on_after(wait):
                await self._woken.wait()

    async def _until_next_due(self, poll: float) -> float:
        async with self._sessions() as session:
            next_due = await ScheduleRepository(session).next_due()
        if next_due is None:
            return poll
        return min(poll, max(0.0, (next_due - utcnow()).total_seconds()))

    async def fire_due(self, now: datetime) -> list[ScheduleFire]:
        """Handle the schedules due at `now` (aware); returns what this process recorded."""
        async with self._sessions() as session:
            due = await ScheduleRepository(session).due(to_utc_naive(now), limit=_PER_PASS)
        # In an order of this process's own: processes that find the same schedules due mostly take
        # different ones, instead of queueing behind each other's row locks one schedule after another.
        random.shuffle(due)
        recorded: list[ScheduleFire] = []
        limiter = anyio.CapacityLimiter(_AT_ONCE)

        async def handle(schedule_id: str) -> None:
            async with limiter:
                with structlog.contextvars.bound_contextvars(schedule_id=schedule_id):
                    try:
                        recorded.extend(await self._handle(schedule_id, now))
                    except Exception as exc:
                        # Still due: the next pass takes it again; the others go on meanwhile.
                        if not transient_db(exc):
                            raise
                        log.warning("schedule not handled", error=str(exc).splitlines()[0])

        async with anyio.create_task_group() as tasks:
            for schedule_id in due:
                tasks.start_soon(handle, schedule_id)
        return recorded

    async def _handle(self, schedule_id: str, now: datetime) -> list[ScheduleFire]:
        async with self._sessions() as session:
            schedule = await ScheduleRepository(session).get(schedule_id)
        if schedule is None or not schedule.enabled or schedule.next_fire_at is None:
            return []
        due = as_utc(schedule.next_fire_at)
        try:
            cron = Cron.parse(schedule.cron, schedule.timezone)
        except ScheduleTimeError as exc:
            # The machine's timezone data lost the schedule's zone: stop it, and say so on it.
            refused = self._fire(schedule_id, due, FireOutcome.refused, str(exc))
            return await self._record(schedule_id, due, None, refused)
        grace = timedelta(seconds=self._settings.schedule_misfire_grace)
        steps = plan(cron, due, now, grace)
        fires: list[ScheduleFire] = []
        if steps.missed is not None:
            first, count = steps.missed
            fires.append(self._fire(schedule_id, first, FireOutcome.missed, count=count))
        run: Job | None = None
        if steps.fire is not None:
            try:
                request = JobRequest.model_validate(schedule.job)
                run = await scheduled_run(self._settings, request, schedule, targets=self._targets)
                fires.append(self._fire(schedule_id, steps.fire, FireOutcome.queued))
            except InvalidRequest as exc:
                fires.append(self._fire(schedule_id, steps.fire, FireOutcome.refused, exc.detail))
            except ValidationError as exc:
                # A body stored under an older version of the request's rules.
                detail = "; ".join(
                    f"job.{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors()
                )
                fires.append(self._fire(schedule_id, steps.fire, FireOutcome.refused, detail))
        skip = schedule.overlap == Overlap.skip
        return await self._record(schedule_id, due, steps.next_fire, *fires, run=run, skip=skip)

    def _fire(
        self,
        schedule_id: str,
        at: datetime,
        outcome: FireOutcome,
        detail: str | None = None,
        *,
        count: int = 1,
    ) -> ScheduleFire:
        return ScheduleFire(
            schedule_id=schedule_id,
            fire_at=to_utc_naive(at),
            outcome=outcome,
            count=count,
            detail=detail,
            recorded_at=utcnow(),
            fired_by=self.identity,
        )

    async def _record(
        self,
        schedule_id: str,
        due: datetime,
        next_fire: datetime | None,
        *fires: ScheduleFire,
        run: Job | None = None,
        skip: bool = False,
    ) -> list[ScheduleFire]:
        """In one transaction: take the fire time, record `fires`, submit `run` (unless skipped)."""

        async def work(transaction: Transaction) -> list[ScheduleFire] | None:
            schedules = ScheduleRepository(transaction.session)
            next_at = None if next_fire is None else to_utc_naive(next_fire)
            if not await schedules.advance(schedule_id, due=to_utc_naive(due), next_fire=next_at):
                return None
            recorded = []
            for template in fires:
                # A copy per attempt: a retried transaction starts from the plan, not from the last try.
                fire = ScheduleFire(**template.model_dump(exclude={"id"}))
                if fire.outcome == FireOutcome.queued and run is not None:
                    active = await schedules.active_run(schedule_id) if skip else None
                    if active is not None:
                        fire.outcome = FireOutcome.skipped
                        fire.detail = f"the previous run {active} was still queued or running"
                    else:
                        await transaction.submit(run)
                        fire.job_id = run.id
                await schedules.record(fire)
                recorded.append(fire)
            return recorded

        try:
            recorded = await self._lifecycle.run(
                work, what="fire a schedule", retry_for=self._settings.db_retry_for
            )
        except IntegrityError:
            recorded = None
        if recorded is None:
            log.debug("fire time handled by another process")
            return []
        for fire in recorded:
            self._metrics.fires.labels(outcome=fire.outcome).inc(fire.count)
            log.info(
                "schedule fired",
                outcome=fire.outcome,
                fire_at=as_utc(fire.fire_at).isoformat(),
                count=fire.count,
                job_id=fire.job_id,
                detail=fire.detail,
            )
        return recorded
