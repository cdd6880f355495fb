"""/api/v1/schedules: runs started by cron expressions in a timezone (service/schedules).

Reading takes the `read` scope (the runs a schedule starts are readable with it too); creating, changing
and deleting take `run`, as submitting a run does."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response

from service.api.auth import ReadAccess, RunAccess
from service.api.deps import UUID_PATTERN, SessionDep, SettingsDep, TargetsDep
from service.schedules import service as schedules
from service.schedules.scheduler import Scheduler
from service.schedules.schemas import FirePage, ScheduleList, ScheduleOut, SchedulePatch, ScheduleRequest

router = APIRouter(prefix="/api/v1/schedules", tags=["schedules"])

ScheduleId = Annotated[
    str, Path(description="the schedule's id (a UUID)", max_length=36, pattern=UUID_PATTERN)
]


def _wake(request: Request) -> None:
    scheduler: Scheduler = request.app.state.scheduler
    scheduler.wake()


@router.post("", status_code=201, response_model=ScheduleOut)
async def create_schedule(
    body: ScheduleRequest,
    request: Request,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    targets: TargetsDep,
    principal: RunAccess,
) -> ScheduleOut:
    """A schedule; its runs are submitted in the name of the token that created it. The job body is
    checked as `POST /jobs` checks it (422, nothing stored)."""
    schedule = await schedules.create(session, settings, body, principal.name, targets=targets)
    _wake(request)
    response.headers["Location"] = f"/api/v1/schedules/{schedule.id}"
    return await schedules.view(session, schedule)


@router.get("", response_model=ScheduleList)
async def list_schedules(session: SessionDep, _: ReadAccess) -> ScheduleList:
    """Every schedule, by name, with its next fire times and its latest fires."""
    return ScheduleList(items=await schedules.list_all(session))


@router.get("/{schedule_id}", response_model=ScheduleOut)
async def get_schedule(schedule_id: ScheduleId, session: SessionDep, _: ReadAccess) -> ScheduleOut:
    return await schedules.view(session, await schedules.get(session, schedule_id))


@router.patch("/{schedule_id}", response_model=ScheduleOut)
async def change_schedule(
    schedule_id: ScheduleId,
    body: SchedulePatch,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    targets: TargetsDep,
    _: RunAccess,
) -> ScheduleOut:
    """Change the fields given. `"enabled": false` stops it at once; enabled again, or with a new cron or
    timezone, it fires from now on."""
    schedule = await schedules.change(session, settings, schedule_id, body, targets=targets)
    _wake(request)
    return await schedules.view(session, schedule)


@router.delete("/{schedule_id}", status_code=204, response_class=Response)
async def delete_schedule(schedule_id: ScheduleId, session: SessionDep, _: RunAccess) -> Response:
    """The schedule and the record of its fires; the jobs it started stay."""
    await schedules.delete(session, schedule_id)
    return Response(status_code=204)


@router.get("/{schedule_id}/fires", response_model=FirePage)
async def schedule_fires(
    schedule_id: ScheduleId,
    session: SessionDep,
    _: ReadAccess,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="a next_cursor")] = None,
) -> FirePage:
    """What became of each fire time, newest first."""
    return await schedules.fires(session, schedule_id, limit=limit, before=before)
