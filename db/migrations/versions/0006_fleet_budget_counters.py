"""The figures a screening budget paid by the fleet reads: counters, not every event and outcome.

- ``screening_calls`` and ``skill.screening_calls:NAME``: the screening calls of every skill and of each one,
  reserved when a screening starts and settled to the calls it made (with its event, or without one when it
  ends by an error);
- ``fleet.runs``: every skill's finished runs, bumped by the statement that records a final attempt.

They are recomputed here from the events and outcomes already recorded (any earlier value replaced, so that
the upgrade can be run again; a screening under way meanwhile, or one that ended without an event, is then
not counted). Stop the workers that evolve (the maintenance queue) across the upgrade: a screening that an
older worker records after it is not counted either.

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

# db/screening.py and db/counters.py name them the same way; wre's parser caps skill names at 100 characters,
# so every per-skill name fits the counter column (128).
NAMES = {
    "calls": "screening_calls",
    "skill_calls": "skill.screening_calls:",
    "runs": "fleet.runs",
    "event": "candidates_screened",
}


def upgrade() -> None:
    # Literal statements with bound names only. A subquery rather than an aggregate's HAVING without GROUP BY,
    # which SQLite accepts only from 3.39. wre writes whole numbers; anything else in an event written by hand
    # counts if it is a number (rounded) and is left out otherwise, rather than stopping the upgrade.
    forget()
    recount_screening_calls()
    runs = sa.text(
        "INSERT INTO telemetry_counters (name, shard, value) SELECT :runs, 0, total FROM "
        "(SELECT count(*) AS total FROM skill_outcomes WHERE final) AS found WHERE total <> 0"
    )
    op.get_bind().execute(runs, NAMES)


def recount_screening_calls() -> None:
    """The fleet's and each skill's screening calls, from the screening events (their counters absent)."""
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        fleet = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :calls, 0, total FROM (SELECT "
            "coalesce(sum(CAST(round(CAST(details ->> 'calls' AS NUMERIC)) AS BIGINT)), 0) AS total "
            "FROM learning_events WHERE event_type = :event AND jsonb_typeof(details -> 'calls') = 'number') "
            "AS found WHERE total <> 0"
        )
        skills = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :skill_calls || skill_name, 0, "
            "sum(CAST(round(CAST(details ->> 'calls' AS NUMERIC)) AS BIGINT)) FROM learning_events "
            "WHERE event_type = :event AND jsonb_typeof(details -> 'calls') = 'number' AND length(skill_name) <= 106 "
            "GROUP BY skill_name HAVING sum(CAST(round(CAST(details ->> 'calls' AS NUMERIC)) AS BIGINT)) <> 0"
        )
    else:
        fleet = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :calls, 0, total FROM (SELECT "
            "coalesce(sum(CAST(round(json_extract(details, '$.calls')) AS INTEGER)), 0) AS total "
            "FROM learning_events WHERE event_type = :event "
            "AND json_type(details, '$.calls') IN ('integer', 'real')) AS found WHERE total <> 0"
        )
        skills = sa.text(
            "INSERT INTO telemetry_counters (name, shard, value) SELECT :skill_calls || skill_name, 0, "
            "sum(CAST(round(json_extract(details, '$.calls')) AS INTEGER)) FROM learning_events "
            "WHERE event_type = :event AND json_type(details, '$.calls') IN ('integer', 'real') "
            "AND length(skill_name) <= 106 "
            "GROUP BY skill_name HAVING sum(CAST(round(json_extract(details, '$.calls')) AS INTEGER)) <> 0"
        )
    bind.execute(fleet, NAMES)
    bind.execute(skills, NAMES)


def downgrade() -> None:
    forget()


def forget(runs: bool = True) -> None:
    """Delete the screening counters (and ``fleet.runs`` when ``runs``)."""
    statement = sa.text(
        "DELETE FROM telemetry_counters WHERE name IN (:calls, :runs) OR name LIKE :skill_calls_like"
    )
    op.get_bind().execute(
        statement,
        {
            "calls": NAMES["calls"],
            "runs": NAMES["runs"] if runs else NAMES["calls"],
            "skill_calls_like": NAMES["skill_calls"] + "%",
        },
    )
