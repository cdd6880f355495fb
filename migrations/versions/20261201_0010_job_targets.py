"""job.targets: the inventory names of the hosts a run targets, once resolved

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("targets", sa.JSON(), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
