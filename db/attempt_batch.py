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

Lock order: the counters are upserted in name order, and the tests a batch counts in are locked in test id order
(``locked``, ``FOR UPDATE`` under an ``ORDER BY``) before ``tallied`` updates them: ascending id is the order
everyone else locks a skill's rows in (db/abtests.py; a guard is always older than the test beside it). Left to
the plan, the update took them in the order of the status index, i.e. of where the rows lie on disk, and met an
evaluator's lock in the opposite order. Should two writers still meet in opposite orders, Postgres ends one with a
deadlock error, and the group commit writes that batch again one attempt at a time.
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from db.counters import NUM_SHARDS
from db.models import utcnow

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
        parameters = {
            # NaN and infinities are not JSON: refused here, in Python, with a clear error (the batch is then
            # written one attempt at a time, and only the attempt that carries one fails).
            "batch": json.dumps(rows, ensure_ascii=False, allow_nan=False),
            "shard": random.randrange(NUM_SHARDS),
            # A trial's deadline is judged when its outcome is written, not when the attempt joined the queue.
            "now": utcnow(),
        }
        inserted = {(run_id, attempt) for run_id, attempt in conn.execute(BATCH_STATEMENT, parameters)}
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


# Written out, not built (SQL here is only ever a literal: tests/reliability/test_security.py); the column
# lists are the tables' (tests/db/test_hot_path.py checks them against db/models.py).
BATCH_STATEMENT = text(
    """
WITH batch AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS attempt(
        ord integer, counters jsonb, routed boolean,
        run_id varchar(64), attempt integer, final boolean, skill_name varchar(128), variation_id varchar(64),
        agent varchar(64), test_id integer, arm varchar(16), success boolean, execution_success boolean,
        pattern_fidelity float, failed_at_step varchar(128), error text, step_results jsonb, input_context jsonb,
        output text, execution_time_ms float, token_usage jsonb, request_digest varchar(64), result jsonb,
        evolve_pending boolean, created_at timestamptz,
        event_skill_name varchar(128), event_event_type varchar(64), event_variation_id varchar(64),
        event_fidelity_before float, event_fidelity_after float, event_description text, event_details jsonb,
        event_created_at timestamptz)
),
inserted AS (
    INSERT INTO skill_outcomes (
        run_id, attempt, final, skill_name, variation_id, agent, test_id, arm, success, execution_success,
        pattern_fidelity, failed_at_step, error, step_results, input_context, output, execution_time_ms,
        token_usage, request_digest, result, evolve_pending, created_at)
    SELECT
        run_id, attempt, final, skill_name, variation_id, agent, test_id, arm, success, execution_success,
        pattern_fidelity, failed_at_step, error, step_results, input_context, output, execution_time_ms,
        token_usage, request_digest, result, evolve_pending, created_at
    FROM batch ORDER BY ord
    ON CONFLICT (run_id, attempt) DO NOTHING
    RETURNING run_id, attempt
),
new AS (
    SELECT batch.* FROM batch JOIN inserted USING (run_id, attempt)
),
counted AS (
    INSERT INTO telemetry_counters (name, shard, value)
    SELECT delta.key, :shard, sum(CAST(delta.value AS bigint))
    FROM new CROSS JOIN LATERAL jsonb_each_text(new.counters) AS delta
    GROUP BY delta.key
    ORDER BY delta.key
    ON CONFLICT (name, shard) DO UPDATE SET value = telemetry_counters.value + excluded.value
),
trials AS (
    SELECT trial.test_id, trial.run_id, trial.arm, trial.counted, new.success, new.pattern_fidelity AS fidelity
    FROM new JOIN ab_trials AS trial ON trial.run_id = new.run_id
    WHERE new.routed AND trial.completed_at IS NULL AND trial.deadline >= CAST(:now AS timestamptz)
),
locked AS (
    SELECT test.test_id FROM ab_test_assignments AS test
    WHERE test.test_id IN (SELECT test_id FROM trials WHERE counted) AND test.status = 'running'
    ORDER BY test.test_id
    FOR UPDATE
),
tallied AS (
    UPDATE ab_test_assignments AS test SET
        control_trials = test.control_trials + tally.control_trials,
        control_successes = test.control_successes + tally.control_successes,
        control_fidelity_sum = test.control_fidelity_sum + tally.control_fidelity_sum,
        treatment_trials = test.treatment_trials + tally.treatment_trials,
        treatment_successes = test.treatment_successes + tally.treatment_successes,
        treatment_fidelity_sum = test.treatment_fidelity_sum + tally.treatment_fidelity_sum
    FROM (
        SELECT test_id,
            count(*) FILTER (WHERE arm = 'control') AS control_trials,
            count(*) FILTER (WHERE arm = 'control' AND success) AS control_successes,
            coalesce(sum(fidelity) FILTER (WHERE arm = 'control'), 0.0) AS control_fidelity_sum,
            count(*) FILTER (WHERE arm = 'treatment') AS treatment_trials,
            count(*) FILTER (WHERE arm = 'treatment' AND success) AS treatment_successes,
            coalesce(sum(fidelity) FILTER (WHERE arm = 'treatment'), 0.0) AS treatment_fidelity_sum
        FROM trials WHERE counted GROUP BY test_id
    ) AS tally
    WHERE test.test_id = tally.test_id AND test.status = 'running'
        AND test.test_id IN (SELECT test_id FROM locked)
),
completed AS (
    UPDATE ab_trials AS trial
    SET completed_at = CAST(:now AS timestamptz), success = trials.success, fidelity = trials.fidelity
    FROM trials
    WHERE trial.test_id = trials.test_id AND trial.run_id = trials.run_id
),
events AS (
    INSERT INTO learning_events (
        skill_name, event_type, variation_id, fidelity_before, fidelity_after, description, details, created_at)
    SELECT
        event_skill_name, event_event_type, event_variation_id, event_fidelity_before, event_fidelity_after,
        event_description, event_details, event_created_at
    FROM new WHERE event_event_type IS NOT NULL ORDER BY ord
)
SELECT run_id, attempt FROM inserted
"""
)
