"""scheduler.units and policies.decide_units: units, not runs, are the independent draws."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.policies import decide, decide_units
from scheduler.units import ArmUnits

arm = st.integers(min_value=0, max_value=2000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)
unit = st.integers(min_value=1, max_value=12).flatmap(
    lambda m: st.tuples(st.integers(min_value=0, max_value=m), st.just(m))
)
params = st.fixed_dictionaries(
    {},
    optional={
        "min_detectable_lift": st.sampled_from([0.0, 0.05, 0.1]),
        "min_margin": st.sampled_from([0.0, 0.05]),
        "max_trials_per_arm": st.sampled_from([100, 1000]),
    },
)


@settings(max_examples=100, deadline=None)
@given(control=arm, treatment=arm, extra=params)
def test_single_trial_units_decide_as_counts(
    control: tuple[int, int], treatment: tuple[int, int], extra: dict[str, float]
) -> None:
    by_counts = decide(*control, *treatment, **extra)
    by_units = decide_units(ArmUnits.from_counts(*control), ArmUnits.from_counts(*treatment), **extra)
    assert by_units == by_counts
    listed = decide_units(
        ArmUnits.from_units([(1, 1)] * control[0] + [(0, 1)] * (control[1] - control[0])),
        ArmUnits.from_units([(1, 1)] * treatment[0] + [(0, 1)] * (treatment[1] - treatment[0])),
        **extra,
    )
    assert listed == by_counts


@settings(max_examples=200, deadline=None)
@given(units=st.lists(unit, max_size=60))
def test_from_units_sums(units: list[tuple[int, int]]) -> None:
    arm_units = ArmUnits.from_units(units)
    assert arm_units.units == len(units)
    assert arm_units.trials == sum(m for _, m in units)
    assert arm_units.sum_cross == sum(y * m for y, m in units)
    if units:
        rate = arm_units.rate
        assert rate is not None
        direct = sum((y - rate * m) ** 2 for y, m in units) / arm_units.trials**2
        assert arm_units.squared_deviations(rate) / arm_units.trials**2 == pytest.approx(direct, abs=1e-12)


def test_clustered_units_are_less_evidence_than_their_runs() -> None:
    # 40 users a side, 10 runs each; the treatment's users a little better on average, but users
    # differ a lot: as runs the lift looks decisive, as units it is not.
    control = ArmUnits.from_units([(9, 10)] * 14 + [(2, 10)] * 26)
    treatment = ArmUnits.from_units([(9, 10)] * 22 + [(2, 10)] * 18)
    as_runs = decide(control.successes, control.trials, treatment.successes, treatment.trials)
    as_units = decide_units(control, treatment)
    assert as_runs.winner == "treatment"
    assert as_units.winner is None
    assert as_units.evidence_treatment is not None and as_runs.evidence_treatment is not None
    assert as_units.evidence_treatment < as_runs.evidence_treatment
    assert (as_units.control_units, as_units.control_trials) == (40, 400)


def test_minimum_and_maximum_count_units() -> None:
    many_runs = ArmUnits.from_units([(10, 10)] * 5)
    none_right = ArmUnits.from_units([(0, 10)] * 5)
    waiting = decide_units(none_right, many_runs)
    assert waiting.winner is None and "units" in waiting.reason
    equal = ArmUnits.from_units([(3, 5), (2, 5)] * 50)
    closed = decide_units(equal, equal, max_trials_per_arm=100, min_detectable_lift=0)
    assert (closed.winner, closed.stop) == ("inconclusive", "maximum")


def test_futility_closes_equal_arms_and_only_removes_promotions() -> None:
    equal = decide(700, 1000, 700, 1000, max_trials_per_arm=5000)
    assert (equal.winner, equal.stop) == ("inconclusive", "futility")
    assert equal.futility_evidence is not None and equal.futility_threshold is not None
    assert equal.futility_evidence >= equal.futility_threshold
    off = decide(700, 1000, 700, 1000, max_trials_per_arm=5000, min_detectable_lift=0)
    assert off.winner is None and off.futility_evidence is None
    # A real lift is not closed by futility, and evidence outranks futility at the same look.
    assert decide(700, 1000, 800, 1000).winner == "treatment"
    assert decide(140, 200, 175, 200).stop == "evidence"


@settings(max_examples=200, deadline=None)
@given(control=arm, treatment=arm)
def test_futility_never_adds_a_promotion(control: tuple[int, int], treatment: tuple[int, int]) -> None:
    with_stop = decide(*control, *treatment)
    without = decide(*control, *treatment, min_detectable_lift=0)
    if with_stop.winner == "treatment":
        assert without.winner == "treatment"
    if with_stop.winner != without.winner:
        assert with_stop.stop == "futility"
    assert with_stop.evidence_treatment == without.evidence_treatment


def test_verdict_reason_labels_the_lift_as_observed_at_stopping() -> None:
    decision = decide(140, 200, 175, 200)
    assert "observed lift at stopping" in decision.reason and "biased upward" in decision.reason
    figures = decision.to_dict()
    assert json.loads(json.dumps(figures, allow_nan=False)) == figures
    assert figures["lift_ci_kind"] == "always-valid, normal approximation"


BAD_ARMS = [
    (1, 0, 0, 0, 0, 0),  # units without trials is fine; trials without units is not: see below
    (0, 1, 0, 1, 0, 0),
    (1, 1, 2, 1, 4, 2),
    (1, 2, 0, 3, 0, 0),
    (1, 2, 1, 4, 2, 2),
    (2, 4, 2, 8, 4, 9),
    (-1, 0, 0, 0, 0, 0),
    (True, 1, 1, 1, 1, 1),
    (1.0, 1, 1, 1, 1, 1),
]


@pytest.mark.parametrize("fields", BAD_ARMS[1:])
def test_impossible_sums_are_refused(fields: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        ArmUnits(*fields)  # type: ignore[arg-type]


def test_bad_units_are_refused() -> None:
    assert ArmUnits(*BAD_ARMS[0]).units == 1
    with pytest.raises(ValueError, match="unit 1"):
        ArmUnits.from_units([(1, 1), (3, 2)])
    with pytest.raises(ValueError, match="unit 0"):
        ArmUnits.from_units([(-1, 2)])
    with pytest.raises(ValueError):
        ArmUnits.from_counts(5, 4)
    with pytest.raises(ValueError, match="ArmUnits"):
        decide_units((1, 2), ArmUnits.empty())  # type: ignore[arg-type]


def test_degenerate_units_give_no_figures_not_nan() -> None:
    empty = decide_units(ArmUnits.empty(), ArmUnits.empty())
    assert empty.winner is None and empty.lift is None and empty.futility_evidence is None
    # Every unit exactly at the pooled rate: no spread, no information.
    flat = ArmUnits.from_units([(1, 2)] * 30)
    decision = decide_units(flat, flat)
    assert decision.evidence_treatment == 0.0 and decision.lift_ci_low is None
    assert all(math.isfinite(v) for v in decision.to_dict().values() if isinstance(v, float))


def test_keyed_tests_close_at_the_runs_cap() -> None:
    # 50 users a side cannot reach 1,000 units; at 3 x 1,000 runs per arm the test closes anyway.
    users = [(45, 60), (15, 60)] * 25
    control, treatment = ArmUnits.from_units(users), ArmUnits.from_units(users)
    assert control.trials == 3000
    closed = decide_units(control, treatment, min_detectable_lift=0)
    assert (closed.winner, closed.stop) == ("inconclusive", "maximum")
    assert "3000 runs per arm" in closed.reason
    short = ArmUnits.from_units([(45, 60), (15, 60)] * 24 + [(44, 59), (15, 60)])
    assert decide_units(short, treatment, min_detectable_lift=0).winner is None
    with pytest.raises(ValueError, match="max_runs_factor"):
        decide_units(control, treatment, max_runs_factor=0)
