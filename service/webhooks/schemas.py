"""Request and response shapes of the webhooks API. Unknown fields are refused and types are strict."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from service.jobs.schemas import as_utc, check_labels
from service.models import Webhook, WebhookDelivery
from service.webhooks.destinations import MAX_URL_LENGTH, check_url

EventName = Literal["job.started", "job.finished"]


class WebhookRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(
        max_length=MAX_URL_LENGTH,
        description="http(s) URL, without credentials; loopback, private and link-local destinations are "
        "refused when a delivery connects, unless WEBHOOK_ALLOW_PRIVATE=true",
    )
    events: list[EventName] = Field(
        min_length=1, max_length=8, description="`job.started`, `job.finished` (any final status)"
    )
    labels: dict[str, Annotated[str, StringConstraints(max_length=256)]] = Field(
        default_factory=dict, description="only jobs carrying all of these labels are sent"
    )
    description: Annotated[str, StringConstraints(max_length=500)] | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        return check_url(url)

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        return list(dict.fromkeys(events))

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        return check_labels(labels)


class WebhookOut(BaseModel):
    id: str
    url: str
    events: list[str]
    labels: dict[str, str]
    description: str | None
    created_at: datetime
    created_by: str | None = Field(description="name of the API token that created the subscription")

    @classmethod
    def of(cls, webhook: Webhook) -> WebhookOut:
        data = webhook.model_dump(exclude={"secret"})
        data["created_at"] = as_utc(data["created_at"])
        return cls.model_validate(data)


class WebhookCreated(WebhookOut):
    secret: str = Field(
        description="`whsec_` + base64 of 32 random bytes: verify the `webhook-signature` with it "
        "(Standard Webhooks). Shown this once."
    )


class WebhookList(BaseModel):
    items: list[WebhookOut]


class AttemptOut(BaseModel):
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null when it did not answer")
    error: str | None = Field(description="why the attempt failed; null for a 2xx answer")
    duration_ms: float
    response: str | None = Field(description="the first 256 bytes of the receiver's answer")


class DeliveryOut(BaseModel):
    id: str = Field(description="the `webhook-id` header of every attempt")
    job_id: str
    event: str
    status: Literal["pending", "delivered", "failed"]
    attempts: list[AttemptOut]
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="while pending: when it is tried next")
    finished_at: datetime | None = Field(description="when it was delivered or given up")

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> DeliveryOut:
        pending = delivery.status == "pending"
        return cls(
            id=delivery.message_id,
            job_id=delivery.job_id,
            event=delivery.event,
            status=delivery.status,
            attempts=[AttemptOut.model_validate(attempt) for attempt in delivery.attempts],
            created_at=delivery.created_at.replace(tzinfo=UTC),
            next_attempt_at=as_utc(delivery.next_attempt_at) if pending else None,
            finished_at=as_utc(delivery.finished_at),
        )


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None = Field(
        description="pass as `cursor` to get the next (older) page; null on the last"
    )
