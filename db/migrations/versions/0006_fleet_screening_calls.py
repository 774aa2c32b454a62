"""The fleet's screening calls as a counter, so that a budget paid by the fleet reads two counters, not every event.

From now on each screening event bumps ``screening_calls`` in its own transaction; here the counter is
backfilled once from the screening events already recorded.

Revision ID: 0006_fleet_screening_calls
Revises: 0005_guard_beside_test
Create Date: 2026-12-01 05:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_fleet_screening_calls"
down_revision: str | Sequence[str] | None = "0005_guard_beside_test"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# db/screening.py names the counter and the event the same way.
NAMES = {"counter": "screening_calls", "event": "candidates_screened"}
# The calls of each screening event, summed: one statement per dialect (JSONB on Postgres, JSON text on SQLite).
BACKFILL = {
    "postgresql": "INSERT INTO telemetry_counters (name, shard, value) "
    "SELECT :counter, 0, sum(CAST(details ->> 'calls' AS BIGINT)) FROM learning_events "
    "WHERE event_type = :event HAVING sum(CAST(details ->> 'calls' AS BIGINT)) IS NOT NULL",
    "sqlite": "INSERT INTO telemetry_counters (name, shard, value) "
    "SELECT :counter, 0, sum(json_extract(details, '$.calls')) FROM learning_events "
    "WHERE event_type = :event HAVING sum(json_extract(details, '$.calls')) IS NOT NULL",
}


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(sa.text(BACKFILL[bind.dialect.name]), NAMES)


def downgrade() -> None:
    op.get_bind().execute(sa.text("DELETE FROM telemetry_counters WHERE name = :counter"), NAMES)
