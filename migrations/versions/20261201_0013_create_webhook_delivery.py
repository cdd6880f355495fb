"""create webhook_delivery: the outbox of webhook deliveries and their attempts

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "webhook_delivery",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("message_id", sa.String(40), nullable=False),
        sa.Column("webhook_id", sa.String(36), sa.ForeignKey("webhook.id"), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("payload", LongText, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.JSON(), nullable=False),
        sa.Column("next_attempt_at", Timestamp, nullable=False),
        sa.Column("leased_until", Timestamp, nullable=True),
        sa.Column("lease_owner", sa.String(36), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.UniqueConstraint("message_id", name="uq_webhook_delivery_message_id"),
    )
    op.create_index("ix_webhook_delivery_due", "webhook_delivery", ["status", "next_attempt_at"])
    op.create_index("ix_webhook_delivery_job_order", "webhook_delivery", ["webhook_id", "job_id", "seq"])
    op.create_index("ix_webhook_delivery_job_id", "webhook_delivery", ["job_id"])


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
