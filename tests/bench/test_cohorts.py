"""bench.cohorts: the complete-prefix rule the ledger's SQL must agree with (pure: no services)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.cohorts import Trial, complete_prefix
from scheduler.units import ArmUnits


def trial(unit: str, arm: str, at: float, success: bool | None, deadline: float | None = None) -> Trial:
    return Trial(unit, arm, at, at + 60.0 if deadline is None else deadline, success)  # type: ignore[arg-type]


def test_slow_failures_wait_for_their_cohort() -> None:
    # The treatment's two failures are still out; its later successes must not count before them.
    trials = [
        trial("a", "control", 0, True),
        trial("b", "treatment", 1, None),
        trial("c", "control", 2, False),
        trial("d", "treatment", 3, True),
        trial("e", "treatment", 4, None),
        trial("f", "treatment", 5, True),
    ]
    cohort = complete_prefix(trials, now=10)
    assert cohort.cutoff == 1
    assert cohort.control == ArmUnits.from_counts(1, 1) and cohort.treatment == ArmUnits.empty()
    assert (cohort.pending, cohort.expired, cohort.excluded) == (2, 0, 3)


def test_expired_trials_count_as_failures_and_release_the_prefix() -> None:
    trials = [trial("a", "treatment", 0, None, deadline=30), trial("b", "control", 1, True)]
    before = complete_prefix(trials, now=30)  # deadline not passed yet (deadline < now is needed)
    assert before.cutoff == 0 and before.treatment.units == 0
    after = complete_prefix(trials, now=31)
    assert after.cutoff is None and after.expired == 1
    assert after.treatment == ArmUnits.from_counts(0, 1)
    assert after.control == ArmUnits.from_counts(1, 1)
    # A recorded outcome replaces the expiry.
    late = complete_prefix([trial("a", "treatment", 0, True, deadline=30)], now=31)
    assert late.treatment == ArmUnits.from_counts(1, 1) and late.expired == 0


def test_runs_of_a_key_are_one_unit() -> None:
    trials = [trial("user-1", "control", t, t % 2 == 0) for t in range(6)]
    trials += [trial("user-2", "control", 10, True), trial("user-3", "treatment", 11, False)]
    cohort = complete_prefix(trials, now=12)
    assert cohort.control == ArmUnits.from_units([(3, 6), (1, 1)])
    assert cohort.treatment == ArmUnits.from_units([(0, 1)])


@pytest.mark.parametrize(
    "bad",
    [
        dict(unit="", arm="control", assigned_at=0.0, deadline=1.0, success=None),
        dict(unit="u", arm="both", assigned_at=0.0, deadline=1.0, success=None),
        dict(unit="u", arm="control", assigned_at=float("nan"), deadline=1.0, success=None),
        dict(unit="u", arm="control", assigned_at=5.0, deadline=1.0, success=None),
        dict(unit="u", arm="control", assigned_at=0.0, deadline=1.0, success=1),
    ],
)
def test_bad_trials_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Trial(**bad)  # type: ignore[arg-type]


trials_strategy = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3", "u4", "u5", "u6"]),
        st.sampled_from(["control", "treatment"]),
        st.integers(min_value=0, max_value=100),
        st.sampled_from([True, False, None]),
    ).map(lambda t: Trial(t[0], t[1], float(t[2]), t[2] + 30.0, t[3])),  # type: ignore[arg-type]
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(trials=trials_strategy, now=st.integers(min_value=0, max_value=200).map(float))
def test_the_prefix_rule(trials: list[Trial], now: float) -> None:
    cohort = complete_prefix(trials, now)
    waiting = [t for t in trials if t.success is None and t.deadline >= now]
    counted = [
        t
        for t in trials
        if not (t.success is None and t.deadline >= now)
        and (cohort.cutoff is None or t.assigned_at < cohort.cutoff)
        and t.assigned_at < now  # the horizon (no grace here): a trial assigned at `now` may not be visible yet
    ]
    # Never a trial assigned at or after the cutoff; nothing pending before it.
    if cohort.cutoff is not None:
        assert cohort.cutoff == min(t.assigned_at for t in waiting)
        assert all(t.assigned_at >= cohort.cutoff for t in waiting)
    else:
        assert not waiting
    assert cohort.control.trials + cohort.treatment.trials == len(counted)
    assert cohort.pending + cohort.excluded + len(counted) == len(trials)
    assert cohort.control.successes + cohort.treatment.successes == sum(1 for t in counted if t.success)
    # Delay cannot move the prefix backwards: recording any pending outcome never removes a trial.
    if waiting:
        first = min(waiting, key=lambda t: t.assigned_at)
        recorded = [
            Trial(t.unit, t.arm, t.assigned_at, t.deadline, False) if t is first else t for t in trials
        ]
        later = complete_prefix(recorded, now)
        assert later.control.trials + later.treatment.trials >= len(counted)
