"""Sends the outbox (service/webhooks/outbox.py): a task of every API process, since the API replicas are
always up while KEDA may scale the workers to zero (docs/decisions/0018-webhooks-sent-by-the-api.md).

Each attempt is signed as the Standard Webhooks specification says (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed with the secret's decoded
bytes) and bounded by WEBHOOK_TIMEOUT from connect to the last byte read. A non-2xx answer (redirects are
not followed), a timeout or a refused destination is retried after the delays of WEBHOOK_RETRY_DELAYS, then
the delivery is `failed`. A subscription has at most a quarter of WEBHOOK_CONCURRENCY attempts in flight:
a receiver that hangs holds those, never the others' nor anything of a run.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import time
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpcore
import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.faults import REDIS_UNAVAILABLE, Backoff, retry, transient_db
from service.metrics import WebhookMetrics
from service.models import DeliveryStatus, utcnow
from service.webhooks.destinations import GuardedBackend, RefusedDestination
from service.webhooks.outbox import iso_utc, wake_channel
from service.webhooks.repository import DeliveryRepository, Due

log = structlog.get_logger(__name__)

# What is read of a receiver's answer, and kept of it in the attempt's record.
_READ_LIMIT = 4096
_KEPT = 256
# A lease outlives the attempt it covers: a sender that died is replaced after this much more.
_LEASE_MARGIN_S = 30
_TAKE_AT_ONCE = 100


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class Sender:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        redis: Redis,
        settings: Settings,
        metrics: WebhookMetrics,
    ) -> None:
        self._sessions = sessions
        self._redis = redis
        self._settings = settings
        self._metrics = metrics
        self.owner = str(uuid.uuid4())
        self._woken = anyio.Event()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._per_subscription = max(1, settings.webhook_concurrency // 4)

    def wake(self) -> None:
        self._woken.set()

    async def run(self) -> None:
        """Until cancelled (the API's shutdown)."""
        settings = self._settings
        pool = httpcore.AsyncConnectionPool(
            network_backend=GuardedBackend(allow_private=settings.webhook_allow_private),
            max_connections=settings.webhook_concurrency,
            keepalive_expiry=30,
            retries=0,
        )
        async with pool, anyio.create_task_group() as tasks:
            tasks.start_soon(self._listen)
            backoff = Backoff(first=1, cap=settings.webhook_poll_interval)
            while True:
                self._woken = anyio.Event()
                try:
                    taken = await self._take()
                    wait = await self._until_next_due()
                except Exception as exc:
                    if not transient_db(exc):
                        raise
                    log.warning("webhook outbox not read", error=str(exc).splitlines()[0])
                    await backoff.sleep()
                    continue
                backoff.reset()
                for due in taken:
                    self._in_flight[due.webhook_id] += 1
                    tasks.start_soon(self._deliver, pool, due)
                with anyio.move_on_after(wait):
                    await self._woken.wait()

    async def _take(self) -> list[Due]:
        room = self._settings.webhook_concurrency - sum(self._in_flight.values())
        if room <= 0:
            return []
        counts = collections.Counter(self._in_flight)
        full = [webhook for webhook, count in counts.items() if count >= self._per_subscription]
        async with self._sessions() as session:
            deliveries = DeliveryRepository(session)
            chosen = []
            for seq, webhook_id in await deliveries.due(limit=min(room, _TAKE_AT_ONCE), skip=full):
                # Within one subscription's share; the rest waits for a later round.
                if counts[webhook_id] < self._per_subscription:
                    counts[webhook_id] += 1
                    chosen.append(seq)
            if not chosen:
                return []
            taken = await deliveries.lease(
                chosen, self.owner, lease_s=self._settings.webhook_timeout + _LEASE_MARGIN_S
            )
            await session.commit()
        return taken

    async def _until_next_due(self) -> float:
        async with self._sessions() as session:
            next_due = await DeliveryRepository(session).next_due()
        wait = self._settings.webhook_poll_interval
        if next_due is not None:
            wait = min(wait, max(0.0, (next_due - utcnow()).total_seconds()))
        return wait

    async def _listen(self) -> None:
        backoff = Backoff(first=1, cap=5)
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(wake_channel(self._settings.queue_name))
                    async for message in pubsub.listen():
                        backoff.reset()
                        if message["type"] == "message":
                            self.wake()
            except REDIS_UNAVAILABLE as exc:
                log.warning("not listening for new webhook deliveries, polling meanwhile", error=str(exc))
                await backoff.sleep()

    async def _deliver(self, pool: httpcore.AsyncConnectionPool, due: Due) -> None:
        with structlog.contextvars.bound_contextvars(
            webhook_id=due.webhook_id, message_id=due.message_id, event=due.event
        ):
            try:
                attempt = await self._attempt(pool, due)
                await self._record(due, attempt)
            except anyio.get_cancelled_exc_class():
                with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                    async with self._sessions() as session:
                        await DeliveryRepository(session).release([due.seq], self.owner)
                        await session.commit()
                raise
            finally:
                self._in_flight[due.webhook_id] -= 1
                if not self._in_flight[due.webhook_id]:
                    del self._in_flight[due.webhook_id]
                self.wake()

    async def _attempt(self, pool: httpcore.AsyncConnectionPool, due: Due) -> dict[str, Any]:
        """One POST: {"at", "status_code", "error", "duration_ms", "response"}."""
        timeout = self._settings.webhook_timeout
        body = due.payload.encode()
        timestamp = int(time.time())
        headers = [
            (b"Content-Type", b"application/json"),
            (b"User-Agent", b"ansible-runner-service"),
            (b"webhook-id", due.message_id.encode()),
            (b"webhook-timestamp", str(timestamp).encode()),
            (b"webhook-signature", sign(due.secret, due.message_id, timestamp, body).encode()),
        ]
        at = utcnow()
        started = time.perf_counter()
        status_code: int | None = None
        error: str | None = None
        kept = b""
        try:
            with anyio.fail_after(timeout):
                async with pool.stream(
                    "POST",
                    due.url,
                    headers=headers,
                    content=body,
                    extensions={"timeout": dict.fromkeys(("connect", "read", "write", "pool"), timeout)},
                ) as response:
                    status_code = response.status
                    read = 0
                    async for chunk in response.aiter_stream():
                        if len(kept) < _KEPT:
                            kept += chunk[: _KEPT - len(kept)]
                        read += len(chunk)
                        if read >= _READ_LIMIT:
                            break
        except TimeoutError:
            error = f"no answer within {timeout:g} s" if status_code is None else None
        except RefusedDestination as exc:
            error = str(exc)
        except httpcore.TimeoutException:
            error = f"no answer within {timeout:g} s"
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        if status_code is not None and not 200 <= status_code < 300:
            error = f"HTTP {status_code}" + (
                " (redirects are not followed)" if 300 <= status_code < 400 else ""
            )
        return {
            "at": iso_utc(at),
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "response": kept.decode("utf-8", "replace") or None,
        }

    async def _record(self, due: Due, attempt: dict[str, Any]) -> None:
        attempts = [*due.attempts, attempt]
        delays = self._settings.webhook_retry_delays
        next_attempt_at = None
        if attempt["error"] is None:
            status = DeliveryStatus.delivered
        elif len(attempts) <= len(delays):
            status = DeliveryStatus.pending
            next_attempt_at = utcnow() + timedelta(seconds=delays[len(attempts) - 1])
        else:
            status = DeliveryStatus.failed
        outcome = "success" if attempt["error"] is None else _attempt_outcome(attempt)
        self._metrics.attempts.labels(outcome=outcome).inc()
        if status is not DeliveryStatus.pending:
            self._metrics.deliveries.labels(event=due.event, outcome=status.value).inc()
        # Deliveries are recorded in the database and counted; failed attempts are also said in the log.
        log_method = log.debug if status is DeliveryStatus.delivered else log.warning
        log_method(
            "webhook attempt",
            # The host only: a receiver's path often holds a token of its own (chat services' hooks).
            destination=urlsplit(due.url).netloc,
            attempt=len(attempts),
            status=status.value,
            status_code=attempt["status_code"],
            error=attempt["error"],
            duration_ms=attempt["duration_ms"],
        )

        async def write() -> bool:
            async with self._sessions() as session:
                recorded = await DeliveryRepository(session).record_attempt(
                    due.seq, self.owner, attempts, status=status, next_attempt_at=next_attempt_at
                )
                await session.commit()
                return recorded

        # Within the lease: past it, another sender may take the delivery and attempt it again.
        recorded = await retry(
            write,
            transient=transient_db,
            what="record a webhook attempt",
            for_s=self._settings.webhook_timeout + _LEASE_MARGIN_S,
            backoff=Backoff(first=0.5, cap=5),
        )
        if not recorded:
            log.warning("webhook lease lost during the attempt; another sender took the delivery")


def _attempt_outcome(attempt: dict[str, Any]) -> str:
    error: str = attempt["error"]
    if attempt["status_code"] is not None:
        return "http_error"
    if error.startswith("no answer"):
        return "timeout"
    if error.startswith("refused"):
        return "refused"
    return "connection_error"
