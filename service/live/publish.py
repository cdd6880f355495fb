"""What the service says in Redis once a change of a job is committed (service/jobs/lifecycle.py): the
job's new version token, the job list's new version token, its newly stored events on its live stream, the
end of its run.

The stream is only for readers following a run as it happens; the database is the record. Entry ids are
``<seq>-1`` so a reader can resume from any sequence number with XREAD; the end marker is
``<last seq + 1>-0``. The version token is a random value replaced after every committed change of the job's
row or its events: the API keeps a job's JSON and its pages of events under the token it read them with
(service/jobs/views.py); a token that expired is replaced by the next reader, so its lifetime only bounds
Redis' memory. A deleted job's token starts with `DELETED`: a page of events that can no longer change is
kept across the job's other changes, not across its deletion. The list token, one per deployment (its
QUEUE_NAME), is replaced after every committed change that `GET /jobs` shows: a submit, a change of a job's
row, a deletion.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

END_EVENT = "end"
DELETED = b"deleted-"
VERSION_TTL_S = 3600


def stream_key(job_id: str) -> str:
    return f"ars:job:{job_id}:events"


def version_key(job_id: str) -> str:
    return f"ars:job:{job_id}:version"


def list_version_key(queue_name: str) -> str:
    """The job list's token: per deployment, as two deployments sharing a Redis have a queue each."""
    return f"{queue_name}:jobs:version"


def encode_event(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


@dataclass
class Announcements:
    """What one committed transaction has to say, sent in one round trip by `announce`."""

    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    # GET /jobs shows a change: the list token of `announce`'s `list_key` is replaced.
    listed: bool = False
    events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # job id → the seq of its last stored event
    ended: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.changed or self.deleted or self.listed or self.events or self.ended)


async def announce(
    redis: Redis, announcements: Announcements, *, maxlen: int, ttl: int, list_key: str | None
) -> None:
    """New version tokens first, then events, then end markers: a reader who saw an end (or an event) and
    then GETs the job, its events or the list is never answered from a copy kept before the change.
    `list_key`: the deployment's list token (list_version_key), replaced when `listed`; None for a tool
    that announces no change of the list."""
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in dict.fromkeys(announcements.changed):
            pipe.set(version_key(job_id), uuid.uuid4().hex, ex=VERSION_TTL_S)
        # After `changed`: a job changed and deleted in one transaction is deleted.
        for job_id in dict.fromkeys(announcements.deleted):
            pipe.set(version_key(job_id), DELETED + uuid.uuid4().hex.encode(), ex=VERSION_TTL_S)
        if announcements.listed and list_key is not None:
            pipe.set(list_key, uuid.uuid4().hex, ex=VERSION_TTL_S)
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
        redis,
        Announcements(changed=[job_id], events={job_id: list(events)}),
        maxlen=maxlen,
        ttl=0,
        list_key=None,
    )


async def publish_end(redis: Redis, job_id: str, last_seq: int, *, ttl: int) -> None:
    """The end of one job's run, as the lifecycle announces it (for tools and tests)."""
    await announce(
        redis, Announcements(changed=[job_id], ended={job_id: last_seq}), maxlen=0, ttl=ttl, list_key=None
    )
