"""Idempotency-Key unique per token: (submitted_by, idempotency_key) instead of idempotency_key alone

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = "uq_job_submitted_by_idempotency_key"


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a constraint: the table is rebuilt; the naming convention names the unnamed
        # unique constraint of 0001 so it can be dropped.
        with op.batch_alter_table(
            "job", naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s"}
        ) as batch:
            batch.drop_constraint("uq_job_idempotency_key", type_="unique")
            batch.create_unique_constraint(NEW, ["submitted_by", "idempotency_key"])
        return
    # MariaDB named the unnamed constraint of 0001 after its column.
    op.create_unique_constraint(NEW, "job", ["submitted_by", "idempotency_key"])
    op.drop_constraint("idempotency_key", "job", type_="unique")


def downgrade() -> None:
    raise NotImplementedError("migrations are forward-only")
