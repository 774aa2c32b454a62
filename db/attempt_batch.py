"""``record_attempt`` on Postgres: a batch of attempts, each with everything that depends on it, in ONE statement.

The worker's threads hand their attempts to a group commit (db/group_commit.py); whatever arrives together is
written here as one autocommit statement: one round trip and one commit for the batch. The batch travels as one
JSON parameter, unpacked by ``jsonb_to_recordset``::

    WITH batch     AS (the attempts, one row each),
         inserted  AS (INSERT INTO skill_outcomes … ON CONFLICT (run_id, attempt) DO NOTHING RETURNING run_id, attempt),
         new       AS (the attempts that were inserted: a redelivered one was not, and adds nothing below),
         counted   AS (their counters, summed per name, on one shard),
         trials    AS (the pending trials their first attempts complete, within their deadlines),
         tallied   AS (UPDATE ab_test_assignments: the counts of the tests those trials count in),
         completed AS (UPDATE ab_trials: the trials completed),
         events    AS (INSERT INTO learning_events: their events)
    SELECT run_id, attempt FROM inserted

Postgres runs every data-modifying CTE to completion and all of them see one snapshot: ``trials`` and
``completed`` both find the trials pending, as the single-attempt statements did. The statement is atomic: a
batch is recorded whole or not at all (the group commit then writes its attempts one at a time).

Lock order: the counters are upserted in name order and the tests updated in test id order (a guard is always
older than the test beside it: ascending id is the order everyone else locks a skill's rows in, db/abtests.py).
Should two batches still meet in opposite orders, Postgres ends one of them with a deadlock error, and the group
commit writes that batch again one attempt at a time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table, TextClause, text
from sqlalchemy.dialects import postgresql

from db.counters import NUM_SHARDS
from db.models import ARMS, COUNTERS, EVENTS, OUTCOMES, TESTS, TRIALS

# A batch carries at most this many attempts (each at most a bounded context and output): a statement of a few
# MB at worst, and a queue that is cut into several batches when a process has more threads than this.
MAX_BATCH_ATTEMPTS = 32


@dataclass(frozen=True)
class AttemptRow:
    """One attempt as the batch statement takes it: the outcome's columns, its counters, its trial and event.

    :param outcome: the outcome row's values, JSON-ready (``created_at`` as ISO text), keyed by column.
    :param counters: the counters the attempt adds to (name to a non-zero delta).
    :param routed: the first attempt of a run routed through a test: it completes the run's pending trials.
    :param event: the learning event's values, JSON-ready, or None.
    """

    outcome: Mapping[str, Any]
    counters: Mapping[str, int]
    routed: bool
    event: Mapping[str, Any] | None

    @property
    def key(self) -> tuple[str, int]:
        return (self.outcome["run_id"], self.outcome["attempt"])


def write_attempts(conn: Connection, attempts: Sequence[AttemptRow]) -> list[bool]:
    """Record ``attempts`` (autocommit ``conn``) in one statement per group of distinct (run, attempt) keys;
    True for each attempt that was new, False for one recorded before.

    The same attempt twice in a batch (two deliveries at one moment) goes to a second statement: within one,
    both copies would match the one row inserted and count twice.
    """
    recorded: list[bool] = [False] * len(attempts)
    remaining = list(range(len(attempts)))
    while remaining:
        keys: set[tuple[str, int]] = set()
        group: list[int] = []
        later: list[int] = []
        for index in remaining:
            (later if attempts[index].key in keys else group).append(index)
            keys.add(attempts[index].key)
        rows = [_json_row(order, attempts[index]) for order, index in enumerate(group)]
        parameters = {"batch": json.dumps(rows, ensure_ascii=False), "shard": random.randrange(NUM_SHARDS)}
        inserted = {(run_id, attempt) for run_id, attempt in conn.execute(batch_statement(), parameters)}
        for index in group:
            recorded[index] = attempts[index].key in inserted
        remaining = later
    return recorded


def _json_row(order: int, attempt: AttemptRow) -> dict[str, Any]:
    row = dict(attempt.outcome)
    row["ord"] = order
    row["counters"] = dict(attempt.counters)
    row["routed"] = attempt.routed
    if attempt.event is not None:
        row.update({f"event_{name}": value for name, value in attempt.event.items()})
    return row


def _typed(table: Table, names: Sequence[str], prefix: str = "") -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return ", ".join(f"{prefix}{name} {table.c[name].type.compile(dialect=dialect)}" for name in names)


@lru_cache(maxsize=1)
def batch_statement() -> TextClause:
    """The batch statement, its column lists taken from the tables (built once)."""
    outcome_columns = [column.name for column in OUTCOMES.c if column.name != "id"]
    event_columns = [column.name for column in EVENTS.c if column.name != "event_id"]
    outcomes = ", ".join(outcome_columns)
    events = ", ".join(event_columns)
    from_new_event = ", ".join(f"event_{name}" for name in event_columns)
    tally = ",\n".join(
        f"count(*) FILTER (WHERE arm = '{arm}') AS {arm}_trials, "
        f"count(*) FILTER (WHERE arm = '{arm}' AND success) AS {arm}_successes, "
        f"coalesce(sum(fidelity) FILTER (WHERE arm = '{arm}'), 0.0) AS {arm}_fidelity_sum"
        for arm in ARMS
    )
    add_tally = ",\n".join(
        f"{arm}_{figure} = test.{arm}_{figure} + tally.{arm}_{figure}"
        for arm in ARMS
        for figure in ("trials", "successes", "fidelity_sum")
    )
    # Only the tables' own names and columns are formatted in; every value is a bound parameter.
    return text(
        f"""
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS attempt(
        ord integer, counters jsonb, routed boolean,
        {_typed(OUTCOMES, outcome_columns)},
        {_typed(EVENTS, event_columns, prefix="event_")})
),
inserted AS (
    INSERT INTO {OUTCOMES.name} ({outcomes})
    SELECT {outcomes} FROM batch ORDER BY ord
    ON CONFLICT (run_id, attempt) DO NOTHING
    RETURNING run_id, attempt
),
new AS (
    SELECT batch.* FROM batch JOIN inserted USING (run_id, attempt)
),
counted AS (
    INSERT INTO {COUNTERS.name} (name, shard, value)
    SELECT delta.key, :shard, sum(CAST(delta.value AS bigint))
    FROM new CROSS JOIN LATERAL jsonb_each_text(new.counters) AS delta
    GROUP BY delta.key
    ORDER BY delta.key
    ON CONFLICT (name, shard) DO UPDATE SET value = {COUNTERS.name}.value + excluded.value
),
trials AS (
    SELECT trial.test_id, trial.run_id, trial.arm, trial.counted,
           new.success, new.pattern_fidelity AS fidelity, new.created_at
    FROM new JOIN {TRIALS.name} AS trial ON trial.run_id = new.run_id
    WHERE new.routed AND trial.completed_at IS NULL AND trial.deadline >= new.created_at
),
tallied AS (
    UPDATE {TESTS.name} AS test SET
        {add_tally}
    FROM (
        SELECT test_id,
        {tally}
        FROM trials WHERE counted GROUP BY test_id ORDER BY test_id
    ) AS tally
    WHERE test.test_id = tally.test_id AND test.status = 'running'
),
completed AS (
    UPDATE {TRIALS.name} AS trial
    SET completed_at = trials.created_at, success = trials.success, fidelity = trials.fidelity
    FROM trials
    WHERE trial.test_id = trials.test_id AND trial.run_id = trials.run_id
),
events AS (
    INSERT INTO {EVENTS.name} ({events})
    SELECT {from_new_event} FROM new WHERE event_event_type IS NOT NULL ORDER BY ord
)
SELECT run_id, attempt FROM inserted
"""  # noqa: S608
    )
