"""Every query on `webhook` and `webhook_delivery`.

A sender takes due deliveries with a lease (a conditional UPDATE, so of concurrent senders one wins each
row) and writes each attempt under it. A delivery is not due while an earlier delivery of the same job to
the same subscription is still pending: `job.started` goes out before `job.finished`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from service.models import DeliveryStatus, Webhook, WebhookDelivery, utcnow

_WEBHOOK = cast(sa.Table, Webhook.__table__)  # type: ignore[attr-defined]
_DELIVERY = cast(sa.Table, WebhookDelivery.__table__)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Subscriber:
    """What the outbox needs of a subscription to decide whether an event is for it."""

    id: str
    events: list[str]
    labels: dict[str, str]

    def wants(self, event: str, labels: dict[str, str]) -> bool:
        return event in self.events and all(labels.get(key) == value for key, value in self.labels.items())


@dataclass(frozen=True)
class Due:
    """A delivery taken by a sender for one attempt."""

    seq: int
    message_id: str
    webhook_id: str
    event: str
    payload: str
    attempts: list[dict[str, Any]]
    url: str
    secret: str


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    oldest: datetime | None


class WebhookRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, webhook: Webhook) -> None:
        self.session.add(webhook)
        await self.session.flush()

    async def get(self, webhook_id: str) -> Webhook | None:
        return await self.session.get(Webhook, webhook_id)

    async def all(self) -> Sequence[Webhook]:
        result = await self.session.execute(
            sa.select(Webhook).order_by(col(Webhook.created_at), col(Webhook.id))
        )
        return result.scalars().all()

    async def delete(self, webhook_id: str) -> bool:
        """The subscription and its deliveries, pending ones included."""
        await self.session.execute(sa.delete(_DELIVERY).where(_DELIVERY.c.webhook_id == webhook_id))
        result = await self.session.execute(sa.delete(_WEBHOOK).where(_WEBHOOK.c.id == webhook_id))
        return cast(CursorResult[Any], result).rowcount == 1

    async def subscribers(self) -> list[Subscriber]:
        result = await self.session.execute(sa.select(_WEBHOOK.c.id, _WEBHOOK.c.events, _WEBHOOK.c.labels))
        return [Subscriber(row.id, row.events, row.labels) for row in result]


class DeliveryRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, rows: Sequence[dict[str, Any]]) -> None:
        await self.session.execute(sa.insert(_DELIVERY), list(rows))

    async def page(self, webhook_id: str, *, before: int | None, limit: int) -> Sequence[WebhookDelivery]:
        """A subscription's deliveries, newest first."""
        query = sa.select(WebhookDelivery).where(col(WebhookDelivery.webhook_id) == webhook_id)
        if before is not None:
            query = query.where(col(WebhookDelivery.seq) < before)
        result = await self.session.execute(query.order_by(col(WebhookDelivery.seq).desc()).limit(limit))
        return result.scalars().all()

    async def delete_for_jobs(self, job_ids: Sequence[str]) -> None:
        await self.session.execute(sa.delete(_DELIVERY).where(_DELIVERY.c.job_id.in_(job_ids)))

    async def due(self, *, limit: int, skip: Sequence[str]) -> list[tuple[int, str]]:
        """(seq, webhook_id) of up to `limit` deliveries due and free, oldest due first, none of the
        subscriptions in `skip`."""
        now = utcnow()
        earlier = _DELIVERY.alias("earlier")
        query = (
            sa.select(_DELIVERY.c.seq, _DELIVERY.c.webhook_id)
            .where(
                _DELIVERY.c.status == DeliveryStatus.pending,
                _DELIVERY.c.next_attempt_at <= now,
                sa.or_(_DELIVERY.c.leased_until.is_(None), _DELIVERY.c.leased_until < now),
                ~sa.exists().where(
                    earlier.c.webhook_id == _DELIVERY.c.webhook_id,
                    earlier.c.job_id == _DELIVERY.c.job_id,
                    earlier.c.seq < _DELIVERY.c.seq,
                    earlier.c.status == DeliveryStatus.pending,
                ),
            )
            .order_by(_DELIVERY.c.next_attempt_at, _DELIVERY.c.seq)
            .limit(limit)
        )
        if skip:
            query = query.where(_DELIVERY.c.webhook_id.not_in(skip))
        return [(row.seq, row.webhook_id) for row in await self.session.execute(query)]

    async def lease(self, seqs: Sequence[int], owner: str, *, lease_s: float) -> list[Due]:
        """Take these deliveries for `owner`: of several senders that chose the same rows, the UPDATE gives
        each row to one. Returns those taken."""
        now = utcnow()
        await self.session.execute(
            sa.update(_DELIVERY)
            .where(
                _DELIVERY.c.seq.in_(seqs),
                _DELIVERY.c.status == DeliveryStatus.pending,
                sa.or_(_DELIVERY.c.leased_until.is_(None), _DELIVERY.c.leased_until < now),
            )
            .values(lease_owner=owner, leased_until=now + timedelta(seconds=lease_s))
        )
        taken = await self.session.execute(
            sa.select(
                _DELIVERY.c.seq,
                _DELIVERY.c.message_id,
                _DELIVERY.c.webhook_id,
                _DELIVERY.c.event,
                _DELIVERY.c.payload,
                _DELIVERY.c.attempts,
                _WEBHOOK.c.url,
                _WEBHOOK.c.secret,
            )
            .join(_WEBHOOK, _WEBHOOK.c.id == _DELIVERY.c.webhook_id)
            .where(_DELIVERY.c.seq.in_(seqs), _DELIVERY.c.lease_owner == owner)
            .order_by(_DELIVERY.c.seq)
        )
        return [Due(**row._mapping) for row in taken]

    async def record_attempt(
        self,
        seq: int,
        owner: str,
        attempts: list[dict[str, Any]],
        *,
        status: DeliveryStatus,
        next_attempt_at: datetime | None,
    ) -> bool:
        """Write an attempt and what follows it (delivered, failed, or the next try); False if the lease was
        lost meanwhile (another sender took the delivery: its attempt is the one recorded)."""
        values: dict[str, Any] = {
            "attempts": attempts,
            "status": status,
            "lease_owner": None,
            "leased_until": None,
        }
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        if status is not DeliveryStatus.pending:
            values["finished_at"] = utcnow()
        result = await self.session.execute(
            sa.update(_DELIVERY)
            .where(_DELIVERY.c.seq == seq, _DELIVERY.c.lease_owner == owner)
            .values(**values)
        )
        return cast(CursorResult[Any], result).rowcount == 1

    async def release(self, seqs: Sequence[int], owner: str) -> None:
        """Give back leases without an attempt (a sender stopping)."""
        await self.session.execute(
            sa.update(_DELIVERY)
            .where(_DELIVERY.c.seq.in_(seqs), _DELIVERY.c.lease_owner == owner)
            .values(lease_owner=None, leased_until=None)
        )

    async def next_due(self) -> datetime | None:
        """When the earliest pending delivery that is not due yet falls due."""
        result = await self.session.execute(
            sa.select(sa.func.min(_DELIVERY.c.next_attempt_at)).where(
                _DELIVERY.c.status == DeliveryStatus.pending, _DELIVERY.c.next_attempt_at > utcnow()
            )
        )
        return cast(datetime | None, result.scalar())

    async def stats(self) -> OutboxStats:
        result = await self.session.execute(
            sa.select(sa.func.count(), sa.func.min(_DELIVERY.c.created_at)).where(
                _DELIVERY.c.status == DeliveryStatus.pending
            )
        )
        pending, oldest = result.one()
        return OutboxStats(int(pending), oldest)
