"""What counts as a passing fault of the database or Redis, and the one way to wait one out.

A fault is transient when a later attempt of the same operation can get past it without anyone changing
anything: the server restarts, is unreachable for a moment, has no connection left, or picked this
transaction as a deadlock victim. Everything else the database says (a missing table or column, a value too
long for its column, a constraint) is permanent: retrying it only hides a bug or a broken schema, for
minutes, behind "the database was unreachable".
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError

log = structlog.get_logger(__name__)
T = TypeVar("T")

# MySQL and MariaDB error codes of transient faults: too many connections (1040), server shutting down
# (1053), lock wait timeout (1205), deadlock (1213), connection killed (1927), cannot connect (2002, 2003),
# unknown host (2005: DNS), server gone away (2006), connection lost (2013, 2055), closed for inactivity
# (4031). SQLAlchemy also flags a lost connection itself (`connection_invalidated`).
_TRANSIENT_MYSQL = frozenset({1040, 1053, 1205, 1213, 1927, 2002, 2003, 2005, 2006, 2013, 2055, 4031})

# Redis is unavailable (down, restarting, unreachable, a replica during failover): what a later attempt can
# get past. A ResponseError (a wrong command) is a bug.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    OSError,
)


def transient_db(exc: BaseException) -> bool:
    """True for a database fault a later attempt can get past (see the module docstring)."""
    if isinstance(exc, OSError):  # TimeoutError included
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    arguments = getattr(exc.orig, "args", ())
    if arguments and isinstance(arguments[0], int):
        return arguments[0] in _TRANSIENT_MYSQL
    # SQLite: another process holds the write lock longer than the busy timeout.
    return isinstance(exc, OperationalError) and "database is locked" in str(exc.orig)


def transient_redis(exc: BaseException) -> bool:
    return isinstance(exc, REDIS_UNAVAILABLE)


class Backoff:
    """Delays between attempts: `first`, then growing by `factor`, at most `cap` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 5.0, factor: float = 2.0) -> None:
        self.first = first
        self.cap = cap
        self.factor = factor
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(delay * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._next = self.first

    @property
    def waited(self) -> bool:
        """Whether a delay was taken since the last reset (the fault is not new)."""
        return self._next != self.first

    async def sleep(self) -> None:
        await anyio.sleep(self.next())


async def retry(
    operation: Callable[[], Awaitable[T]],
    *,
    transient: Callable[[BaseException], bool],
    what: str,
    for_s: float | None = None,
    backoff: Backoff | None = None,
    **context: Any,
) -> T:
    """Run `operation` until it succeeds; wait out transient faults with `backoff` for at most `for_s`
    seconds (None: until it succeeds or the task is cancelled), then the last fault propagates. Anything
    that is not transient propagates at once."""
    backoff = backoff or Backoff()
    deadline = None if for_s is None else time.monotonic() + for_s
    while True:
        try:
            return await operation()
        except Exception as exc:
            if not transient(exc):
                raise
            delay = backoff.next()
            if deadline is not None and time.monotonic() + delay > deadline:
                raise
            log.warning(
                "waiting out a fault", operation=what, error=str(exc).splitlines()[0][:300], **context
            )
            await anyio.sleep(delay)


async def supervised(run: Callable[[], Awaitable[None]], what: str) -> None:
    """`run` (a duty that lasts until cancelled), started again after a pause if a bug stops it: a background
    duty of the API (sending webhooks, firing schedules) must not stop for good."""
    while True:
        try:
            await run()
        except Exception:
            log.exception("stopped by an error; starting it again in 5 s", duty=what)
            await anyio.sleep(5)
