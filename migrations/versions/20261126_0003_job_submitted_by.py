"""job.submitted_by: the name of the API token that submitted the run

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("submitted_by", sa.String(64), nullable=True))


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
