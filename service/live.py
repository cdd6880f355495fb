"""Live output: the worker appends each stored batch of events to a Redis stream per job.

The stream is only for readers following a run as it happens; the database is the record. Entry ids are
``<seq>-1`` so a reader can resume from any sequence number with XREAD. The API side is `LiveHub`: one
read loop per followed job, shared by all of that job's readers in the process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from service.config import Settings
from service.jobs.schemas import EventOut

log = structlog.get_logger(__name__)

END_EVENT = "end"


def create_live_redis(settings: Settings) -> Redis:
    """The API's client for following streams; its connections are named for `CLIENT LIST`."""
    client: Redis = Redis.from_url(
        settings.require_redis_url(), socket_connect_timeout=2, client_name=f"ars-live-{os.getpid()}"
    )
    return client


def stream_key(job_id: str) -> str:
    return f"ars:job:{job_id}:events"


# The version token of a job's row: a random value every writer of the row replaces once its change is
# committed. The API keeps a job's JSON under the token it was read with (service/jobs/views.py); a token
# that expired is replaced by the next reader, so its lifetime only bounds Redis' memory.
_VERSION_TTL_S = 3600


def version_key(job_id: str) -> str:
    return f"ars:job:{job_id}:version"


def _new_version(pipe: Pipeline, job_id: str) -> None:
    pipe.set(version_key(job_id), uuid.uuid4().hex, ex=_VERSION_TTL_S)


async def changed(redis: Redis, *job_ids: str) -> None:
    """Say that these jobs' rows changed (after the commit). A failure is logged: the API's kept copies
    are also bounded in age."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                _new_version(pipe, job_id)
            await pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("job change not announced", job_ids=job_ids, error=str(exc))


def encode_event(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), default=str)


async def publish_events(redis: Redis, job_id: str, events: Sequence[dict[str, Any]], *, maxlen: int) -> None:
    """Append stored events to the job's stream (and announce the job's new event count)."""
    key = stream_key(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        _new_version(pipe, job_id)
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
    """Mark the end of a run: readers stop following; the stream expires after `ttl` seconds.

    The job's final row was committed before: its new version is set first, so a reader who saw the end
    and then GETs the job is never answered from a copy kept before."""
    key = stream_key(job_id)
    async with redis.pipeline(transaction=False) as pipe:
        _new_version(pipe, job_id)
        pipe.xadd(key, {"event": END_EVENT, "data": "{}"}, id=f"{final_seq + 1}-0")
        pipe.expire(key, ttl)
        await pipe.execute()


@dataclass(frozen=True)
class LiveEvent:
    """One stored event as a stream reader sends it: `data` is the JSON of the /events item."""

    seq: int
    event: str
    data: str


@dataclass(frozen=True)
class LiveEnd:
    """The worker's end marker: every event up to `last_seq` is stored and the job is finished."""

    last_seq: int


LiveItem = LiveEvent | LiveEnd


def _decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> LiveItem:
    seq = int(entry_id.split(b"-", 1)[0])
    if fields.get(b"event") == END_EVENT.encode():
        return LiveEnd(last_seq=seq - 1)
    raw = json.loads(fields[b"data"])
    # The worker writes the stored row; readers get exactly what GET /events returns for it.
    raw["created"] = datetime.fromisoformat(raw["created"]).replace(tzinfo=UTC)
    item = EventOut.model_validate(raw)
    return LiveEvent(seq=item.seq, event=item.event, data=item.model_dump_json())


class Subscription:
    """One reader's view of a job's stream: items in order, or a hint to catch up from the database.

    The hub never waits for a reader: a reader that falls `max_pending` items behind loses its queue and
    is told to catch up (`next()` returns None), as it is when Redis was unavailable.
    """

    def __init__(self, channel: _Channel, max_pending: int) -> None:
        self._channel = channel
        self._max_pending = max_pending
        self._items: collections.deque[LiveItem] = collections.deque()
        self._wake = asyncio.Event()
        self._behind = False

    @property
    def degraded(self) -> bool:
        """True while Redis cannot be read: the reader has to poll the database."""
        return not self._channel.healthy

    def push(self, items: Sequence[LiveItem]) -> None:
        if len(self._items) + len(items) > self._max_pending:
            self._items.clear()
            self._behind = True
        else:
            self._items.extend(items)
        self._wake.set()

    def fall_behind(self) -> None:
        self._behind = True
        self._wake.set()

    async def next(self, wait_s: float) -> LiveItem | None:
        """The next item; None after `wait_s` s or when the reader must catch up from the database."""
        if not self._items and not self._behind:
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
        if self._behind:
            self._behind = False
            self._items.clear()
            return None
        return self._items.popleft() if self._items else None


class _Channel:
    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.subscribers: set[Subscription] = set()
        self.healthy = True
        self.position: str | None = None
        # Set once the read position is known (or Redis found unavailable): subscribers wait for it.
        self.started = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class LiveHub:
    """Follows each job's Redis stream with one read loop per API process, fanned out to its readers.

    A reader first subscribes, then replays from the database, then takes live items (dropping those it
    already has, filling gaps from the database). Every entry added after `subscribe()` returns reaches
    the subscription, and everything added before was stored before: nothing falls between the two.
    """

    def __init__(self, redis: Redis, *, block_ms: int = 5000, max_pending: int = 1000) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._max_pending = max_pending
        self._channels: dict[str, _Channel] = {}

    @property
    def readers(self) -> int:
        return sum(len(channel.subscribers) for channel in self._channels.values())

    @property
    def read_loops(self) -> int:
        return sum(1 for channel in self._channels.values() if channel.task and not channel.task.done())

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        channel = self._channels.get(job_id)
        if channel is None:
            channel = self._channels[job_id] = _Channel(job_id)
            channel.task = asyncio.create_task(self._read_loop(channel), name=f"live:{job_id}")
        subscription = Subscription(channel, self._max_pending)
        channel.subscribers.add(subscription)
        try:
            await channel.started.wait()
            yield subscription
        finally:
            channel.subscribers.discard(subscription)
            if not channel.subscribers and self._channels.get(job_id) is channel:
                del self._channels[job_id]
                if channel.task is not None:
                    channel.task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await channel.task

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        for channel in channels:
            if channel.task is not None:
                channel.task.cancel()
        await asyncio.gather(*(c.task for c in channels if c.task is not None), return_exceptions=True)

    async def _start_position(self, channel: _Channel) -> None:
        """Read on from the newest entry: whatever came before it is in the database already."""
        try:
            newest = await self._redis.xrevrange(stream_key(channel.job_id), count=1)
        except (RedisError, OSError) as exc:
            log.warning("live stream unavailable, readers poll the database", error=str(exc))
            channel.healthy = False
            return
        channel.position = newest[0][0].decode() if newest else "0-0"
        channel.healthy = True

    async def _read_loop(self, channel: _Channel) -> None:
        key = stream_key(channel.job_id)
        try:
            await self._start_position(channel)
        finally:
            channel.started.set()
        delay = 0.1
        while True:
            if channel.position is None:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                await self._start_position(channel)
                if channel.healthy:
                    # Entries may have come and gone while Redis was away: readers re-read the database.
                    for subscription in channel.subscribers:
                        subscription.fall_behind()
                continue
            try:
                reply = await self._redis.xread({key: channel.position}, count=500, block=self._block_ms)
            except (RedisError, OSError) as exc:
                log.warning("live stream read failed, readers poll the database", error=str(exc))
                channel.healthy = False
                channel.position = None
                for subscription in channel.subscribers:
                    subscription.fall_behind()
                continue
            delay = 0.1
            if not reply:
                continue
            entries = reply[0][1]
            channel.position = entries[-1][0].decode()
            items = [_decode_entry(entry_id, fields) for entry_id, fields in entries]
            for subscription in channel.subscribers:
                subscription.push(items)
            if isinstance(items[-1], LiveEnd):
                return
