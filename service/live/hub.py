"""The API's side of live output: `LiveHub`, one read loop per API process over the Redis streams of every
followed job (service/live/publish.py writes them), fanned out to each job's readers."""

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

import structlog
from redis.asyncio import BlockingConnectionPool, Redis

from service.config import Settings
from service.faults import REDIS_UNAVAILABLE, Backoff
from service.jobs.schemas import EventOut
from service.live.publish import END_EVENT, stream_key

log = structlog.get_logger(__name__)

# The API's connections for live output, however many streams it serves: one for the read loop's blocking
# XREAD, one for everything else (start positions, waking the read loop).
LIVE_CONNECTIONS = 2


def create_live_redis(settings: Settings) -> Redis:
    """The API's client for following streams: `LIVE_CONNECTIONS` at most, named for `CLIENT LIST`."""
    pool = BlockingConnectionPool.from_url(
        settings.require_redis_url(),
        max_connections=LIVE_CONNECTIONS,
        socket_connect_timeout=2,
        client_name=f"ars-live-{os.getpid()}",
    )
    return Redis.from_pool(pool)


@dataclass(frozen=True)
class LiveEvent:
    """One stored event as a stream reader sends it: `data` is the JSON of the /events item; `brief` the same
    without its `data` field (for readers that show the output only)."""

    seq: int
    event: str
    data: str
    brief: str


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
    return LiveEvent(
        seq=item.seq,
        event=item.event,
        data=item.model_dump_json(),
        brief=item.model_dump_json(exclude={"data"}),
    )


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
        self.key = stream_key(job_id)
        self.subscribers: set[Subscription] = set()
        # Where the read loop reads on from; None while unknown (Redis unavailable).
        self.position: str | None = None
        # False while Redis cannot be read: readers poll the database.
        self.healthy = True
        self.ended = False
        # Set once the read position is known (or Redis found unavailable): subscribers wait for it.
        self.started = asyncio.Event()


class LiveHub:
    """Follows the Redis streams of every followed job with one read loop per API process, fanned out to
    each job's readers.

    The loop blocks in one XREAD over all followed streams and a wake-up stream of its own; a new stream
    joins by a wake-up entry. With a pool of `LIVE_CONNECTIONS`, an API process holds that many Redis
    connections for live output whatever the number of streams. A reader first subscribes, then replays
    from the database, then takes live items (dropping those it already has, filling gaps from the
    database). Every entry added after `subscribe()` returns reaches the subscription, and everything added
    before was stored before: nothing falls between the two.
    """

    def __init__(self, redis: Redis, *, block_ms: int = 5000, max_pending: int = 1000) -> None:
        self._redis = redis
        self._block_ms = block_ms
        self._max_pending = max_pending
        self._channels: dict[str, _Channel] = {}
        self._wake_key = f"ars:live:wake:{uuid.uuid4().hex}"
        self._wake_position = "0-0"
        self._task: asyncio.Task[None] | None = None

    @property
    def readers(self) -> int:
        return sum(len(channel.subscribers) for channel in self._channels.values())

    @property
    def followed(self) -> int:
        return len(self._channels)

    @property
    def read_loops(self) -> int:
        return int(self._task is not None and not self._task.done())

    @contextlib.asynccontextmanager
    async def subscribe(self, job_id: str) -> AsyncIterator[Subscription]:
        channel = self._channels.get(job_id)
        created = channel is None
        if channel is None:
            channel = self._channels[job_id] = _Channel(job_id)
        subscription = Subscription(channel, self._max_pending)
        channel.subscribers.add(subscription)
        try:
            if created:
                try:
                    await self._start_position(channel)
                finally:
                    channel.started.set()
                await self._wake()
            await channel.started.wait()
            yield subscription
        finally:
            channel.subscribers.discard(subscription)
            if not channel.subscribers and self._channels.get(job_id) is channel:
                del self._channels[job_id]
                if not self._channels:
                    self._stop()

    async def close(self) -> None:
        self._channels.clear()
        task = self._task
        self._stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    def _stop(self) -> None:
        """End the read loop (nothing is followed): its blocking read gives its connection back."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()

    async def _wake(self) -> None:
        """Make the read loop (start it, or) issue its XREAD again with the streams followed now."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._read_loop(), name="live")
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"": ""}, maxlen=1)
                # Left behind by an API process that stops: gone within the hour.
                pipe.expire(self._wake_key, 3600)
                await pipe.execute()
        except REDIS_UNAVAILABLE as exc:
            log.warning("live read loop not woken, it looks again within its block time", error=str(exc))

    async def _start_position(self, channel: _Channel) -> None:
        """Read on from the newest entry: whatever came before it is in the database already."""
        try:
            newest = await self._redis.xrevrange(channel.key, count=1)
        except REDIS_UNAVAILABLE as exc:
            log.warning("live stream unavailable, readers poll the database", error=str(exc))
            channel.healthy = False
            return
        channel.position = newest[0][0].decode() if newest else "0-0"

    async def _restart_positions(self, channels: list[_Channel]) -> None:
        """After Redis was unavailable: read on from each stream's newest entry, and have the readers re-read
        the database for what came and went meanwhile. Raises while Redis is still unavailable."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.xrevrange(channel.key, count=1)
            replies = await pipe.execute()
        for channel, newest in zip(channels, replies, strict=True):
            channel.position = newest[0][0].decode() if newest else "0-0"
            channel.healthy = True
            for subscription in channel.subscribers:
                subscription.fall_behind()

    async def _read_loop(self) -> None:
        backoff = Backoff()
        while self._channels:
            try:
                # A channel still starting gets its position from its first subscriber.
                lost = [c for c in self._channels.values() if c.started.is_set() and c.position is None]
                if lost:
                    await self._restart_positions(lost)
                followed = {c.key: c for c in self._channels.values() if c.position and not c.ended}
                streams = {self._wake_key: self._wake_position} | {
                    key: str(channel.position) for key, channel in followed.items()
                }
                reply = await self._redis.xread(streams, count=500, block=self._block_ms)  # type: ignore[arg-type]
            except REDIS_UNAVAILABLE as exc:
                if not backoff.waited:
                    log.warning("live stream read failed, readers poll the database", error=str(exc))
                for channel in self._channels.values():
                    if channel.healthy or channel.position is not None:
                        channel.healthy = False
                        channel.position = None
                        for subscription in channel.subscribers:
                            subscription.fall_behind()
                await backoff.sleep()
                continue
            backoff.reset()
            for key, entries in reply or []:
                position = entries[-1][0].decode()
                if key.decode() == self._wake_key:
                    self._wake_position = position
                    continue
                channel = followed[key.decode()]
                channel.position = position
                items = [_decode_entry(entry_id, fields) for entry_id, fields in entries]
                for subscription in channel.subscribers:
                    subscription.push(items)
                channel.ended = isinstance(items[-1], LiveEnd)
