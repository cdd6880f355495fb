"""The outbox: a delivery row per subscription that wants an event, written in the transaction of the job's
change (a hook of the job lifecycle, service/jobs/lifecycle.py), so no crash, restart or Redis flush loses
one. After the commit, the senders are told on a Redis channel; they poll as well, so a lost word only
delays a delivery by WEBHOOK_POLL_INTERVAL.

Events: `job.started` when ansible-playbook is about to start (a run that ends before it, canceled while
queued or stopped by its source, has no `job.started`), `job.finished` at any final status. The payload
is the job as `GET /api/v1/jobs/{id}` shows it at that moment.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import structlog
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession

from service.faults import REDIS_UNAVAILABLE
from service.jobs.lifecycle import Change, FollowUp, Transition
from service.jobs.repository import JobRepository
from service.jobs.schemas import JobOut
from service.models import DeliveryStatus, utcnow
from service.webhooks.repository import DeliveryRepository, WebhookRepository

log = structlog.get_logger(__name__)

EVENTS = ("job.started", "job.finished")
_EVENT_OF = {
    Change.launched: "job.started",
    Change.finished: "job.finished",
    Change.canceled: "job.finished",
    Change.lost: "job.finished",
}


def wake_channel(queue_name: str) -> str:
    return f"{queue_name}:webhooks"


def iso_utc(moment: datetime) -> str:
    """A naive UTC time of the database as ISO 8601 with `Z`, as the API writes its times."""
    return moment.replace(tzinfo=UTC).isoformat().replace("+00:00", "Z")


def payload(event: str, job: JobOut, at: datetime) -> str:
    """The body of a delivery: the Standard Webhooks envelope around the job."""
    body = {
        "type": event,
        "timestamp": iso_utc(at),
        "data": {"job": job.model_dump(mode="json")},
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class Outbox:
    def __init__(self, redis: Redis, queue_name: str) -> None:
        self._redis = redis
        self._channel = wake_channel(queue_name)

    async def on_change(self, session: AsyncSession, transition: Transition) -> FollowUp | None:
        if transition.change is Change.deleted:
            # Retention: a job's deliveries go with it.
            await DeliveryRepository(session).delete_for_jobs([transition.job_id])
            return None
        event = _EVENT_OF.get(transition.change)
        if event is None:
            return None
        subscribers = await WebhookRepository(session).subscribers()
        if not subscribers:
            return None
        row = await JobRepository(session).row(transition.job_id)
        if row is None:
            return None
        job = JobOut.of(row)
        wanted = [subscriber for subscriber in subscribers if subscriber.wants(event, job.labels)]
        if not wanted:
            return None
        now = utcnow()
        body = payload(event, job, now)
        await DeliveryRepository(session).add_many(
            [
                {
                    "message_id": f"msg_{uuid.uuid4().hex}",
                    "webhook_id": subscriber.id,
                    "job_id": job.id,
                    "event": event,
                    "payload": body,
                    "status": DeliveryStatus.pending,
                    "attempts": [],
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for subscriber in wanted
            ]
        )
        return self.wake

    async def wake(self) -> None:
        try:
            await self._redis.publish(self._channel, b"1")
        except REDIS_UNAVAILABLE as exc:
            log.warning("webhook senders not told of new deliveries; they poll", error=str(exc))
