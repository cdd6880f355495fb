"""Tables. Timestamps are naive UTC with microseconds (``DATETIME(6)`` on MariaDB)."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlmodel import Field, SQLModel

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    successful = "successful"
    failed = "failed"
    canceled = "canceled"
    timeout = "timeout"
    error = "error"

    @property
    def finished(self) -> bool:
        return self not in (JobStatus.queued, JobStatus.running)


class Job(SQLModel, table=True):
    __tablename__ = "job"
    __table_args__ = (
        sa.Index("ix_job_created_at_id", "created_at", "id"),
        # An Idempotency-Key is scoped to the token that sent it.
        sa.UniqueConstraint("submitted_by", "idempotency_key", name="uq_job_submitted_by_idempotency_key"),
    )

    id: str = Field(sa_column=sa.Column(sa.String(36), primary_key=True))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False, index=True))
    playbook: str = Field(sa_column=sa.Column(sa.String(512), nullable=False, index=True))
    source: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    # A path inside the source (JSON string) or an inline inventory (JSON object); NULL: implicit localhost.
    inventory: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    extra_vars: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    limit: str | None = Field(default=None, sa_column=sa.Column(sa.String(1024), nullable=True))
    tags: list[str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    skip_tags: list[str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    check: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    diff: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    verbosity: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    forks: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    timeout: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    priority: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    labels: dict[str, str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    # The commit a Git source's ref resolved to, once the worker fetched it.
    source_commit: str | None = Field(default=None, sa_column=sa.Column(sa.String(40), nullable=True))
    idempotency_key: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    # The name of the API token that submitted the run (`anonymous` with AUTH_DISABLED).
    submitted_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    started_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    rc: int | None = Field(default=None, sa_column=sa.Column(sa.Integer, nullable=True))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    host_stats: dict[str, dict[str, int]] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON, nullable=True)
    )
    event_count: int = Field(default=0, sa_column=sa.Column(sa.Integer, nullable=False))
    worker_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(128), nullable=True))
    # Moved forward by the worker while the run goes on; a running job whose heartbeat stops is reaped.
    heartbeat_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    cancel_requested: bool = Field(default=False, sa_column=sa.Column(sa.Boolean, nullable=False))
    # When the worker started ansible-playbook: a run whose worker is lost before this is queued again
    # (once, `requeues`); after it, never (service/jobs/lifecycle.py).
    launched_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    requeues: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default=sa.text("0"))
    )
    # Host and named locks (service/jobs/locks.py): the run's target hosts are leased exclusively.
    exclusive: bool = Field(
        default=False, sa_column=sa.Column(sa.Boolean, nullable=False, server_default=sa.false())
    )
    # Named locks held for the whole run; NULL: none.
    locks: list[str] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    # The inventory names of the hosts the run targets, once resolved (inventory and limit, as Ansible
    # selects them): for an exclusive run, and for any run that had to wait.
    targets: list[str] | None = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    # While queued behind a lease: {"hosts", "locks", "jobs"} that block it; NULL otherwise.
    waiting_for: dict[str, list[str]] | None = Field(
        default=None, sa_column=sa.Column(sa.JSON, nullable=True)
    )
    # The schedule that started the run (service/schedules); kept when the schedule is deleted.
    schedule_id: str | None = Field(
        default=None, sa_column=sa.Column(sa.String(36), nullable=True, index=True)
    )


class JobEvent(SQLModel, table=True):
    """One Ansible event. The primary key keeps a job's events together and in order on disk."""

    __tablename__ = "job_event"

    job_id: str = Field(
        sa_column=sa.Column(sa.String(36), sa.ForeignKey("job.id"), primary_key=True, autoincrement=False)
    )
    seq: int = Field(sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=False))
    event: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    host: str | None = Field(default=None, sa_column=sa.Column(sa.String(255), nullable=True))
    task: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    play: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    stdout: str = Field(sa_column=sa.Column(LongText, nullable=False))
    created: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    data: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))


class Webhook(SQLModel, table=True):
    """A subscription: `events` of jobs carrying all of `labels` are posted to `url` (service/webhooks)."""

    __tablename__ = "webhook"

    id: str = Field(sa_column=sa.Column(sa.String(36), primary_key=True))
    url: str = Field(sa_column=sa.Column(sa.String(2048), nullable=False))
    events: list[str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    labels: dict[str, str] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    description: str | None = Field(default=None, sa_column=sa.Column(sa.String(500), nullable=True))
    # `whsec_` + base64 of 32 random bytes: the HMAC key of the Standard Webhooks signature. The service
    # must sign with it, so it is stored as it is; it is returned once, when the subscription is created.
    secret: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    created_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    created_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))


class DeliveryStatus(enum.StrEnum):
    pending = "pending"
    delivered = "delivered"
    failed = "failed"


class WebhookDelivery(SQLModel, table=True):
    """One event for one subscription: the outbox row, written in the transaction of the job's change, and
    the record of its attempts. `seq` orders a job's deliveries to one subscription (started, finished)."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        sa.Index("ix_webhook_delivery_due", "status", "next_attempt_at"),
        sa.Index("ix_webhook_delivery_job_order", "webhook_id", "job_id", "seq"),
        sa.Index("ix_webhook_delivery_job_id", "job_id"),
        sa.UniqueConstraint("message_id", name="uq_webhook_delivery_message_id"),
    )

    seq: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=True)
    )
    # The `webhook-id` header, the same on every attempt: receivers recognise a repeated delivery by it.
    message_id: str = Field(sa_column=sa.Column(sa.String(40), nullable=False))
    webhook_id: str = Field(sa_column=sa.Column(sa.String(36), sa.ForeignKey("webhook.id"), nullable=False))
    # No foreign key: retention deletes a job and its deliveries in one transaction, in either order.
    job_id: str = Field(sa_column=sa.Column(sa.String(36), nullable=False))
    event: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    # The body, as signed and sent on every attempt.
    payload: str = Field(sa_column=sa.Column(LongText, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    # [{"at", "status_code", "error", "duration_ms"}], oldest first.
    attempts: list[dict[str, Any]] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    next_attempt_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    # Taken by a sender until then (an attempt in flight); a sender that died leaves it to the next one.
    leased_until: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    lease_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(36), nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    # Delivered, or given up as failed.
    finished_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))


class Overlap(enum.StrEnum):
    """What a fire time does while the schedule's previous run is queued or running."""

    skip = "skip"
    queue = "queue"


class Schedule(SQLModel, table=True):
    """A cron expression in a timezone and the run it starts (service/schedules)."""

    __tablename__ = "schedule"
    __table_args__ = (
        sa.UniqueConstraint("name", name="uq_schedule_name"),
        sa.Index("ix_schedule_due", "enabled", "next_fire_at"),
    )

    id: str = Field(sa_column=sa.Column(sa.String(36), primary_key=True))
    name: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    cron: str = Field(sa_column=sa.Column(sa.String(100), nullable=False))
    timezone: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    # The body of POST /jobs, as validated at create.
    job: dict[str, Any] = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    enabled: bool = Field(sa_column=sa.Column(sa.Boolean, nullable=False))
    overlap: str = Field(sa_column=sa.Column(sa.String(8), nullable=False))
    # The next fire time to handle (UTC); NULL while disabled. Moved on by the pass that handles it.
    next_fire_at: datetime | None = Field(default=None, sa_column=sa.Column(Timestamp, nullable=True))
    created_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    # The name of the API token that created the schedule: its runs are submitted in that name.
    created_by: str | None = Field(default=None, sa_column=sa.Column(sa.String(64), nullable=True))


class FireOutcome(enum.StrEnum):
    queued = "queued"
    skipped = "skipped"
    missed = "missed"
    # The job body no longer passes the service's checks (a bundled playbook gone, a limit lowered).
    refused = "refused"


class ScheduleFire(SQLModel, table=True):
    """What became of a fire time. The unique (schedule_id, fire_at) lets one process handle it, however
    many try."""

    __tablename__ = "schedule_fire"
    __table_args__ = (
        sa.UniqueConstraint("schedule_id", "fire_at", name="uq_schedule_fire_schedule_id_fire_at"),
        # Retention deletes by age.
        sa.Index("ix_schedule_fire_fire_at", "fire_at"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.Integer, primary_key=True, autoincrement=True)
    )
    # No foreign key: a fire of a deleted schedule may still be recorded by a pass that read it before.
    schedule_id: str = Field(sa_column=sa.Column(sa.String(36), nullable=False))
    # The fire time (UTC); for `missed`, the first of the `count` fire times missed in a row.
    fire_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    outcome: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    count: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    job_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(36), nullable=True))
    detail: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    recorded_at: datetime = Field(sa_column=sa.Column(Timestamp, nullable=False))
    # The API process that handled it (host and pid), for the operator reading a log.
    fired_by: str = Field(sa_column=sa.Column(sa.String(128), nullable=False))
