"""Reads of jobs answered from memory while what they show is unchanged: `GET /api/v1/jobs/{id}`, a job's
pages of events (`GET /jobs/{id}/events`) and pages of the list (`GET /jobs`).

The API keeps each answer under a version token in Redis (service.live.publish) that the job lifecycle
(service/jobs/lifecycle.py) replaces after every committed change the answer shows: the job's own token for
the job and its events (every stored batch of events is such a change), the deployment's list token for the
list. A GET reads the token, one Redis round trip, and answers with the kept JSON only if it was read under
that same token; otherwise it reads the database and keeps the answer under the token. A token read before
a change is replaced only after it, so a kept copy is never older than the token it is served under, and
every API process sees a change as soon as the one that made it announced it.

A full page of events (as many as asked for) no longer changes (service.jobs.service.event_page): it is
served across the job's other changes, a running job's next batches, but not once the job's token says it
was deleted.

Reading the row costs the API several times what a Redis GET does (bench/README.md), and pollers of one job
(or of the list, in the console) are the common load. When Redis does not answer, GETs read the database
(for `_REDIS_PAUSE_S` before asking Redis again). A copy is also dropped after `_MAX_AGE_S`: a writer that
could not reach Redis after its commit leaves its change unseen for that long at most.
"""

from __future__ import annotations

import collections
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.faults import REDIS_UNAVAILABLE
from service.jobs import service as jobs
from service.jobs.repository import JobFilters
from service.live.publish import DELETED, VERSION_TTL_S, list_version_key, version_key

_MAX_AGE_S = 5.0
# After Redis failed to answer, GETs go straight to the database for this long: a Redis that times out
# rather than refuses must not add its connect timeout to every GET.
_REDIS_PAUSE_S = 5.0
# Pages are larger than a job and their number is not bounded by the jobs': they are kept within a budget
# of bytes. A page larger than an eighth of it (a thousand large events) is read each time.
_PAGES_MAX_BYTES = 32 * 2**20
_PAGE_MAX_BYTES = _PAGES_MAX_BYTES // 8


def etag(body: bytes) -> str:
    """A strong ETag: a hash of the JSON, so every API process gives a page the same one."""
    return f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'


@dataclass(frozen=True)
class View:
    """A page's JSON and its ETag."""

    body: bytes
    etag: str


@dataclass(frozen=True)
class _Kept:
    version: bytes
    view: View
    read_at: float


@dataclass(frozen=True)
class _KeptPage:
    version: bytes
    view: View
    read_at: float
    # A full page of events: it outlives the job's changes, not its deletion.
    lasting: bool

    def serves(self, version: bytes, now: float) -> bool:
        if now - self.read_at >= _MAX_AGE_S:
            return False
        return version == self.version or (self.lasting and not version.startswith(DELETED))


class _Pages:
    """Kept pages, least recently read dropped first, within `_PAGES_MAX_BYTES` of JSON."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[Hashable, _KeptPage] = collections.OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable, version: bytes) -> View | None:
        kept = self._kept.get(key)
        if kept is None or not kept.serves(version, time.monotonic()):
            return None
        self._kept.move_to_end(key)
        return kept.view

    def keep(self, key: Hashable, page: _KeptPage) -> None:
        size = len(page.view.body)
        if size > _PAGE_MAX_BYTES:
            return
        replaced = self._kept.pop(key, None)
        if replaced is not None:
            self._bytes -= len(replaced.view.body)
        self._kept[key] = page
        self._bytes += size
        while self._bytes > _PAGES_MAX_BYTES:
            _, dropped = self._kept.popitem(last=False)
            self._bytes -= len(dropped.view.body)


class JobViews:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis,
        size: int,
        reads: Counter,
        page_reads: Counter,
        queue_name: str,
    ) -> None:
        """`size` job copies at most, least recently read dropped first; 0 reads the database every time
        (pages too). `queue_name`: the deployment's, whose list token the lifecycle replaces."""
        self._sessions = sessions
        self._list_key = list_version_key(queue_name)
        self._redis = redis
        self._size = size
        self._kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self._pages = _Pages()
        self._from_memory = reads.labels(source="memory")
        self._from_database = reads.labels(source="database")
        self._page_reads = page_reads
        self._redis_failed_at = float("-inf")

    async def get(self, job_id: str) -> View:
        """The job's JSON (as JobOut); NotFound for an unknown job."""
        version = await self._version(version_key(job_id), ttl=int(_MAX_AGE_S)) if self._size else None
        if version is not None:
            kept = self._kept.get(job_id)
            if kept is not None and kept.version == version and time.monotonic() - kept.read_at < _MAX_AGE_S:
                self._kept.move_to_end(job_id)
                self._from_memory.inc()
                return kept.view
        self._from_database.inc()
        read_at = time.monotonic()
        async with self._sessions() as session:
            body = (await jobs.view(session, job_id)).model_dump_json().encode()
        view = View(body, etag(body))
        if version is not None:
            self._kept[job_id] = _Kept(version, view, read_at)
            self._kept.move_to_end(job_id)
            if len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return view

    async def events(self, job_id: str, *, after: int, limit: int) -> View:
        """The job's events with seq > after (as EventPage); NotFound for an unknown job."""

        async def read(session: AsyncSession) -> tuple[bytes, bool]:
            return await jobs.event_page(session, job_id, after=after, limit=limit)

        key = ("events", job_id, after, limit)
        return await self._page("events", key, version_key(job_id), int(_MAX_AGE_S), read)

    async def job_list(self, filters: JobFilters, *, limit: int, cursor: str | None) -> View:
        """A page of the list (as JobPage)."""

        async def read(session: AsyncSession) -> tuple[bytes, bool]:
            return await jobs.job_page(session, filters, limit=limit, cursor=cursor), False

        key = (
            "list",
            tuple(filters.statuses),
            filters.playbook,
            tuple(filters.labels),
            filters.created_after,
            limit,
            cursor,
        )
        return await self._page("list", key, self._list_key, VERSION_TTL_S, read)

    async def _page(
        self,
        page: str,
        key: Hashable,
        token_key: str,
        ttl: int,
        read: Callable[[AsyncSession], Awaitable[tuple[bytes, bool]]],
    ) -> View:
        """A kept page while its token is unchanged, else `read` (its JSON, and whether it lasts)."""
        version = await self._version(token_key, ttl=ttl) if self._size else None
        if version is not None and (view := self._pages.get(key, version)) is not None:
            self._page_reads.labels(page=page, source="memory").inc()
            return view
        self._page_reads.labels(page=page, source="database").inc()
        read_at = time.monotonic()
        async with self._sessions() as session:
            body, lasting = await read(session)
        view = View(body, etag(body))
        if version is not None:
            self._pages.keep(key, _KeptPage(version, view, read_at, lasting=lasting))
        return view

    async def _version(self, key: str, *, ttl: int) -> bytes | None:
        """The current token; a key without one (nothing changed since Redis started) gets one."""
        if time.monotonic() - self._redis_failed_at < _REDIS_PAUSE_S:
            return None
        try:
            version: bytes | None = await self._redis.get(key)
            if version is None:
                fresh = uuid.uuid4().hex.encode()
                # NX: a writer's token set meanwhile wins, and is read back. A job's lives no longer than a
                # copy kept under it may be served: GETs of unknown ids leave nothing behind for long.
                if await self._redis.set(key, fresh, nx=True, ex=ttl):
                    return fresh
                version = await self._redis.get(key)
            return version
        except REDIS_UNAVAILABLE:
            self._redis_failed_at = time.monotonic()
            return None
