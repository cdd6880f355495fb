"""job.schedule_id: the schedule that started a run

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("schedule_id", sa.String(36), nullable=True))
    op.create_index("ix_job_schedule_id", "job", ["schedule_id"])


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
