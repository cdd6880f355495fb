"""`GET /api/v1/jobs/{id}` answered from memory while the job has not changed.

The API keeps the JSON of the jobs it was asked for under each job's version token: a random value in
Redis (`service.live.publish.version_key`) replaced after every committed change of the job's row (the job
lifecycle announces it, service/jobs/lifecycle.py).
A GET reads the token, one Redis round trip, and answers with the kept JSON only if it was read under that
same token; otherwise it reads the row and keeps it under the token. A token read before a change is
replaced only after it, so a kept copy is never older than the token it is served under.

Reading the row costs the API several times what a Redis GET does (bench/README.md), and pollers of one job
are the common load. When Redis does not answer, GETs read the database (for
`_REDIS_PAUSE_S` before asking Redis again). A copy is also dropped after `_MAX_AGE_S`: a writer that could
not reach Redis after its commit leaves its change unseen for that long at most.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass

from prometheus_client import Counter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.faults import REDIS_UNAVAILABLE
from service.jobs import service as jobs
from service.live.publish import version_key

_MAX_AGE_S = 5.0
# After Redis failed to answer, GETs go straight to the database for this long: a Redis that times out
# rather than refuses must not add its connect timeout to every GET.
_REDIS_PAUSE_S = 5.0


@dataclass(frozen=True)
class _Kept:
    version: bytes
    body: bytes
    read_at: float


class JobViews:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], redis: Redis, size: int, reads: Counter
    ) -> None:
        """`size` copies at most, least recently read dropped first; 0 reads the database every time."""
        self._sessions = sessions
        self._redis = redis
        self._size = size
        self._kept: collections.OrderedDict[str, _Kept] = collections.OrderedDict()
        self._from_memory = reads.labels(source="memory")
        self._from_database = reads.labels(source="database")
        self._redis_failed_at = float("-inf")

    async def get(self, job_id: str) -> bytes:
        """The job's JSON (as JobOut); NotFound for an unknown job."""
        version = await self._version(job_id) if self._size else None
        if version is not None:
            kept = self._kept.get(job_id)
            if kept is not None and kept.version == version and time.monotonic() - kept.read_at < _MAX_AGE_S:
                self._kept.move_to_end(job_id)
                self._from_memory.inc()
                return kept.body
        self._from_database.inc()
        read_at = time.monotonic()
        async with self._sessions() as session:
            body = (await jobs.view(session, job_id)).model_dump_json().encode()
        if version is not None:
            self._kept[job_id] = _Kept(version, body, read_at)
            self._kept.move_to_end(job_id)
            if len(self._kept) > self._size:
                self._kept.popitem(last=False)
        return body

    async def _version(self, job_id: str) -> bytes | None:
        """The job's current token; a job without one (never changed since Redis started) gets one."""
        if time.monotonic() - self._redis_failed_at < _REDIS_PAUSE_S:
            return None
        key = version_key(job_id)
        try:
            version: bytes | None = await self._redis.get(key)
            if version is None:
                fresh = uuid.uuid4().hex.encode()
                # NX: a writer's token set meanwhile wins, and is read back. It lives no longer than a copy
                # kept under it may be served: GETs of unknown ids leave nothing behind for long.
                if await self._redis.set(key, fresh, nx=True, ex=int(_MAX_AGE_S)):
                    return fresh
                version = await self._redis.get(key)
            return version
        except REDIS_UNAVAILABLE:
            self._redis_failed_at = time.monotonic()
            return None
