"""create schedule_fire: what became of each fire time, one row per (schedule, fire time)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

Timestamp = sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "schedule_fire",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("schedule_id", sa.String(36), nullable=False),
        sa.Column("fire_at", Timestamp, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(36), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("recorded_at", Timestamp, nullable=False),
        sa.Column("fired_by", sa.String(128), nullable=False),
        sa.UniqueConstraint("schedule_id", "fire_at", name="uq_schedule_fire_schedule_id_fire_at"),
    )
    op.create_index("ix_schedule_fire_fire_at", "schedule_fire", ["fire_at"])


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
