"""The trial ledger: a run routed into an A/B test is written when it is assigned, completed by its outcome.

Counting from assignment is what keeps a test honest when outcomes arrive late: the verdict reads only the
complete prefix (trials assigned before the oldest one still pending), never the early reporters of a cohort
whose slow members are still out. A trial pending past its deadline counts as a failure of its arm, so a lost
or hung run cannot hold a test for ever. The arm a unit got is a database fact here, not only a hash.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)

from db.models import ARMS, TESTS, TRIALS, utcnow
from db.records import ArmAggregate, CohortRecord
from db.store import Store, require_text

MAX_UNIT_KEY_CHARS = 300
# Verdicts are taken at the horizon ``now - ASSIGNMENT_GRACE_SECONDS``: a trial's row is stamped by its worker
# before it commits (and a worker's clock may run a little apart), so one assigned in the last few seconds may
# not be visible yet, and a prefix judged without it could be short of a slow trial. For the same reason a trial
# expires only once its deadline is that far behind: an outcome stamped before the deadline and committed just
# after is not overtaken by a verdict that counted it as a failure.
ASSIGNMENT_GRACE_SECONDS = 5.0


def unit_key_for(run_id: str, assignment_key: str | None) -> str:
    """The unit of analysis: the producer's key (all of a user's runs are one unit), else the run itself."""
    return f"key:{assignment_key}" if assignment_key is not None else f"run:{run_id}"


@dataclass(frozen=True)
class Assignment:
    """One trial of a run: the test and the arm; ``uncounted_while``: a test whose running makes the trial's
    outcome not count (``AbTrial.counted``), decided when the row is written."""

    test_id: int
    arm: str
    uncounted_while: int | None = None


class Trials:
    def __init__(self, store: Store) -> None:
        self.store = store

    def assign_trial(
        self,
        test_id: int,
        run_id: str,
        arm: str,
        unit_key: str,
        deadline_seconds: float,
    ) -> str | None:
        """Write a run's assignment to a running test; returns the arm on record, None if the test is not running.

        Idempotent per (test, run): a redelivered first attempt finds the arm it was given the first time.
        """
        return self.assign_trials(run_id, unit_key, deadline_seconds, [Assignment(test_id, arm)]).get(test_id)

    def assign_trials(
        self, run_id: str, unit_key: str, deadline_seconds: float, assignments: Sequence[Assignment]
    ) -> dict[int, str]:
        """Write a run's trials (a guard's and the test's beside it) in one statement; returns the arm on
        record per test, for the tests that are running (or were, when the run was assigned before).

        A run's trials are written once, all together: a redelivered first attempt finds the arms it was given
        the first time and gets no trial of a test started since (its guard trial was written as counted).
        One statement (plus a read only when the run was assigned before or a test is no longer running).
        """
        for assignment in assignments:
            if assignment.arm not in ARMS:
                raise ValueError(f"arm must be 'control' or 'treatment', got {assignment.arm!r}")
        require_text(unit_key, "unit key", max_length=MAX_UNIT_KEY_CHARS)
        if not assignments:
            return {}
        now = utcnow()
        deadline = now + timedelta(seconds=deadline_seconds)
        # The statement's snapshot: on a first delivery no row of the run exists for any of them.
        unassigned = ~select(literal(1)).where(TRIALS.c.run_id == run_id).exists()
        rows = [
            select(
                literal(assignment.test_id, Integer),
                literal(run_id),
                literal(unit_key),
                literal(assignment.arm),
                literal(now),
                literal(deadline),
                literal(True, Boolean)
                if assignment.uncounted_while is None
                else ~_running(assignment.uncounted_while),
            ).where(_running(assignment.test_id), unassigned)
            for assignment in assignments
        ]
        values = rows[0] if len(rows) == 1 else union_all(*rows)
        insert = (
            self.store.insert(TRIALS)
            .from_select(["test_id", "run_id", "unit_key", "arm", "assigned_at", "deadline", "counted"], values)
            .on_conflict_do_nothing(index_elements=["test_id", "run_id"])
            .returning(TRIALS.c.test_id, TRIALS.c.arm)
        )
        ids = [assignment.test_id for assignment in assignments]
        with self.store.transaction() as conn:
            recorded = {int(test_id): str(arm) for test_id, arm in conn.execute(insert)}
            if len(recorded) < len(ids):
                known = conn.execute(
                    select(TRIALS.c.test_id, TRIALS.c.arm).where(
                        TRIALS.c.run_id == run_id, TRIALS.c.test_id.in_(ids)
                    )
                )
                recorded.update({int(test_id): str(arm) for test_id, arm in known})
        return recorded

    def add_manual_trial(self, conn: Connection, test_id: int, arm: str, success: bool, fidelity: float) -> None:
        """A completed trial of its own unit, for callers that count outcomes by hand (the seed's API).

        It is complete when written, so no cohort waits on it: it is stamped twice the grace back, and the next
        verdict counts it.
        """
        now = utcnow() - timedelta(seconds=2 * ASSIGNMENT_GRACE_SECONDS)
        run_id = f"manual-{uuid.uuid4().hex}"
        conn.execute(
            TRIALS.insert().values(
                test_id=test_id,
                run_id=run_id,
                unit_key=unit_key_for(run_id, None),
                arm=arm,
                assigned_at=now,
                deadline=now,
                completed_at=now,
                success=success,
                fidelity=fidelity,
            )
        )

    def cohorts(
        self,
        test_ids: Iterable[int],
        now: datetime | None = None,
        conn: Connection | None = None,
        grace_seconds: float = ASSIGNMENT_GRACE_SECONDS,
    ) -> dict[int, CohortRecord]:
        """The complete-prefix figures of each test at the horizon ``now - grace_seconds``, by test id (a test
        without trials has empty arms)."""
        ids = sorted(set(test_ids))
        if not ids:
            return {}
        horizon = (now or utcnow()) - timedelta(seconds=grace_seconds)
        if conn is None:
            with self.store.transaction() as own:
                return self.cohorts(ids, horizon, own, grace_seconds=0.0)
        pending = _pending_query(ids, horizon)
        pending_rows = {row.test_id: row for row in conn.execute(pending)}
        arms: dict[tuple[int, str], ArmAggregate] = {}
        excluded: dict[int, int] = {}
        for row in conn.execute(_aggregate_query(ids, horizon)):
            arms[(row.test_id, row.arm)] = ArmAggregate(
                assigned_units=int(row.assigned_units),
                units=int(row.units),
                trials=int(row.trials or 0),
                successes=int(row.successes or 0),
                sum_trials_sq=int(row.sum_trials_sq or 0),
                sum_successes_sq=int(row.sum_successes_sq or 0),
                sum_cross=int(row.sum_cross or 0),
            )
            excluded[row.test_id] = excluded.get(row.test_id, 0) + int(row.excluded or 0)
        result = {}
        for test_id in ids:
            info = pending_rows.get(test_id)
            result[test_id] = CohortRecord(
                test_id=test_id,
                control=arms.get((test_id, "control"), ArmAggregate()),
                treatment=arms.get((test_id, "treatment"), ArmAggregate()),
                cutoff=info.cutoff if info is not None else None,
                pending=int(info.pending or 0) if info is not None else 0,
                expired=int(info.expired or 0) if info is not None else 0,
                excluded=excluded.get(test_id, 0),
            )
        return result


def _running(test_id: int) -> Any:
    return select(literal(1)).where(TESTS.c.test_id == test_id, TESTS.c.status == "running").exists()


def _pending_query(test_ids: list[int], now: datetime) -> Any:
    """Per test at the horizon ``now``: the oldest pending trial within its deadline (the cutoff), and the
    pending/expired counts.

    Reads only pending rows, through the partial index on them.
    """
    live = TRIALS.c.deadline >= now
    return (
        select(
            TRIALS.c.test_id,
            func.min(case((live, TRIALS.c.assigned_at))).label("cutoff"),
            func.sum(case((live, 1), else_=0)).label("pending"),
            func.sum(case((live, 0), else_=1)).label("expired"),
        )
        .where(TRIALS.c.test_id.in_(test_ids), TRIALS.c.completed_at.is_(None))
        .group_by(TRIALS.c.test_id)
    )


def _aggregate_query(test_ids: list[int], now: datetime) -> Any:
    """Per test and arm at the horizon ``now``: assigned units, and the complete prefix aggregated per unit,
    then per arm."""
    cutoffs = (
        select(TRIALS.c.test_id, func.min(TRIALS.c.assigned_at).label("cutoff"))
        .where(
            TRIALS.c.test_id.in_(test_ids), TRIALS.c.completed_at.is_(None), TRIALS.c.deadline >= now
        )
        .group_by(TRIALS.c.test_id)
        .subquery("cutoffs")
    )
    # Before the cutoff and before the horizon: a trial assigned after the horizon may not be visible yet.
    in_prefix = and_(
        TRIALS.c.assigned_at < now, or_(cutoffs.c.cutoff.is_(None), TRIALS.c.assigned_at < cutoffs.c.cutoff)
    )
    # A guard's trial whose run got the candidate of the test beside it counts for the split, not the outcome.
    measured = and_(in_prefix, TRIALS.c.counted.is_(True))
    # An expired trial (no outcome, past its deadline) has success NULL: a failure here.
    won = and_(measured, TRIALS.c.success.is_(True))
    per_unit = (
        select(
            TRIALS.c.test_id,
            TRIALS.c.arm,
            TRIALS.c.unit_key,
            func.sum(case((measured, 1), else_=0)).label("m"),
            func.sum(case((won, 1), else_=0)).label("y"),
            # Done (an outcome, or expired) but assigned at or after the cutoff (or the horizon): waiting.
            func.sum(
                case((in_prefix, 0), (TRIALS.c.completed_at.is_not(None), 1), (TRIALS.c.deadline < now, 1), else_=0)
            ).label("late"),
        )
        .select_from(TRIALS.outerjoin(cutoffs, cutoffs.c.test_id == TRIALS.c.test_id))
        .where(TRIALS.c.test_id.in_(test_ids))
        .group_by(TRIALS.c.test_id, TRIALS.c.arm, TRIALS.c.unit_key)
        .subquery("per_unit")
    )
    m, y = per_unit.c.m, per_unit.c.y
    return select(
        per_unit.c.test_id,
        per_unit.c.arm,
        func.count().label("assigned_units"),
        func.sum(case((m > 0, 1), else_=0)).label("units"),
        func.sum(m).label("trials"),
        func.sum(y).label("successes"),
        func.sum(m * m).label("sum_trials_sq"),
        func.sum(y * y).label("sum_successes_sq"),
        func.sum(y * m).label("sum_cross"),
        func.sum(per_unit.c.late).label("excluded"),
    ).group_by(per_unit.c.test_id, per_unit.c.arm)


FIGURES = ("trials", "successes", "fidelity_sum")
# Adds to a running test's counts: ``add_<arm>_<figure>`` per arm and figure, for the test ``count_test_id``.
# The one count update: attempts' trials (complete_trials) and trials counted by hand (record_ab_outcome).
COUNT_UPDATE = (
    update(TESTS)
    .where(TESTS.c.test_id == bindparam("count_test_id"), TESTS.c.status == "running")
    .values({TESTS.c[f"{a}_{f}"]: TESTS.c[f"{a}_{f}"] + bindparam(f"add_{a}_{f}") for a in ARMS for f in FIGURES})
)
# The tests a write counts trials in, locked in test id order before their counts change: ascending id is the
# order everyone else locks a skill's rows in (Catalog.lock_skill; a guard is always older than the test beside
# it). Left to a plan, an update took them in the order of the status index, i.e. of where the rows lie on
# disk, and met an evaluator's lock in the opposite order. (SQLite renders no FOR UPDATE: BEGIN IMMEDIATE has
# serialized the writers already.)
LOCK_RUNNING_TESTS = (
    select(TESTS.c.test_id)
    .where(TESTS.c.test_id.in_(bindparam("test_ids", expanding=True)), TESTS.c.status == "running")
    .order_by(TESTS.c.test_id)
    .with_for_update()
)
PENDING_TRIALS = select(TRIALS.c.test_id, TRIALS.c.run_id, TRIALS.c.arm, TRIALS.c.counted).where(
    TRIALS.c.run_id.in_(bindparam("run_ids", expanding=True)),
    TRIALS.c.completed_at.is_(None),
    TRIALS.c.deadline >= bindparam("now"),
)
COMPLETE_TRIAL = (
    update(TRIALS)
    .where(
        TRIALS.c.test_id == bindparam("trial_test_id"),
        TRIALS.c.run_id == bindparam("trial_run_id"),
        TRIALS.c.completed_at.is_(None),
    )
    .values(completed_at=bindparam("now"), success=bindparam("trial_success"), fidelity=bindparam("trial_fidelity"))
)


def count_parameters(test_id: int, trials: list[tuple[str, bool, float]]) -> dict[str, Any]:
    """The COUNT_UPDATE parameters that add ``trials`` (arm, success, fidelity) to test ``test_id``."""
    figures: dict[str, Any] = {"count_test_id": test_id}
    for arm in ARMS:
        mine = [(success, fidelity) for trial_arm, success, fidelity in trials if trial_arm == arm]
        figures[f"add_{arm}_trials"] = len(mine)
        figures[f"add_{arm}_successes"] = sum(1 for success, _ in mine if success)
        figures[f"add_{arm}_fidelity_sum"] = float(sum(fidelity for _, fidelity in mine))
    return figures


def complete_trials(conn: Connection, outcomes: Mapping[str, tuple[bool, float]], now: datetime) -> None:
    """Complete runs' pending trials with their first attempts' (success, fidelity), keyed by run id, and add
    them to the counts of the tests they count in; inside the caller's transaction.

    A trial already past its deadline stays as it is: it was counted as a failure, maybe in a verdict already,
    and an outcome arriving after that must not rewrite the evidence; nor does it add to any count. A run with
    a guard and a test beside it counts in both where its trials are counted (the guard's on the test's
    control coin only). A routed outcome whose run has no trial (one never assigned) counts nowhere.
    """
    pending = conn.execute(PENDING_TRIALS, {"run_ids": sorted(outcomes), "now": now}).all()
    if not pending:
        return
    counted = [trial for trial in pending if trial.counted]
    if counted:
        running = conn.execute(LOCK_RUNNING_TESTS, {"test_ids": sorted({t.test_id for t in counted})}).scalars()
        counts = [
            count_parameters(test_id, [(t.arm, *outcomes[t.run_id]) for t in counted if t.test_id == test_id])
            for test_id in running
        ]
        if counts:
            conn.execute(COUNT_UPDATE, counts)
    done = [{"trial_test_id": t.test_id, "trial_run_id": t.run_id, "now": now} for t in pending]
    for row in done:
        row["trial_success"], row["trial_fidelity"] = outcomes[row["trial_run_id"]]
    conn.execute(COMPLETE_TRIAL, done)
