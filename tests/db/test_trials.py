"""The trial ledger on real Postgres: assignment, completion, deadlines, the complete prefix, units.

The SQL of ``PatternMemory.cohorts`` is checked against the pure reference rule
(``bench.cohorts.complete_prefix``) on random ledgers, so the store and the simulations agree.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.cohorts import Trial, complete_prefix
from db.memory import OutcomeRecord, PatternMemory
from db.models import TRIALS
from db.trials import ASSIGNMENT_GRACE_SECONDS, unit_key_for
from tests.conftest import truncate_all

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
GRACE = 3.0  # seconds: the store and the reference judge at the same horizon


def _test(memory: PatternMemory, name: str = "s") -> int:
    base = memory.register_skill(name, f"---\nname: {name}\n---\nbase", default_agent="python")
    treatment = memory.store_variation(name, f"---\nname: {name}\n---\nother", parent_version=base)
    return memory.schedule_ab_test(name, base, treatment)


def _outcome(memory: PatternMemory, test_id: int, run_id: str, arm: str, success: bool, attempt: int = 1) -> bool:
    test = memory.get_ab_test(test_id)
    assert test is not None
    return memory.record_attempt(
        OutcomeRecord(
            run_id=run_id,
            attempt=attempt,
            skill_name=test.skill_name,
            variation_id=test.treatment_version if arm == "treatment" else test.control_version,
            agent="python",
            success=success,
            execution_success=True,
            pattern_fidelity=1.0 if success else 0.0,
            test_id=test_id,
            arm=arm,
            final=True,
        )
    )


def test_assignment_is_written_once_and_completed_by_the_first_attempt(memory: PatternMemory) -> None:
    test_id = _test(memory)
    assert memory.assign_trial(test_id, "r1", "treatment", unit_key_for("r1", None), 60) == "treatment"
    # A redelivered first attempt finds the arm on record, whatever it asks for.
    assert memory.assign_trial(test_id, "r1", "control", unit_key_for("r1", None), 60) == "treatment"
    cohort = memory.cohorts([test_id], grace_seconds=0)[test_id]
    assert cohort.pending == 1 and cohort.treatment.units == 0 and cohort.treatment.assigned_units == 1
    assert _outcome(memory, test_id, "r1", "treatment", True)
    assert _outcome(memory, test_id, "r1", "treatment", False, attempt=2)  # a retry: not a trial
    cohort = memory.cohorts([test_id], grace_seconds=0)[test_id]
    assert cohort.pending == 0 and cohort.cutoff is None
    assert (cohort.treatment.units, cohort.treatment.trials, cohort.treatment.successes) == (1, 1, 1)


def test_a_test_that_is_not_running_takes_no_assignment(memory: PatternMemory) -> None:
    test_id = _test(memory)
    memory.stop_ab_test(test_id)
    assert memory.assign_trial(test_id, "r1", "control", "run:r1", 60) is None
    assert memory.cohorts([test_id], grace_seconds=0)[test_id].control.assigned_units == 0


def test_slow_outcomes_hold_back_the_cohort_after_them(memory: PatternMemory) -> None:
    """The early reporters of a cohort never count while a member assigned before them is still out."""
    test_id = _test(memory)
    memory.assign_trial(test_id, "slow", "treatment", "run:slow", 600)
    for i in range(5):
        memory.assign_trial(test_id, f"fast{i}", "control", f"run:fast{i}", 600)
        _outcome(memory, test_id, f"fast{i}", "control", True)
    cohort = memory.cohorts([test_id], grace_seconds=0)[test_id]
    assert cohort.control.units == 0 and cohort.excluded == 5 and cohort.pending == 1
    _outcome(memory, test_id, "slow", "treatment", False)
    cohort = memory.cohorts([test_id], grace_seconds=0)[test_id]
    assert (cohort.control.units, cohort.treatment.units, cohort.excluded) == (5, 1, 0)


def test_a_trial_past_its_deadline_counts_as_a_failure_and_stays_one(memory: PatternMemory) -> None:
    test_id = _test(memory)
    memory.assign_trial(test_id, "lost", "treatment", "run:lost", 0.0)
    later = datetime.now(UTC) + timedelta(seconds=1)
    cohort = memory.cohorts([test_id], now=later, grace_seconds=0)[test_id]
    assert cohort.expired == 1 and cohort.pending == 0
    assert (cohort.treatment.units, cohort.treatment.trials, cohort.treatment.successes) == (1, 1, 0)
    # An outcome after the deadline does not rewrite the evidence.
    _outcome(memory, test_id, "lost", "treatment", True)
    assert memory.cohorts([test_id], now=later, grace_seconds=0)[test_id].treatment.successes == 0
    # With the grace, the same trial is not yet expired (a late commit could still complete it) nor counted.
    waiting = memory.cohorts([test_id], now=later)[test_id]
    assert waiting.expired == 0 and waiting.treatment.trials == 0


def test_a_key_is_one_unit_however_many_runs_it_has(memory: PatternMemory) -> None:
    test_id = _test(memory)
    for i in range(4):
        memory.assign_trial(test_id, f"u{i}", "control", unit_key_for(f"u{i}", "user-1"), 60)
        _outcome(memory, test_id, f"u{i}", "control", i % 2 == 0)
    memory.assign_trial(test_id, "v", "control", unit_key_for("v", None), 60)
    _outcome(memory, test_id, "v", "control", True)
    arm = memory.cohorts([test_id], grace_seconds=0)[test_id].control
    assert (arm.units, arm.trials, arm.successes) == (2, 5, 3)
    assert (arm.sum_trials_sq, arm.sum_successes_sq, arm.sum_cross) == (4**2 + 1, 2**2 + 1, 2 * 4 + 1)


_trial = st.tuples(
    st.integers(0, 5),  # unit
    st.booleans(),  # treatment?
    st.integers(0, 50),  # assigned at (s)
    st.integers(0, 40),  # time limit (s)
    st.sampled_from([None, True, False]),  # outcome
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_trial, max_size=25), st.integers(0, 100))
def test_the_store_and_the_reference_rule_agree(
    memory: PatternMemory, rows: list[tuple[int, bool, int, int, bool | None]], now_s: int
) -> None:
    truncate_all(memory)
    test_id = _test(memory)
    trials = []
    with memory.transaction() as conn:
        for i, (unit, treatment, assigned, limit, outcome) in enumerate(rows):
            arm = "treatment" if treatment else "control"
            assigned_at, deadline = EPOCH + timedelta(seconds=assigned), EPOCH + timedelta(seconds=assigned + limit)
            conn.execute(
                TRIALS.insert().values(
                    test_id=test_id,
                    run_id=f"r{i}",
                    unit_key=f"key:{unit}",
                    arm=arm,
                    assigned_at=assigned_at,
                    deadline=deadline,
                    completed_at=None if outcome is None else assigned_at,
                    success=outcome,
                )
            )
            trials.append(Trial(f"key:{unit}", arm, float(assigned), float(assigned + limit), outcome))
    stored = memory.cohorts([test_id], now=EPOCH + timedelta(seconds=now_s), grace_seconds=GRACE)[test_id]
    reference = complete_prefix(trials, float(now_s), grace=GRACE)
    for arm in ("control", "treatment"):
        ours, theirs = getattr(stored, arm), getattr(reference, arm)
        assert (ours.units, ours.trials, ours.successes) == (theirs.units, theirs.trials, theirs.successes)
        assert (ours.sum_trials_sq, ours.sum_successes_sq, ours.sum_cross) == (
            theirs.sum_trials_sq,
            theirs.sum_successes_sq,
            theirs.sum_cross,
        )
    assert (stored.pending, stored.expired, stored.excluded) == (reference.pending, reference.expired, reference.excluded)
    expected_cutoff = None if reference.cutoff is None else EPOCH + timedelta(seconds=reference.cutoff)
    assert stored.cutoff == expected_cutoff


def test_cohorts_of_many_tests_in_one_read(memory: PatternMemory) -> None:
    ids = [_test(memory, f"s{i}") for i in range(3)]
    rng = random.Random(7)
    for test_id in ids:
        for i in range(10):
            arm = rng.choice(["control", "treatment"])
            memory.assign_trial(test_id, f"{test_id}-{i}", arm, f"run:{test_id}-{i}", 60)
            _outcome(memory, test_id, f"{test_id}-{i}", arm, rng.random() < 0.5)
    cohorts = memory.cohorts(ids, grace_seconds=0)
    assert sorted(cohorts) == ids
    assert all(c.control.units + c.treatment.units == 10 for c in cohorts.values())


@pytest.mark.parametrize("kind", ["control", "treatment"])
def test_the_seeds_record_ab_outcome_feeds_the_ledger(memory: PatternMemory, kind: str) -> None:
    test_id = _test(memory)
    memory.record_ab_outcome(test_id, kind, True)
    memory.record_ab_outcome(test_id, kind, False)
    arm = getattr(memory.cohorts([test_id], grace_seconds=0)[test_id], kind)
    assert (arm.units, arm.trials, arm.successes) == (2, 2, 1)


def test_a_trial_just_assigned_waits_out_the_grace(memory: PatternMemory) -> None:
    """Rows are stamped before they commit: one assigned in the last few seconds may not be visible to a
    verdict yet, so the verdict does not count what was assigned after it either."""
    test_id = _test(memory)
    memory.assign_trial(test_id, "r1", "control", "run:r1", 60)
    _outcome(memory, test_id, "r1", "control", True)
    now = datetime.now(UTC)
    assert memory.cohorts([test_id], now=now)[test_id].control.trials == 0
    assert memory.cohorts([test_id], now=now)[test_id].excluded == 1
    later = now + timedelta(seconds=ASSIGNMENT_GRACE_SECONDS + 1)
    assert memory.cohorts([test_id], now=later)[test_id].control.trials == 1
