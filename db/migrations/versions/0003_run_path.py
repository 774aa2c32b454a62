"""The run path's own facts on each attempt: the request's digest, the exact result, the evolution outbox.

- ``request_digest``: a digest of the run's arguments, so a reused run id with other arguments is refused.
- ``result``: the final attempt's output as JSON (bounded), so a redelivered or repeated run answers exactly.
- per-skill counters (``skill.attempts:NAME``, ...): the run figures a scrape reads, bumped by the recording
  statement from now on and backfilled here once from the outcomes already recorded.
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
down_revision: str | Sequence[str] | None = "0002"
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
    _backfill_counters()


# The per-skill figures of the outcomes recorded so far (db/counters.py names them the same way). Skill names
# that would not fit the counter column (over 109 characters) are left out: wre's parser caps names at 100.
BACKFILL = (
    "INSERT INTO telemetry_counters (name, shard, value) SELECT 'skill.attempts:' || skill_name, 0, count(*) "
    "FROM skill_outcomes WHERE length(skill_name) <= 109 GROUP BY skill_name",
    "INSERT INTO telemetry_counters (name, shard, value) SELECT 'skill.runs:' || skill_name, 0, "
    "sum(CASE WHEN final THEN 1 ELSE 0 END) FROM skill_outcomes WHERE length(skill_name) <= 109 GROUP BY skill_name",
    "INSERT INTO telemetry_counters (name, shard, value) SELECT 'skill.failed_runs:' || skill_name, 0, "
    "sum(CASE WHEN final AND NOT success THEN 1 ELSE 0 END) FROM skill_outcomes "
    "WHERE length(skill_name) <= 109 GROUP BY skill_name",
    "INSERT INTO telemetry_counters (name, shard, value) SELECT 'skill.runs_retried:' || skill_name, 0, "
    "sum(CASE WHEN final AND attempt > 1 THEN 1 ELSE 0 END) FROM skill_outcomes "
    "WHERE length(skill_name) <= 109 GROUP BY skill_name",
    "INSERT INTO telemetry_counters (name, shard, value) SELECT 'skill.retries:' || skill_name, 0, "
    "sum(CASE WHEN final THEN attempt - 1 ELSE 0 END) FROM skill_outcomes "
    "WHERE length(skill_name) <= 109 GROUP BY skill_name",
)


def _backfill_counters() -> None:
    for statement in BACKFILL:
        op.execute(statement)


def downgrade() -> None:
    op.drop_index("ix_skill_outcomes_evolve_pending", table_name="skill_outcomes")
    with op.batch_alter_table("skill_outcomes") as batch:
        batch.drop_column("evolve_pending")
        batch.drop_column("result")
        batch.drop_column("request_digest")
