"""Initial schema: the six tables of DESIGN.md.

Revision ID: 0001
Revises:
Create Date: 2026-11-26 12:50:41.121044

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "learning_events",
        sa.Column("event_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("event_type", sa.String(length=64), nullable=False),
        sa.Column("variation_id", sa.String(length=64), nullable=True),
        sa.Column("fidelity_before", sa.Float(), nullable=True),
        sa.Column("fidelity_after", sa.Float(), nullable=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    op.create_index(
        "ix_learning_events_skill_type", "learning_events", ["skill_name", "event_type"], unique=False
    )
    op.create_table(
        "skill_outcomes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("variation_id", sa.String(length=64), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("test_id", sa.Integer(), nullable=True),
        sa.Column("arm", sa.String(length=16), nullable=True),
        sa.Column("success", sa.Boolean(), nullable=False),
        sa.Column("execution_success", sa.Boolean(), nullable=False),
        sa.Column("pattern_fidelity", sa.Float(), nullable=False),
        sa.Column("failed_at_step", sa.String(length=128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "step_results",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "input_context",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("execution_time_ms", sa.Float(), nullable=False),
        sa.Column(
            "token_usage",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "attempt", name="uq_skill_outcomes_run_attempt"),
    )
    op.create_index(
        "ix_skill_outcomes_skill_time", "skill_outcomes", ["skill_name", "created_at"], unique=False
    )
    op.create_index("ix_skill_outcomes_test", "skill_outcomes", ["test_id"], unique=False)
    op.create_index(
        "ix_skill_outcomes_skill_final_id", "skill_outcomes", ["skill_name", "final", "id"], unique=False
    )
    op.create_index(
        "ix_skill_outcomes_skill_attempt_id", "skill_outcomes", ["skill_name", "attempt", "id"], unique=False
    )
    op.create_table(
        "skills",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("default_agent", sa.String(length=64), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=True),
        sa.Column("production_variation_id", sa.String(length=64), nullable=True),
        sa.Column("previous_variation_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "telemetry_counters",
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", "shard"),
    )
    op.create_table(
        "ab_test_assignments",
        sa.Column("test_id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("control_version", sa.String(length=64), nullable=False),
        sa.Column("treatment_version", sa.String(length=64), nullable=False),
        sa.Column("sample_size_target", sa.Integer(), nullable=False),
        sa.Column("control_trials", sa.Integer(), nullable=False),
        sa.Column("control_successes", sa.Integer(), nullable=False),
        sa.Column("treatment_trials", sa.Integer(), nullable=False),
        sa.Column("treatment_successes", sa.Integer(), nullable=False),
        sa.Column("control_fidelity_sum", sa.Float(), nullable=False),
        sa.Column("treatment_fidelity_sum", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.String(length=32), nullable=False),
        sa.Column("winner", sa.String(length=16), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "decision",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(["skill_name"], ["skills.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("test_id"),
    )
    op.create_index("ix_ab_test_status", "ab_test_assignments", ["status"], unique=False)
    op.create_index(
        "uq_ab_test_running_per_skill",
        "ab_test_assignments",
        ["skill_name"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "skill_variations",
        sa.Column("variation_id", sa.String(length=64), nullable=False),
        sa.Column("skill_name", sa.String(length=128), nullable=False),
        sa.Column("parent_version", sa.String(length=64), nullable=True),
        sa.Column("variation_content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("test_status", sa.String(length=16), nullable=False),
        sa.Column("promoted", sa.Boolean(), nullable=False),
        sa.Column(
            "learned_from",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["skill_name"], ["skills.name"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("variation_id"),
    )
    op.create_index(op.f("ix_skill_variations_skill_name"), "skill_variations", ["skill_name"], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f("ix_skill_variations_skill_name"), table_name="skill_variations")
    op.drop_table("skill_variations")
    op.drop_index(
        "uq_ab_test_running_per_skill",
        table_name="ab_test_assignments",
        postgresql_where=sa.text("status = 'running'"),
        sqlite_where=sa.text("status = 'running'"),
    )
    op.drop_index("ix_ab_test_status", table_name="ab_test_assignments")
    op.drop_table("ab_test_assignments")
    op.drop_table("telemetry_counters")
    op.drop_table("skills")
    op.drop_index("ix_skill_outcomes_test", table_name="skill_outcomes")
    op.drop_index("ix_skill_outcomes_skill_final_id", table_name="skill_outcomes")
    op.drop_index("ix_skill_outcomes_skill_attempt_id", table_name="skill_outcomes")
    op.drop_index("ix_skill_outcomes_skill_time", table_name="skill_outcomes")
    op.drop_table("skill_outcomes")
    op.drop_index("ix_learning_events_skill_type", table_name="learning_events")
    op.drop_table("learning_events")
