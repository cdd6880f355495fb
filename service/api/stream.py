"""/api/v1/jobs/{id}/stream: a job's events as Server-Sent Events, replayed then live."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import BaseModel, Field
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from service.api.auth import ReadAccess
from service.api.deps import JobId, SessionDep, SettingsDep
from service.errors import InvalidRequest, TooManyRequests
from service.jobs import service as jobs
from service.jobs.follow import FollowTiming, JobEnd, follow_job
from service.live.hub import LiveHub

router = APIRouter(prefix="/api/v1")


class StreamAllowance:
    """Streams each token holds open in this API process, `limit` at most: a reader's stream costs the API
    a task and a share of its live read loop for as long as the reader stays."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: collections.Counter[str] = collections.Counter()

    def take(self, token_name: str) -> Callable[[], None]:
        """Count one more stream of this token (TooManyRequests beyond the limit); returns its release."""
        if self._open[token_name] >= self.limit:
            raise TooManyRequests(
                f"token {token_name!r} already holds {self.limit} open streams on this API process "
                "(MAX_STREAMS_PER_TOKEN): close one first"
            )
        self._open[token_name] += 1

        def release() -> None:
            self._open[token_name] -= 1
            if not self._open[token_name]:
                del self._open[token_name]

        return release


class _CountedStream(EventSourceResponse):
    """An event stream that gives its slot back however it ends, also when it never started."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


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
    job_id: JobId,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    principal: ReadAccess,
    after: Annotated[int, Query(ge=0, description="send events with seq > after")] = 0,
    last_event_id: Annotated[str | None, Header(description="resume after this seq; wins over after")] = None,
    brief: Annotated[
        bool, Query(description="leave out each event's `data` (for a reader that shows the output only)")
    ] = False,
) -> EventSourceResponse:
    """One message per event (`id: seq`, `event: name`, `data:` the /events item), replayed then live,
    then `event: end` with the finished job, then the response ends."""
    after = _resume_point(after, last_event_id)
    await jobs.get(session, job_id)
    # The request's session closes before the stream starts: readers never hold one while waiting.
    await session.close()
    hub: LiveHub = request.app.state.live
    timing = FollowTiming(recheck_s=settings.stream_recheck_interval, poll_s=settings.stream_poll_interval)
    allowance: StreamAllowance = request.app.state.stream_allowance
    release = allowance.take(principal.name)

    async def messages() -> AsyncIterator[ServerSentEvent]:
        followed = follow_job(
            request.app.state.sessions, hub, job_id, after=after, timing=timing, brief=brief
        )
        async for item in followed:
            if isinstance(item, JobEnd):
                yield ServerSentEvent(data=item.job.model_dump_json(), event="end")
            else:
                data = item.brief if brief else item.data
                yield ServerSentEvent(data=data, event=item.event, id=str(item.seq))

    return _CountedStream(messages(), ping=settings.stream_keepalive, sep="\n", release=release)


class StreamStats(BaseModel):
    readers: int = Field(description="open streams in this API process")
    followed: int = Field(description="jobs whose live output this API process follows")
    read_loops: int = Field(
        description="Redis read loops in this API process (one, while anything is followed)"
    )
    tasks: int = Field(description="asyncio tasks in this API process")


@router.get("/streams", response_model=StreamStats, tags=["jobs"])
async def stream_stats(request: Request, _: ReadAccess) -> StreamStats:
    """What this API process spends on live output: readers, shared read loops, tasks."""
    hub: LiveHub = request.app.state.live
    return StreamStats(
        readers=hub.readers, followed=hub.followed, read_loops=hub.read_loops, tasks=len(asyncio.all_tasks())
    )
