"""Trial ledger, production lineage, test kinds (guard), shares and health; one open test per skill.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30 12:00:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "ab_trials",
        sa.Column("test_id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("unit_key", sa.String(length=300), nullable=False),
        sa.Column("arm", sa.String(length=16), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=True),
        sa.Column("fidelity", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("test_id", "run_id"),
    )
    op.create_index(
        "ix_ab_trials_pending",
        "ab_trials",
        ["test_id", "assigned_at"],
        postgresql_where=sa.text("completed_at IS NULL"),
        sqlite_where=sa.text("completed_at IS NULL"),
    )
    op.create_table(
        "production_changes",
        sa.Column("change_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("variation_id", sa.String(length=64), nullable=False),
        sa.Column("previous_variation_id", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("test_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("change_id"),
    )
    op.create_index("ix_production_changes_skill", "production_changes", ["skill_name", "change_id"])
    with op.batch_alter_table("ab_test_assignments") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), nullable=False, server_default="test"))
        batch.add_column(sa.Column("treatment_share", sa.Float(), nullable=False, server_default="0.5"))
        batch.add_column(sa.Column("parent_test_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("health", JSON, nullable=True))
    op.drop_index("uq_ab_test_running_per_skill", table_name="ab_test_assignments")
    op.create_index(
        "uq_ab_test_open_per_skill",
        "ab_test_assignments",
        ["skill_name"],
        unique=True,
        postgresql_where=sa.text("status IN ('running', 'paused')"),
        sqlite_where=sa.text("status IN ('running', 'paused')"),
    )
    # The lineage starts at today's production: one row per skill.
    op.execute(
        "INSERT INTO production_changes (skill_name, variation_id, previous_variation_id, reason, created_at) "
        "SELECT name, production_variation_id, previous_variation_id, 'registration', updated_at "
        "FROM skills WHERE production_variation_id IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_index("uq_ab_test_open_per_skill", table_name="ab_test_assignments")
    # A paused test was open; before this revision only running tests were.
    op.execute("UPDATE ab_test_assignments SET status = 'stopped' WHERE status = 'paused'")
    op.create_index(
        "uq_ab_test_running_per_skill",
        "ab_test_assignments",
        ["skill_name"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    with op.batch_alter_table("ab_test_assignments") as batch:
        batch.drop_column("health")
        batch.drop_column("parent_test_id")
        batch.drop_column("treatment_share")
        batch.drop_column("kind")
    op.drop_index("ix_production_changes_skill", table_name="production_changes")
    op.drop_table("production_changes")
    op.drop_index("ix_ab_trials_pending", table_name="ab_trials")
    op.drop_table("ab_trials")
