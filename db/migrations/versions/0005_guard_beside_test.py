"""A test may run beside a guard: one open test and one open guard per skill; guard trials that do not count.

Revision ID: 0005_guard_beside_test
Revises: 0004_run_requests
Create Date: 2026-11-30 15:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_guard_beside_test"
down_revision: str | Sequence[str] | None = "0004_run_requests"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None



def upgrade() -> None:
    op.drop_index("uq_ab_test_open_per_skill", table_name="ab_test_assignments")
    op.create_index(
        "uq_ab_test_open_per_skill_kind",
        "ab_test_assignments",
        ["skill_name", "kind"],
        unique=True,
        postgresql_where=sa.text("status IN ('running', 'paused')"),
        sqlite_where=sa.text("status IN ('running', 'paused')"),
    )
    with op.batch_alter_table("ab_trials") as batch:
        batch.add_column(sa.Column("counted", sa.Boolean(), nullable=False, server_default=sa.text("true")))
    op.create_index("ix_ab_trials_run", "ab_trials", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_ab_trials_run", table_name="ab_trials")
    with op.batch_alter_table("ab_trials") as batch:
        batch.drop_column("counted")
    # Before this revision a skill had one open test or guard: a test open beside a guard is stopped.
    op.execute(
        "UPDATE ab_test_assignments SET status = 'stopped' WHERE kind = 'test' AND status IN ('running', 'paused') "
        "AND skill_name IN (SELECT skill_name FROM ab_test_assignments "
        "WHERE kind = 'guard' AND status IN ('running', 'paused'))"
    )
    op.drop_index("uq_ab_test_open_per_skill_kind", table_name="ab_test_assignments")
    op.create_index(
        "uq_ab_test_open_per_skill",
        "ab_test_assignments",
        ["skill_name"],
        unique=True,
        postgresql_where=sa.text("status IN ('running', 'paused')"),
        sqlite_where=sa.text("status IN ('running', 'paused')"),
    )
