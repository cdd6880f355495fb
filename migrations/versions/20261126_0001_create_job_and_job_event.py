"""create job and job_event

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("playbook", sa.String(512), nullable=False),
        sa.Column("source", sa.JSON(), nullable=False),
        sa.Column("inventory", sa.JSON(), nullable=True),
        sa.Column("extra_vars", sa.JSON(), nullable=False),
        sa.Column("limit", sa.String(1024), nullable=True),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("skip_tags", sa.JSON(), nullable=False),
        sa.Column("check", sa.Boolean(), nullable=False),
        sa.Column("diff", sa.Boolean(), nullable=False),
        sa.Column("verbosity", sa.Integer(), nullable=False),
        sa.Column("forks", sa.Integer(), nullable=True),
        sa.Column("timeout", sa.Integer(), nullable=True),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=True),
        sa.Column("finished_at", Timestamp, nullable=True),
        sa.Column("rc", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("host_stats", sa.JSON(), nullable=True),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.String(128), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("idempotency_key"),
    )
    op.create_index("ix_job_status", "job", ["status"])
    op.create_index("ix_job_playbook", "job", ["playbook"])
    op.create_index("ix_job_created_at_id", "job", ["created_at", "id"])
    op.create_table(
        "job_event",
        sa.Column("job_id", sa.String(36), sa.ForeignKey("job.id"), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("host", sa.String(255), nullable=True),
        sa.Column("task", sa.Text(), nullable=True),
        sa.Column("play", sa.Text(), nullable=True),
        sa.Column("stdout", LongText, nullable=False),
        sa.Column("created", Timestamp, nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
