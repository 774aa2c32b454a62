"""The run path's own facts on each attempt: the request's digest, the exact result, the evolution outbox.

- ``request_digest``: a digest of the run's arguments, so a reused run id with other arguments is refused.
- ``result``: the final attempt's output as JSON (bounded), so a redelivered or repeated run answers exactly.
- ``evolve_pending``: the evolution trigger (a final failed attempt) as a stored fact, cleared by the sweep
  that enqueues ``wre.evolve_skill``; a partial index keeps the sweep's scan to what is pending.

Revision ID: 0003_run_path
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_run_path"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("skill_outcomes") as batch:
        batch.add_column(sa.Column("request_digest", sa.String(length=64), nullable=True))
        batch.add_column(
            sa.Column(
                "result",
                sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                nullable=True,
            )
        )
        batch.add_column(
            sa.Column("evolve_pending", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_index(
        "ix_skill_outcomes_evolve_pending",
        "skill_outcomes",
        ["skill_name"],
        postgresql_where=sa.text("evolve_pending"),
        sqlite_where=sa.text("evolve_pending"),
    )


def downgrade() -> None:
    op.drop_index("ix_skill_outcomes_evolve_pending", table_name="skill_outcomes")
    with op.batch_alter_table("skill_outcomes") as batch:
        batch.drop_column("evolve_pending")
        batch.drop_column("result")
        batch.drop_column("request_digest")
