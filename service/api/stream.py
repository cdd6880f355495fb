"""/api/v1/jobs/{id}/stream: a job's events as Server-Sent Events, replayed then live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent

from service.api.auth import ReadAccess
from service.api.deps import SessionDep, SettingsDep
from service.errors import InvalidRequest
from service.jobs import service as jobs
from service.jobs.follow import FollowTiming, JobEnd, follow_job
from service.live import LiveHub

router = APIRouter(prefix="/api/v1")


def _resume_point(after: int, last_event_id: str | None) -> int:
    # A reconnecting EventSource sends Last-Event-ID with its original URL: the header is the newer fact.
    if last_event_id is None:
        return after
    if not last_event_id.isdigit():
        raise InvalidRequest(f"Last-Event-ID: expected the seq of an event, got {last_event_id[:40]!r}")
    return int(last_event_id)


@router.get(
    "/jobs/{job_id}/stream",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    tags=["jobs"],
)
async def stream_job(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    _: ReadAccess,
    after: Annotated[int, Query(ge=0, description="send events with seq > after")] = 0,
    last_event_id: Annotated[str | None, Header(description="resume after this seq; wins over after")] = None,
) -> EventSourceResponse:
    """One message per event (`id: seq`, `event: name`, `data:` the /events item), replayed then live,
    then `event: end` with the finished job, then the response ends."""
    after = _resume_point(after, last_event_id)
    await jobs.get(session, job_id)
    # The request's session closes before the stream starts: readers never hold one while waiting.
    await session.close()
    hub: LiveHub = request.app.state.live
    timing = FollowTiming(recheck_s=settings.stream_recheck_interval, poll_s=settings.stream_poll_interval)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        async for item in follow_job(request.app.state.sessions, hub, job_id, after=after, timing=timing):
            if isinstance(item, JobEnd):
                yield ServerSentEvent(data=item.job.model_dump_json(), event="end")
            else:
                yield ServerSentEvent(data=item.data, event=item.event, id=str(item.seq))

    return EventSourceResponse(messages(), ping=settings.stream_keepalive, sep="\n")


class StreamStats(BaseModel):
    readers: int = Field(description="open streams in this API process")
    read_loops: int = Field(description="Redis read loops (one per followed job) in this API process")
    tasks: int = Field(description="asyncio tasks in this API process")


@router.get("/streams", response_model=StreamStats, tags=["jobs"])
async def stream_stats(request: Request, _: ReadAccess) -> StreamStats:
    """What this API process spends on live output: readers, shared read loops, tasks."""
    hub: LiveHub = request.app.state.live
    return StreamStats(readers=hub.readers, read_loops=hub.read_loops, tasks=len(asyncio.all_tasks()))
