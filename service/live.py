"""Live output: the worker appends each stored batch of events to a Redis stream per job.

The stream is only for readers following a run as it happens; the database is the record. Entry ids are
``<seq>-1`` so a reader can resume from any sequence number with XREAD.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

END_EVENT = "end"


def stream_key(job_id: str) -> str:
    return f"ars:job:{job_id}:events"


def encode_event(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


async def publish_events(redis: Redis, job_id: str, events: Sequence[dict[str, Any]], *, maxlen: int) -> None:
    key = stream_key(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        for event in events:
            pipe.xadd(
                key,
                {"event": event["event"], "data": encode_event(event)},
                id=f"{event['seq']}-1",
                maxlen=maxlen,
                approximate=True,
            )
        await pipe.execute()


async def publish_end(redis: Redis, job_id: str, final_seq: int, *, ttl: int) -> None:
    """Mark the end of a run: readers stop following; the stream expires after `ttl` seconds."""
    key = stream_key(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"event": END_EVENT, "data": "{}"}, id=f"{final_seq + 1}-0")
        pipe.expire(key, ttl)
        await pipe.execute()
