"""The rules of schedules, without HTTP: create, change, delete, read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.errors import InvalidRequest, NotFound, shown
from service.jobs import service as jobs
from service.jobs.schemas import JobRequest, check_labels
from service.models import Job, Schedule, ScheduleFire, utcnow
from service.runner.targets import TargetResolver
from service.schedules.repository import ScheduleRepository
from service.schedules.schemas import (
    SCHEDULE_LABEL,
    FirePage,
    ScheduleOut,
    SchedulePatch,
    ScheduleRequest,
    fires_out,
)
from service.schedules.times import Cron, ScheduleTimeError, to_utc_naive

RECENT_FIRES = 10


def parse_cron(cron: str, timezone: str) -> Cron:
    try:
        return Cron.parse(cron, timezone)
    except ScheduleTimeError as exc:
        raise InvalidRequest(str(exc)) from None


def run_labels(request: JobRequest, name: str) -> dict[str, str]:
    """The labels of the schedule's runs: the job body's and `schedule=<name>`."""
    if SCHEDULE_LABEL in request.labels:
        raise InvalidRequest(f"job.labels: {SCHEDULE_LABEL!r} is set by the schedule, to its name")
    labels = {**request.labels, SCHEDULE_LABEL: name}
    try:
        return check_labels(labels)
    except ValueError as exc:
        raise InvalidRequest(f"job.labels: {exc} (one is the schedule's own)") from None


async def scheduled_run(
    settings: Settings,
    request: JobRequest,
    schedule: Schedule,
    *,
    targets: TargetResolver,
    name: str | None = None,
) -> Job:
    """The run a schedule starts, checked as POST /jobs checks a run (InvalidRequest naming `job.<field>`)."""
    try:
        return await jobs.new_job(
            settings,
            request,
            schedule.created_by,
            targets=targets,
            schedule_id=schedule.id,
            labels=run_labels(request, name or schedule.name),
        )
    except InvalidRequest as exc:
        if exc.detail.startswith("job."):
            raise
        raise InvalidRequest(f"job.{exc.detail}") from None


def _stored_request(schedule: Schedule) -> JobRequest:
    try:
        return JobRequest.model_validate(schedule.job)
    except ValidationError:
        raise InvalidRequest(
            "job: the stored body does not pass the current rules (its fires are refused); send a new one"
        ) from None


def _first_fire(cron: Cron) -> datetime | None:
    first = cron.next_after(datetime.now(UTC))
    return None if first is None else to_utc_naive(first)


async def create(
    session: AsyncSession,
    settings: Settings,
    request: ScheduleRequest,
    created_by: str,
    *,
    targets: TargetResolver,
) -> Schedule:
    cron = parse_cron(request.cron, request.timezone)
    now = utcnow()
    schedule = Schedule(
        id=str(uuid.uuid4()),
        name=request.name,
        cron=cron.expression,
        timezone=request.timezone,
        job=request.job.model_dump(mode="json"),
        enabled=request.enabled,
        overlap=request.overlap,
        next_fire_at=_first_fire(cron) if request.enabled else None,
        created_at=now,
        updated_at=now,
        created_by=created_by,
    )
    await scheduled_run(settings, request.job, schedule, targets=targets)
    repository = ScheduleRepository(session)
    await _name_free(repository, request.name)
    try:
        await repository.add(schedule)
        await session.commit()
    except IntegrityError:
        await session.rollback()
        await _name_free(repository, request.name)
        raise
    return schedule


async def _name_free(repository: ScheduleRepository, name: str, but: str | None = None) -> None:
    existing = await repository.named(name)
    if existing is not None and existing.id != but:
        raise InvalidRequest(f"name: a schedule named {shown(name)} exists already")


async def get(session: AsyncSession, schedule_id: str) -> Schedule:
    schedule = await ScheduleRepository(session).get(schedule_id)
    if schedule is None:
        raise NotFound(f"no schedule {schedule_id}")
    return schedule


async def view(session: AsyncSession, schedule: Schedule) -> ScheduleOut:
    fires = await ScheduleRepository(session).fires(schedule.id, limit=RECENT_FIRES)
    return ScheduleOut.of(schedule, fires)


async def list_all(session: AsyncSession) -> list[ScheduleOut]:
    repository = ScheduleRepository(session)
    schedules = await repository.all()
    recent = await repository.recent_fires([schedule.id for schedule in schedules], limit=RECENT_FIRES)
    return [ScheduleOut.of(schedule, recent.get(schedule.id, [])) for schedule in schedules]


async def change(
    session: AsyncSession,
    settings: Settings,
    schedule_id: str,
    patch: SchedulePatch,
    *,
    targets: TargetResolver,
) -> Schedule:
    """Apply the fields given. A new cron, timezone or a schedule enabled again fires from now on (fire
    times passed meanwhile are not made up); disabled, it stops at once."""
    repository = ScheduleRepository(session)
    schedule = await get(session, schedule_id)
    changes = patch.model_dump(exclude_unset=True)
    for field, value in changes.items():
        if value is None:
            raise InvalidRequest(f"{field}: must not be null (leave it out to keep it)")
    name = patch.name or schedule.name
    cron = parse_cron(patch.cron or schedule.cron, patch.timezone or schedule.timezone)
    if patch.job is not None or patch.name is not None:
        # The run's body, and its labels (they carry the name), as a fire would build them.
        request = patch.job or _stored_request(schedule)
        await scheduled_run(settings, request, schedule, targets=targets, name=name)
    if patch.name is not None:
        await _name_free(repository, patch.name, but=schedule.id)
        schedule.name = patch.name
    if patch.job is not None:
        schedule.job = patch.job.model_dump(mode="json")
    if patch.overlap is not None:
        schedule.overlap = patch.overlap
    retimed = patch.cron is not None or patch.timezone is not None
    schedule.cron, schedule.timezone = cron.expression, cron.timezone.key
    was_enabled = schedule.enabled
    if patch.enabled is not None:
        schedule.enabled = patch.enabled
    if not schedule.enabled:
        schedule.next_fire_at = None
    elif retimed or not was_enabled or schedule.next_fire_at is None:
        schedule.next_fire_at = _first_fire(cron)
    schedule.updated_at = utcnow()
    try:
        await session.commit()
    except IntegrityError:
        await session.rollback()
        await _name_free(repository, name, but=schedule_id)
        raise
    return schedule


async def delete(session: AsyncSession, schedule_id: str) -> None:
    """The schedule stops at once; the jobs it started stay."""
    if not await ScheduleRepository(session).delete(schedule_id):
        raise NotFound(f"no schedule {schedule_id}")
    await session.commit()


async def fires(session: AsyncSession, schedule_id: str, *, limit: int, before: int | None) -> FirePage:
    schedule = await get(session, schedule_id)
    rows: list[ScheduleFire] = await ScheduleRepository(session).fires(
        schedule_id, limit=limit + 1, before=before
    )
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return FirePage(items=fires_out(schedule, rows[:limit]), next_cursor=next_cursor)
