"""run_requests: what wre's producer enqueued, so that a sweep can re-send a run that never finished.

Revision ID: 0004_run_requests
Revises: 0001
Create Date: 2026-11-30 11:45:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004_run_requests"
down_revision: str | Sequence[str] | None = "0003_run_path"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "run_requests",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("kwargs", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("resends", sa.Integer(), nullable=False),
        sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index("ix_run_requests_open", "run_requests", ["closed_at", "last_sent_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_run_requests_open", table_name="run_requests")
    op.drop_table("run_requests")
