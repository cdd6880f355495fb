"""The bodies and answers of /api/v1/schedules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.jobs.schemas import JobRequest, as_utc
from service.models import Schedule, ScheduleFire
from service.schedules.times import Cron, ScheduleTimeError, iso_local

# Names are shown in the console, in metrics' labels and in the `schedule` label of each run.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9 _.:@-]{0,98}[A-Za-z0-9_.:@-])?\Z")
NAME_RULE = "1 to 100 letters, digits, spaces and _.:@- (not starting or ending with a space)"
# The label each run of a schedule carries, with the schedule's name.
SCHEDULE_LABEL = "schedule"

_STRICT = ConfigDict(extra="forbid", strict=True)

Name = Annotated[str, Field(min_length=1, max_length=100, description=f"unique; {NAME_RULE}")]
CronText = Annotated[
    str,
    Field(
        max_length=100,
        description="5 cron fields: minute hour day-of-month month day-of-week, e.g. `30 2 * * *`",
    ),
]
Timezone = Annotated[str, Field(max_length=64, description="an IANA timezone, e.g. `Europe/Berlin`")]
OverlapPolicy = Annotated[
    Literal["skip", "queue"],
    Field(description="`skip`: no run while the previous one is queued or running; `queue`: run anyway"),
]


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(NAME_RULE)
    return name


class ScheduleRequest(BaseModel):
    model_config = _STRICT

    name: Name
    cron: CronText
    timezone: Timezone = "UTC"
    job: JobRequest = Field(description="the body of `POST /api/v1/jobs`, checked the same way")
    enabled: bool = True
    overlap: OverlapPolicy = "skip"

    _name = field_validator("name")(_check_name)


class SchedulePatch(BaseModel):
    """Fields to change; the others stay as they are."""

    model_config = _STRICT

    name: Name | None = None
    cron: CronText | None = None
    timezone: Timezone | None = None
    job: JobRequest | None = None
    enabled: bool | None = None
    overlap: OverlapPolicy | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else _check_name(name)


class FireOut(BaseModel):
    id: int
    fire_at: str = Field(description="the fire time, in the schedule's timezone with its offset")
    outcome: str = Field(
        description="`queued` (job_id ran it), `skipped` (the previous run was still queued or running), "
        "`missed` (`count` fire times in a row, from fire_at, passed while no API process ran), `refused` "
        "(the job body no longer passes the service's checks; detail says why)"
    )
    count: int
    job_id: str | None
    detail: str | None
    recorded_at: datetime
    fired_by: str

    @classmethod
    def of(cls, fire: ScheduleFire, timezone: tzinfo) -> FireOut:
        return cls(
            id=fire.id or 0,
            fire_at=iso_local(as_utc(fire.fire_at), timezone),
            outcome=fire.outcome,
            count=fire.count,
            job_id=fire.job_id,
            detail=fire.detail,
            recorded_at=as_utc(fire.recorded_at),
            fired_by=fire.fired_by,
        )


class ScheduleOut(BaseModel):
    id: str
    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    enabled: bool
    overlap: str
    next_runs: list[str] = Field(
        description="the next five fire times in the schedule's timezone with its offset; empty while "
        "disabled"
    )
    recent_fires: list[FireOut] = Field(description="the latest fire times handled, newest first")
    created_at: datetime
    updated_at: datetime
    created_by: str | None

    @classmethod
    def of(cls, schedule: Schedule, fires: list[ScheduleFire]) -> ScheduleOut:
        cron = cron_of(schedule)
        next_runs = []
        if cron is not None and schedule.enabled and schedule.next_fire_at is not None:
            next_runs = [
                iso_local(run, cron.timezone) for run in cron.next_runs(as_utc(schedule.next_fire_at))
            ]
        return cls(
            id=schedule.id,
            name=schedule.name,
            cron=schedule.cron,
            timezone=schedule.timezone,
            job=schedule.job,
            enabled=schedule.enabled,
            overlap=schedule.overlap,
            next_runs=next_runs,
            recent_fires=fires_out(schedule, fires, cron),
            created_at=as_utc(schedule.created_at),
            updated_at=as_utc(schedule.updated_at),
            created_by=schedule.created_by,
        )


def cron_of(schedule: Schedule) -> Cron | None:
    """None when the machine's timezone data lost the schedule's zone (its fires say so)."""
    try:
        return Cron.parse(schedule.cron, schedule.timezone)
    except ScheduleTimeError:
        return None


def fires_out(schedule: Schedule, fires: list[ScheduleFire], cron: Cron | None = None) -> list[FireOut]:
    """Fire times in the schedule's timezone (UTC if the zone is lost)."""
    cron = cron or cron_of(schedule)
    timezone: tzinfo = UTC if cron is None else cron.timezone
    return [FireOut.of(fire, timezone) for fire in fires]


class ScheduleList(BaseModel):
    items: list[ScheduleOut]


class FirePage(BaseModel):
    items: list[FireOut]
    next_cursor: int | None = Field(description="pass as `before` for the next page; null on the last")
