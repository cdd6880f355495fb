"""job.waiting_for: what a queued run waits for (hosts, locks, the runs holding them)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("waiting_for", sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
