"""Attempts and what was learned from them: outcomes, learning events, per-skill metrics.

``record_attempt`` is the worker's hot path: the outcome, its counters, its A/B trial and its learning
event in ONE transaction, all or nothing, and nothing at all when the (run id, attempt) was seen before. On
Postgres the attempts that a process's threads record at the same moment share that transaction (one statement:
db/group_commit.py, db/attempt_batch.py).
"""

from __future__ import annotations

import math
import os
import statistics
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import timedelta
from functools import cached_property, lru_cache
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection, Float, Integer, and_, bindparam, case, func, select, update

from db.attempt_batch import MAX_BATCH_ATTEMPTS, AttemptRow, write_attempts
from db.base import (
    bounded_context,
    bounded_output,
    require_count,
    require_text,
    storable_json,
    storable_text,
)
from db.counters import CounterStore, counter_rows, skill_counter_deltas
from db.group_commit import GroupCommit
from db.models import ARMS, EVENTS, OUTCOMES, TESTS, TRIALS, utcnow
from db.records import LearningEventRecord, OutcomeRecord
from db.trials import TrialStore, complete_trial_update

# Deadlock detected, serialization failure: the batch lost a race that a smaller write may not.
RETRY_ALONE_SQLSTATES = frozenset({"40P01", "40001"})
CONNECTION_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
)
# Guards the creation of a store's group commit (one per process and store).
_GROUP_COMMITS_LOCK = threading.Lock()
# One sweep hands over at most this many triggers; a backlog drains over the next sweeps.
OUTBOX_SWEEP_LIMIT = 1000


class OutcomeStore(CounterStore, TrialStore):
    def record_attempt(
        self,
        outcome: OutcomeRecord,
        counters: Mapping[str, int] | None = None,
        learning_event: LearningEventRecord | None = None,
    ) -> bool:
        """Store one attempt with everything that depends on it; False (and nothing written) if seen before.

        A routed run's trials were written to the ledger when it was assigned; its first attempt completes them
        (within their deadlines) and adds to the running counts of the tests they count in (none without a
        trial: assign first, as the worker does).
        """
        _validate_outcome(outcome)
        # Shallow: asdict's deep copy of every nested value cost more than the rest of building the row, and
        # each value is only read (and serialized) from here on.
        row = {name: getattr(outcome, name) for name in OUTCOME_FIELDS}
        row["output"] = bounded_output(outcome.output)
        row["input_context"] = bounded_context(outcome.input_context)
        row["error"] = storable_text(outcome.error)
        row["failed_at_step"] = storable_text(outcome.failed_at_step)
        row["step_results"] = storable_json(outcome.step_results)
        row["token_usage"] = storable_json(outcome.token_usage)
        row["result"] = storable_json(outcome.result)
        row["created_at"] = utcnow()
        counters = {
            **(counters or {}),
            **skill_counter_deltas(outcome.skill_name, outcome.attempt, outcome.final, outcome.success),
        }
        if self.is_postgres:
            return self._group_commit.submit(_attempt_row(outcome, row, counters, learning_event))
        with self.transaction() as conn:
            inserted = conn.execute(self._outcome_insert, row).first() is not None
            if not inserted:
                return False
            if counters:
                self.add_to_counters(counters, conn)
            if outcome.test_id is not None and outcome.arm is not None and outcome.attempt == 1:
                # Counted before the trials are completed: the update finds them by "still pending".
                parameters = _ledger_parameters(outcome.run_id, outcome.success, outcome.pattern_fidelity)
                conn.execute(_ledger_counts_update(), parameters)
                conn.execute(complete_trial_update(), parameters)
            if learning_event is not None:
                _insert_event(conn, learning_event)
        return True

    @property
    def _group_commit(self) -> GroupCommit[AttemptRow, bool]:
        """This process's group commit of attempts (a forked worker child makes its own: a lock held in the
        parent at the fork would be held in the child forever)."""
        pid = os.getpid()
        with _GROUP_COMMITS_LOCK:
            found = self.__dict__.get("_attempt_writer")
            if found is None or found[0] != pid:
                found = (pid, GroupCommit(self._write_attempts, MAX_BATCH_ATTEMPTS, alone=one_attempt_may_be_why))
                self.__dict__["_attempt_writer"] = found
            return found[1]

    def _write_attempts(self, attempts: Sequence[AttemptRow]) -> list[bool]:
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            return write_attempts(conn, attempts)

    @cached_property
    def _outcome_insert(self) -> Any:
        # Built once and executed with each row as parameters: a statement object that is reused keeps its
        # cache key, so the hot path neither rebuilds nor re-analyses it (about half the CPU of recording).
        insert = self.upsert(OUTCOMES).on_conflict_do_nothing(index_elements=["run_id", "attempt"])
        return insert.returning(OUTCOMES.c.id)

    def store_outcome(self, **fields: Any) -> bool:
        """The seed's name for :meth:`record_attempt` without extras; True if stored, False if a duplicate."""
        return self.record_attempt(OutcomeRecord(**fields))

    def record_learning_event(
        self,
        skill_name: str,
        event_type: str,
        variation_id: str | None = None,
        fidelity_before: float | None = None,
        fidelity_after: float | None = None,
        description: str = "",
        details: dict[str, Any] | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> int:
        """Append a learning event; returns its id.

        :param counters: deltas added in the event's transaction (a screening's calls: the budget reads the
            counter, and must never count an event twice or miss one).
        """
        event = LearningEventRecord(
            skill_name=require_text(skill_name, "skill name"),
            event_type=require_text(event_type, "event type", max_length=64),
            variation_id=variation_id,
            fidelity_before=fidelity_before,
            fidelity_after=fidelity_after,
            description=description,
            details=details or {},
        )
        with self.transaction() as conn:
            event_id = _insert_event(conn, event)
            if counters:
                self.add_to_counters(counters, conn)
            return event_id

    def get_evolution_history(self, skill_name: str, limit: int = 500) -> list[LearningEventRecord]:
        """The skill's learning events, oldest first."""
        query = (
            select(EVENTS)
            .where(EVENTS.c.skill_name == skill_name)
            .order_by(EVENTS.c.created_at.desc(), EVENTS.c.event_id.desc())
            .limit(limit)
        )
        with self.transaction() as conn:
            rows = list(conn.execute(query))
        return [LearningEventRecord(**dict(row._mapping)) for row in reversed(rows)]

    def finished_runs(self) -> int:
        """How many runs have ended (their final attempt is recorded)."""
        with self.transaction() as conn:
            return int(conn.execute(select(func.count()).where(OUTCOMES.c.final)).scalar_one())

    def latest_event_id(self) -> int:
        """The id of the newest learning event (0 when there is none): where a feed starts."""
        with self.transaction() as conn:
            return int(conn.execute(select(func.coalesce(func.max(EVENTS.c.event_id), 0))).scalar_one())

    def learning_events_since(self, event_id: int = 0, limit: int = 200) -> list[LearningEventRecord]:
        """Every skill's learning events after ``event_id``, oldest first (a feed to follow)."""
        query = select(EVENTS).where(EVENTS.c.event_id > event_id).order_by(EVENTS.c.event_id).limit(limit)
        with self.transaction() as conn:
            return [LearningEventRecord(**dict(row._mapping)) for row in conn.execute(query)]

    def get_skill_metrics(self, skill_name: str, days: float = 7) -> dict[str, Any]:
        """Execution figures of the last ``days`` days.

        execution_count counts attempts; run_count and success_rate count runs (their final attempts).
        ``median_fidelity`` — the seed's gate metric — is the median *first-attempt* fidelity (what the
        skill delivers on its first try, what tests and evolution change; ``median_fidelity_reads`` says so);
        ``median_delivered_fidelity`` is the median of runs' final attempts (after ReAct retries).
        """
        since = utcnow() - timedelta(days=days)
        scope = and_(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.created_at >= since)
        query = select(
            func.count(),
            func.coalesce(func.sum(case((OUTCOMES.c.final, 1), else_=0)), 0),
            func.coalesce(func.sum(case((and_(OUTCOMES.c.final, OUTCOMES.c.success), 1), else_=0)), 0),
            func.avg(case((OUTCOMES.c.attempt == 1, OUTCOMES.c.pattern_fidelity))),
            func.avg(OUTCOMES.c.execution_time_ms),
        ).where(scope)
        with self.transaction() as conn:
            attempts, runs, successes, avg_fidelity, avg_time = conn.execute(query).one()
            first = self.median(conn, select(OUTCOMES.c.pattern_fidelity).where(scope, OUTCOMES.c.attempt == 1))
            delivered = self.median(conn, select(OUTCOMES.c.pattern_fidelity).where(scope, OUTCOMES.c.final))
        return {
            "skill_name": skill_name,
            "days": days,
            "execution_count": int(attempts),
            "run_count": int(runs),
            "median_fidelity": first,
            "median_fidelity_reads": "first attempts",
            "avg_first_attempt_fidelity": float(avg_fidelity) if avg_fidelity is not None else None,
            "median_delivered_fidelity": delivered,
            "success_rate": successes / runs if runs else None,
            "avg_time_ms": float(avg_time) if avg_time is not None else None,
        }

    def recent_failures(self, skill_name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last failed runs' final attempts (newest first): what an evolver learns from."""
        query = (
            select(
                OUTCOMES.c.run_id,
                OUTCOMES.c.variation_id,
                OUTCOMES.c.pattern_fidelity,
                OUTCOMES.c.failed_at_step,
                OUTCOMES.c.error,
                OUTCOMES.c.output,
            )
            .where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.final, ~OUTCOMES.c.success)
            .order_by(OUTCOMES.c.id.desc())
            .limit(limit)
        )
        with self.transaction() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def sweep_evolution_outbox(self, publish: Callable[[str], None], limit: int = OUTBOX_SWEEP_LIMIT) -> list[str]:
        """Hand every skill with a pending evolution trigger to ``publish``, then mark its triggers done.

        The triggers are locked (``SKIP LOCKED``: two sweeps never hand over the same ones) and cleared in the
        transaction that read them, after ``publish`` returned: a publish that raises, or a crash before the
        commit, leaves them pending for the next sweep. A trigger handed over twice is harmless (evolution is
        claimed in the database). Returns the skills handed over.
        """
        pending = (
            select(OUTCOMES.c.id, OUTCOMES.c.skill_name)
            .where(OUTCOMES.c.evolve_pending)
            .order_by(OUTCOMES.c.id)
            .limit(limit)
        )
        if self.is_postgres:
            pending = pending.with_for_update(skip_locked=True)
        with self.transaction() as conn:
            rows = list(conn.execute(pending))
            skills = list(dict.fromkeys(str(row.skill_name) for row in rows))
            for skill_name in skills:
                publish(skill_name)
            if rows:
                ids = [int(row.id) for row in rows]
                conn.execute(update(OUTCOMES).where(OUTCOMES.c.id.in_(ids)).values(evolve_pending=False))
        return skills

    def pending_evolutions(self) -> int:
        """How many evolution triggers wait for the sweep."""
        with self.transaction() as conn:
            return int(conn.execute(select(func.count()).where(OUTCOMES.c.evolve_pending)).scalar_one())

    def run_outcomes(self, run_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt of one run, in order."""
        query = select(OUTCOMES).where(OUTCOMES.c.run_id == run_id).order_by(OUTCOMES.c.attempt)
        with self.transaction() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def median(self, conn: Connection, values: Any) -> float | None:
        """Median of a one-column select; in SQL on Postgres, in Python on SQLite (which lacks it)."""
        if self.is_postgres:
            sub = values.subquery()
            column = next(iter(sub.c))
            result = conn.execute(select(func.percentile_cont(0.5).within_group(column))).scalar()
            return float(result) if result is not None else None
        found = [float(v) for v in conn.execute(values).scalars() if v is not None]
        return statistics.median(found) if found else None


def _validate_outcome(outcome: OutcomeRecord) -> None:
    require_text(outcome.run_id, "run id", max_length=64)
    require_count(outcome.attempt, "attempt", minimum=1)
    require_text(outcome.skill_name, "skill name")
    require_text(outcome.variation_id, "variation id", max_length=64)
    if outcome.request_digest is not None:
        require_text(outcome.request_digest, "request digest", max_length=64)
    if not math.isfinite(outcome.execution_time_ms) or outcome.execution_time_ms < 0:
        raise ValueError(f"execution_time_ms must be a finite duration, got {outcome.execution_time_ms}")
    if not 0.0 <= outcome.pattern_fidelity <= 1.0:
        raise ValueError(f"pattern_fidelity must be within 0..1, got {outcome.pattern_fidelity}")
    if outcome.arm not in (None, "control", "treatment"):
        raise ValueError(f"arm must be 'control' or 'treatment', got {outcome.arm!r}")


def _add_trial(conn: Connection, test_id: int, arm: str, success: bool, fidelity: float) -> int:
    """Count one trial on a running test; returns the rows touched (0 when the test is not running)."""
    return conn.execute(_trial_update(arm), _trial_parameters(test_id, success, fidelity)).rowcount


def _trial_parameters(test_id: int | None, success: bool, fidelity: float) -> dict[str, Any]:
    return {"trial_test_id": test_id, "trial_success": int(success), "trial_fidelity": fidelity}


def _ledger_parameters(run_id: str, success: bool, fidelity: float) -> dict[str, Any]:
    return {
        "trial_run_id": run_id,
        "trial_now": utcnow(),
        "trial_success_flag": success,
        "trial_success": int(success),
        "trial_fidelity_value": fidelity,
    }


@lru_cache(maxsize=2)
def _trial_update(arm: str) -> Any:
    """The trial update of one arm, built once (the hot path only binds new figures)."""
    trials, successes, fidelity_sum = (
        TESTS.c[f"{arm}_trials"],
        TESTS.c[f"{arm}_successes"],
        TESTS.c[f"{arm}_fidelity_sum"],
    )
    return (
        update(TESTS)
        .where(TESTS.c.test_id == bindparam("trial_test_id"), TESTS.c.status == "running")
        .values(
            {
                trials: trials + 1,
                successes: successes + bindparam("trial_success", type_=Integer),
                fidelity_sum: fidelity_sum + bindparam("trial_fidelity", type_=Float),
            }
        )
    )


@lru_cache(maxsize=1)
def _ledger_counts_update() -> Any:
    """Add a first attempt's outcome to the running counts of every test its run's trials count in.

    The counts follow the ledger: a run with a guard and a test beside it counts in both where its trials are
    counted (the guard's on the test's control coin only), and an outcome past its trial's deadline adds to no
    count, as it completes no trial. Run before (or, in one statement, beside) the completion of the trials:
    it finds them as still pending. A routed outcome whose run has no trial (one never assigned) counts nowhere.

    Lock order: the update takes the test rows in the order of the run's trials, which ``assign_trials`` writes
    guard first, and a guard is always older than the test beside it (a test is scheduled only while no test
    is open, and a guard is started only by closing one): ascending test id, the order everyone else locks a
    skill's rows in (``db/abtests.py``).
    """
    is_arm = {arm: TRIALS.c.arm == arm for arm in ARMS}
    values: dict[Any, Any] = {}
    for arm, matches in is_arm.items():
        trials, successes, fidelity_sum = (
            TESTS.c[f"{arm}_trials"],
            TESTS.c[f"{arm}_successes"],
            TESTS.c[f"{arm}_fidelity_sum"],
        )
        values[trials] = trials + case((matches, 1), else_=0)
        values[successes] = successes + case((matches, bindparam("trial_success", type_=Integer)), else_=0)
        values[fidelity_sum] = fidelity_sum + case(
            (matches, bindparam("trial_fidelity_value", type_=Float)), else_=0.0
        )
    return (
        update(TESTS)
        .where(
            TESTS.c.test_id == TRIALS.c.test_id,
            TESTS.c.status == "running",
            TRIALS.c.run_id == bindparam("trial_run_id"),
            TRIALS.c.counted.is_(True),
            TRIALS.c.completed_at.is_(None),
            TRIALS.c.deadline >= bindparam("trial_now"),
        )
        .values(values)
    )


# Built once; each event's values are bound as parameters.
EVENT_INSERT = EVENTS.insert().returning(EVENTS.c.event_id)


def _event_values(event: LearningEventRecord) -> dict[str, Any]:
    values = {name: getattr(event, name) for name in EVENT_COLUMNS}
    values["created_at"] = event.created_at or utcnow()
    return values


def _insert_event(conn: Connection, event: LearningEventRecord) -> int:
    return int(conn.execute(EVENT_INSERT, _event_values(event)).scalar_one())


OUTCOME_FIELDS = tuple(field.name for field in fields(OutcomeRecord))
EVENT_COLUMNS = tuple(field.name for field in fields(LearningEventRecord) if field.name != "event_id")


def one_attempt_may_be_why(error: Exception) -> bool:
    """Whether a batch's error may be one attempt's doing, so that writing each alone helps: bad data, a deadlock
    or serialization failure (a smaller write may pass). Not when the database or the pool is away: every
    attempt of the batch gets that error at once (the worker retries each as an infrastructure error)."""
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if getattr(error.orig, "sqlstate", None) in RETRY_ALONE_SQLSTATES:
            return True
        return not (error.connection_invalidated or isinstance(error, CONNECTION_ERRORS))
    return not isinstance(error, CONNECTION_ERRORS)


def _attempt_row(
    outcome: OutcomeRecord,
    row: Mapping[str, Any],
    counters: Mapping[str, int],
    learning_event: LearningEventRecord | None,
) -> AttemptRow:
    """The attempt as the batch statement takes it (db/attempt_batch.py); names and deltas checked here, in the
    recording thread, so that a bad one fails its own attempt and never a batch."""
    values = dict(row)
    values["created_at"] = row["created_at"].isoformat()
    event = None
    if learning_event is not None:
        event = _event_values(learning_event)
        event["created_at"] = event["created_at"].isoformat()
    return AttemptRow(
        outcome=values,
        counters={counter["name"]: counter["value"] for counter in counter_rows(counters)},
        routed=outcome.test_id is not None and outcome.arm is not None and outcome.attempt == 1,
        event=event,
    )
