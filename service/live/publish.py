"""What the service says in Redis once a change of a job is committed (service/jobs/lifecycle.py): the
job's new version token, its newly stored events on its live stream, the end of its run.

The stream is only for readers following a run as it happens; the database is the record. Entry ids are
``<seq>-1`` so a reader can resume from any sequence number with XREAD; the end marker is
``<last seq + 1>-0``. The version token is a random value replaced after every committed change of the job's
row: the API keeps a job's JSON under the token it read it with (service/jobs/views.py); a token that expired
is replaced by the next reader, so its lifetime only bounds Redis' memory.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

END_EVENT = "end"
_VERSION_TTL_S = 3600


def stream_key(job_id: str) -> str:
    return f"ars:job:{job_id}:events"


def version_key(job_id: str) -> str:
    return f"ars:job:{job_id}:version"


def encode_event(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


@dataclass
class Announcements:
    """What one committed transaction has to say, sent in one round trip by `announce`."""

    changed: list[str] = field(default_factory=list)
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # job id → the seq of its last stored event
    ended: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.changed or self.events or self.ended)


async def announce(redis: Redis, announcements: Announcements, *, maxlen: int, ttl: int) -> None:
    """New version tokens first, then events, then end markers: a reader who saw an end (or an event) and
    then GETs the job is never answered from a copy kept before the change."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in dict.fromkeys(announcements.changed):
            pipe.set(version_key(job_id), uuid.uuid4().hex, ex=_VERSION_TTL_S)
        for job_id, events in announcements.events.items():
            key = stream_key(job_id)
            for event in events:
                pipe.xadd(
                    key,
                    {"event": event["event"], "data": encode_event(event)},
                    id=f"{event['seq']}-1",
                    maxlen=maxlen,
                    approximate=True,
                )
        for job_id, last_seq in announcements.ended.items():
            key = stream_key(job_id)
            pipe.xadd(key, {"event": END_EVENT, "data": "{}"}, id=f"{last_seq + 1}-0")
            # Readers stop following at the end; the stream then only serves late readers for a while.
            pipe.expire(key, ttl)
        await pipe.execute()


async def publish_events(redis: Redis, job_id: str, events: Sequence[dict[str, Any]], *, maxlen: int) -> None:
    """Stored events of one job on its stream, as the lifecycle announces them (for tools and tests)."""
    await announce(
        redis, Announcements(changed=[job_id], events={job_id: list(events)}), maxlen=maxlen, ttl=0
    )


async def publish_end(redis: Redis, job_id: str, last_seq: int, *, ttl: int) -> None:
    """The end of one job's run, as the lifecycle announces it (for tools and tests)."""
    await announce(redis, Announcements(changed=[job_id], ended={job_id: last_seq}), maxlen=0, ttl=ttl)
