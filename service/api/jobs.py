"""/api/v1/jobs and /api/v1/playbooks: validate, call the domain, shape the response."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse

from service.ansi import strip_ansi
from service.api.auth import ReadAccess, RunAccess
from service.api.deps import JobId, LifecycleDep, SessionDep, SettingsDep, TargetsDep, ViewsDep
from service.errors import InvalidRequest, shown
from service.jobs import service as jobs
from service.jobs.repository import EventRepository, JobFilters
from service.jobs.schemas import (
    LABEL_KEY,
    EventPage,
    JobOut,
    JobPage,
    JobRequest,
    PlaybookList,
    PlaybookOut,
)
from service.jobs.views import View
from service.models import JobStatus
from service.sources.bundled import list_playbooks

router = APIRouter(prefix="/api/v1")

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}\Z")

IfNoneMatch = Annotated[
    str | None,
    Header(
        description="the ETag of an earlier answer of this page: 304, without a body, while it is current"
    ),
]
_NOT_MODIFIED: dict[int | str, dict[str, object]] = {
    304: {"description": "the page is as it was when it had the ETag given in If-None-Match"}
}


def not_modified(etag: str, if_none_match: str) -> bool:
    """If-None-Match holds `*` or our ETag (RFC 9110: a weak comparison, so `W/` is ignored)."""
    for candidate in if_none_match.split(","):
        tag = candidate.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _conditional(view: View, if_none_match: str | None) -> Response:
    headers = {"ETag": view.etag}
    if if_none_match is not None and not_modified(view.etag, if_none_match):
        return Response(status_code=304, headers=headers)
    return Response(view.body, media_type="application/json", headers=headers)


@router.post("/jobs", status_code=202, response_model=JobOut, tags=["jobs"])
async def submit_job(
    body: JobRequest,
    response: Response,
    session: SessionDep,
    lifecycle: LifecycleDep,
    targets: TargetsDep,
    settings: SettingsDep,
    principal: RunAccess,
    idempotency_key: Annotated[
        str | None,
        Header(description="a repeated request with the same key returns the first job instead of a new run"),
    ] = None,
) -> JobOut:
    """Queue a playbook run. The job is stored before it is queued: a 202 is never lost."""
    if idempotency_key is not None and not _IDEMPOTENCY_KEY.match(idempotency_key):
        raise InvalidRequest("Idempotency-Key: 1 to 255 printable characters without spaces")
    job, created = await jobs.submit(
        session, lifecycle, settings, body, idempotency_key, principal.name, targets=targets
    )
    response.headers["Location"] = f"/api/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.get("/jobs", response_model=JobPage, responses=_NOT_MODIFIED, tags=["jobs"])
async def list_jobs(
    views: ViewsDep,
    _: ReadAccess,
    status: Annotated[list[JobStatus] | None, Query(description="repeat for several")] = None,
    playbook: Annotated[str | None, Query(max_length=512)] = None,
    label: Annotated[
        list[str] | None, Query(max_length=32, description="`key=value`, repeat to require several")
    ] = None,
    created_after: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Jobs, newest first, a page at a time. With an ETag: a poller's If-None-Match is answered 304 while
    the page is unchanged."""
    labels = []
    for item in label or []:
        key, sep, value = item.partition("=")
        if not sep or not LABEL_KEY.match(key) or len(value) > 256:
            raise InvalidRequest(
                f"label: expected key=value (a value of 256 characters at most), got {shown(item)}"
            )
        labels.append((key, value))
    if created_after is not None and created_after.tzinfo is not None:
        created_after = created_after.astimezone(UTC).replace(tzinfo=None)
    filters = JobFilters(
        statuses=[s.value for s in status or []],
        playbook=playbook,
        labels=labels,
        created_after=created_after,
    )
    # The JSON of JobPage, from memory while no job changed (service/jobs/views.py).
    page = await views.job_list(filters, limit=limit, cursor=cursor)
    return _conditional(page, if_none_match)


@router.get("/jobs/{job_id}", response_model=JobOut, responses=_NOT_MODIFIED, tags=["jobs"])
async def get_job(
    job_id: JobId, views: ViewsDep, _: ReadAccess, if_none_match: IfNoneMatch = None
) -> Response:
    """The job. With an ETag, as the list."""
    # The JSON of JobOut, from memory while the job has not changed (service/jobs/views.py).
    return _conditional(await views.get(job_id), if_none_match)


@router.post("/jobs/{job_id}/cancel", status_code=202, response_model=JobOut, tags=["jobs"])
async def cancel_job(job_id: JobId, session: SessionDep, lifecycle: LifecycleDep, _: RunAccess) -> JobOut:
    """A queued job is canceled at once; a running one within about a second. 409 once finished."""
    return JobOut.of(await jobs.cancel(session, lifecycle, job_id))


@router.get("/jobs/{job_id}/events", response_model=EventPage, responses=_NOT_MODIFIED, tags=["jobs"])
async def job_events(
    job_id: JobId,
    views: ViewsDep,
    _: ReadAccess,
    after: Annotated[int, Query(ge=0, le=2**31 - 1, description="return events with seq > after")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    if_none_match: IfNoneMatch = None,
) -> Response:
    """Events in order, a page at a time. With an ETag, as the list."""
    # The JSON of EventPage, from memory while the job has not changed or the page is full.
    page = await views.events(job_id, after=after, limit=limit)
    return _conditional(page, if_none_match)


@router.get(
    "/jobs/{job_id}/stdout",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/plain": {}}}},
    tags=["jobs"],
)
async def job_stdout(
    job_id: JobId,
    request: Request,
    session: SessionDep,
    _: ReadAccess,
    ansi: Annotated[bool, Query(description="keep ANSI colour codes")] = False,
) -> StreamingResponse:
    """The whole output as ansible-playbook printed it."""
    await jobs.get(session, job_id)
    sessions = request.app.state.sessions

    async def chunks() -> AsyncIterator[str]:
        after = 0
        while True:
            # A short session per page: a long download never pins a connection.
            async with sessions() as page_session:
                page = await EventRepository(page_session).stdout_after(job_id, after, 1000)
            if not page:
                return
            after = page[-1][0]
            text = "".join(stdout.replace("\r\n", "\n") + "\n" for _, stdout in page if stdout)
            yield text if ansi else strip_ansi(text)

    return StreamingResponse(chunks(), media_type="text/plain; charset=utf-8")


@router.get("/playbooks", response_model=PlaybookList, tags=["playbooks"])
async def playbooks(settings: SettingsDep, _: ReadAccess) -> PlaybookList:
    """Playbooks bundled with the service, to run with `{"source": {"type": "bundled"}}`."""
    found = list_playbooks(settings.playbooks_dir)
    return PlaybookList(items=[PlaybookOut(path=path, name=name) for path, name in found])
