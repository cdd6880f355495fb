"""/api/v1/webhooks (admin scope): subscriptions to job events and their deliveries."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from service.api.auth import AdminAccess
from service.api.deps import UUID_PATTERN, SessionDep, SettingsDep
from service.webhooks import service as webhooks
from service.webhooks.schemas import DeliveryPage, WebhookCreated, WebhookList, WebhookOut, WebhookRequest

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

WebhookId = Annotated[
    str, Path(description="the subscription's id (a UUID)", max_length=36, pattern=UUID_PATTERN)
]


@router.post("", status_code=201, response_model=WebhookCreated)
async def create_webhook(
    body: WebhookRequest,
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: AdminAccess,
) -> WebhookCreated:
    """Subscribe a URL to job events. The answer holds the signing secret, shown this once."""
    webhook = await webhooks.create(session, settings, body, principal.name)
    response.headers["Location"] = f"/api/v1/webhooks/{webhook.id}"
    return WebhookCreated(**WebhookOut.of(webhook).model_dump(), secret=webhook.secret)


@router.get("", response_model=WebhookList)
async def list_webhooks(session: SessionDep, _: AdminAccess) -> WebhookList:
    """Every subscription, oldest first (without secrets)."""
    return WebhookList(items=[WebhookOut.of(webhook) for webhook in await webhooks.list_all(session)])


@router.get("/{webhook_id}", response_model=WebhookOut)
async def get_webhook(webhook_id: WebhookId, session: SessionDep, _: AdminAccess) -> WebhookOut:
    return WebhookOut.of(await webhooks.get(session, webhook_id))


@router.delete("/{webhook_id}", status_code=204, response_class=Response)
async def delete_webhook(webhook_id: WebhookId, session: SessionDep, _: AdminAccess) -> Response:
    """The subscription and its deliveries; pending deliveries are not sent."""
    await webhooks.delete(session, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", response_model=DeliveryPage)
async def webhook_deliveries(
    webhook_id: WebhookId,
    session: SessionDep,
    _: AdminAccess,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=32)] = None,
) -> DeliveryPage:
    """The subscription's deliveries, newest first, each with its attempts."""
    return await webhooks.deliveries(session, webhook_id, limit=limit, cursor=cursor)
