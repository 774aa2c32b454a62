"""The fleet's figures that a screening budget paid by the fleet reads: two counters, not every event and outcome.

- ``screening_calls``: every skill's screening calls, bumped with each screening event in its transaction;
- ``fleet.runs``: every skill's finished runs, bumped by the statement that records a final attempt.

Both are recomputed here from the events and outcomes already recorded (any earlier value replaced, so that the
upgrade can be run again). Stop the workers that evolve (the maintenance queue) across the upgrade: a screening
that an older worker records after it is not counted.

Revision ID: 0006_fleet_budget_counters
Revises: 0005_guard_beside_test
Create Date: 2026-12-01 05:10:00

"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_fleet_budget_counters"
down_revision: str | Sequence[str] | None = "0005_guard_beside_test"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# db/screening.py and db/counters.py name them the same way.
NAMES = {"calls": "screening_calls", "runs": "fleet.runs", "event": "candidates_screened"}


def upgrade() -> None:
    # Literal statements with bound names only. A subquery rather than an aggregate's HAVING, which SQLite
    # accepts without GROUP BY only from 3.39. wre writes whole numbers; anything else in an event written by
    # hand counts if it is a number (rounded) and is left out otherwise, rather than stopping the upgrade.
    bind = op.get_bind()
    _forget()
    if bind.dialect.name == "postgresql":
        calls = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :calls, 0, total FROM (SELECT "
            "coalesce(sum(CAST(round(CAST(details ->> 'calls' AS NUMERIC)) AS BIGINT)), 0) AS total "
            "FROM learning_events WHERE event_type = :event AND jsonb_typeof(details -> 'calls') = 'number') "
            "AS found WHERE total <> 0"
        )
    else:
        calls = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :calls, 0, total FROM (SELECT "
            "coalesce(sum(CAST(round(json_extract(details, '$.calls')) AS INTEGER)), 0) AS total "
            "FROM learning_events WHERE event_type = :event "
            "AND json_type(details, '$.calls') IN ('integer', 'real')) AS found WHERE total <> 0"
        )
    bind.execute(calls, NAMES)
    runs = sa.text(
        "INSERT INTO telemetry_counters (name, shard, value) SELECT :runs, 0, total FROM "
        "(SELECT count(*) AS total FROM skill_outcomes WHERE final) AS found WHERE total <> 0"
    )
    bind.execute(runs, NAMES)


def downgrade() -> None:
    _forget()


def _forget() -> None:
    forget = sa.text("DELETE FROM telemetry_counters WHERE name IN (:calls, :runs)")
    op.get_bind().execute(forget, {"calls": NAMES["calls"], "runs": NAMES["runs"]})
