"""Webhook subscriptions: create (with a fresh secret), read, delete, and the record of their deliveries."""

from __future__ import annotations

import base64
import secrets
import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from service.config import Settings
from service.errors import InvalidRequest, NotFound
from service.models import Webhook, utcnow
from service.webhooks.destinations import literal_refusal
from service.webhooks.repository import DeliveryRepository, WebhookRepository
from service.webhooks.schemas import DeliveryOut, DeliveryPage, WebhookRequest


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def create(session: AsyncSession, settings: Settings, body: WebhookRequest, created_by: str) -> Webhook:
    if not settings.webhook_allow_private and (reason := literal_refusal(body.url)) is not None:
        raise InvalidRequest(f"url: {reason}; webhooks may not reach it unless WEBHOOK_ALLOW_PRIVATE=true")
    webhook = Webhook(
        id=str(uuid.uuid4()),
        url=body.url,
        events=list(body.events),
        labels=body.labels,
        description=body.description,
        secret=new_secret(),
        created_at=utcnow(),
        created_by=created_by,
    )
    await WebhookRepository(session).add(webhook)
    await session.commit()
    return webhook


async def list_all(session: AsyncSession) -> list[Webhook]:
    return list(await WebhookRepository(session).all())


async def get(session: AsyncSession, webhook_id: str) -> Webhook:
    webhook = await WebhookRepository(session).get(webhook_id)
    if webhook is None:
        raise NotFound(f"no webhook {webhook_id}")
    return webhook


async def delete(session: AsyncSession, webhook_id: str) -> None:
    """The subscription and its deliveries: pending ones are not sent."""
    if not await WebhookRepository(session).delete(webhook_id):
        raise NotFound(f"no webhook {webhook_id}")
    await session.commit()


async def deliveries(
    session: AsyncSession, webhook_id: str, *, limit: int, cursor: str | None
) -> DeliveryPage:
    await get(session, webhook_id)
    before = None
    if cursor is not None:
        if not cursor.isdigit() or len(cursor) > 18:
            raise InvalidRequest("cursor: pass the next_cursor of the previous page")
        before = int(cursor)
    rows = await DeliveryRepository(session).page(webhook_id, before=before, limit=limit)
    next_cursor = str(rows[-1].seq) if len(rows) == limit else None
    return DeliveryPage(items=[DeliveryOut.of(row) for row in rows], next_cursor=next_cursor)
