"""scheduler.guard: rollback of a regression after a promotion, confirm of a clean period."""

from __future__ import annotations

import json
import math

import pytest

from scheduler.guard import (
    GUARD_ALPHA,
    GUARD_MIN_CONFIRM_UNITS,
    GUARD_MIN_UNITS,
    GUARD_UNITS,
    HOLDOUT_SHARE,
    guard_decide,
)
from scheduler.units import ArmUnits


def arms(production: tuple[int, int], holdout: tuple[int, int]) -> tuple[ArmUnits, ArmUnits]:
    return ArmUnits.from_counts(*production), ArmUnits.from_counts(*holdout)


def test_identical_arms_never_roll_back() -> None:
    # Deterministic fixture: both arms at exactly 70% at every size the guard may see.
    for holdout_units in range(GUARD_MIN_UNITS, 600, 10):
        production_units = 9 * holdout_units
        verdict = guard_decide(
            *arms((production_units * 7 // 10, production_units), (holdout_units * 7 // 10, holdout_units))
        )
        assert verdict.verdict != "rollback"
        assert verdict.evidence_regression < verdict.threshold


def test_a_large_regression_rolls_back() -> None:
    verdict = guard_decide(*arms((540, 1800), (140, 200)))  # 30% against 70%
    assert verdict.verdict == "rollback" and verdict.stop == "regression"
    assert verdict.difference == pytest.approx(-0.4)
    assert "rollback" in verdict.reason
    assert verdict.threshold == pytest.approx(math.log(1 / GUARD_ALPHA))


def test_all_failures_against_all_successes_is_not_infinitely_precise() -> None:
    # Zero spread in both arms: the variance floor keeps the figures finite and decides sensibly.
    verdict = guard_decide(*arms((0, 360), (40, 40)))
    assert verdict.verdict == "rollback"
    assert verdict.standard_error is not None and verdict.standard_error > 0
    same = guard_decide(*arms((180, 180), (20, 20)))
    assert same.verdict != "rollback"


def test_confirm_early_when_a_regression_is_ruled_out_and_at_the_end() -> None:
    better = guard_decide(*arms((2250, 2700), (210, 300)))  # 83% against 70%
    assert (better.verdict, better.stop) == ("confirm", "clean")
    ended = guard_decide(*arms((3150, 4500), (350, 500)), max_regression=0.0)
    assert (ended.verdict, ended.stop) == ("confirm", "period")
    assert ended.evidence_clean is None
    assert guard_decide(*arms((3149, 4499), (350, 500)), max_regression=0.0).verdict is None
    assert GUARD_UNITS == 4499 + 500 + 1


def test_no_confirm_before_the_shortest_guard() -> None:
    # Far better at once (novelty looks like this): still no confirm before GUARD_MIN_CONFIRM_UNITS.
    early = guard_decide(*arms((855, 900), (69, 99)))  # 999 units
    assert early.verdict is None and early.evidence_clean is not None
    assert early.evidence_clean >= early.confirm_threshold
    assert "a confirm needs" in early.reason
    at_floor = guard_decide(*arms((855, 900), (69, 99)), min_confirm_units=GUARD_MIN_CONFIRM_UNITS - 1)
    assert (at_floor.verdict, at_floor.stop) == ("confirm", "clean")


def test_no_verdict_before_the_minimum_holdout() -> None:
    verdict = guard_decide(*arms((0, 500), (GUARD_MIN_UNITS - 1, GUARD_MIN_UNITS - 1)))
    assert verdict.verdict is None and "holdout" in verdict.reason


def test_degenerate_and_json() -> None:
    empty = guard_decide(ArmUnits.empty(), ArmUnits.empty())
    assert empty.verdict is None and empty.difference is None and empty.standard_error is None
    assert empty.srm_p_value == 1.0
    for verdict in (empty, guard_decide(*arms((630, 900), (70, 100)))):
        figures = verdict.to_dict()
        assert json.loads(json.dumps(figures, allow_nan=False)) == figures
    assert guard_decide(ArmUnits.empty(), ArmUnits.empty()).params["holdout_share"] == HOLDOUT_SHARE


def test_sample_ratio_is_checked_against_the_holdout_share() -> None:
    assert not guard_decide(*arms((630, 900), (70, 100))).srm_mismatch
    assert guard_decide(*arms((350, 500), (350, 500))).srm_mismatch
    assert not guard_decide(*arms((350, 500), (350, 500)), holdout_share=0.5).srm_mismatch


@pytest.mark.parametrize(
    "params",
    [
        {"alpha": 0},
        {"alpha": 1.5},
        {"guard_units": 10},
        {"min_units": 0},
        {"min_confirm_units": -1},
        {"min_units": 30, "guard_units": 29},
        {"max_regression": -0.1},
        {"confirm_alpha": 1},
        {"mixing_sd": 0},
        {"holdout_share": 0.0},
        {"alpah": 0.01},
        {"alpha": "0.01"},
    ],
)
def test_bad_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        guard_decide(ArmUnits.empty(), ArmUnits.empty(), **params)


def test_bad_arms_are_refused() -> None:
    with pytest.raises(ValueError, match="ArmUnits"):
        guard_decide((1, 2), ArmUnits.empty())  # type: ignore[arg-type]


def test_a_period_shorter_than_the_confirm_floor_still_ends() -> None:
    verdict = guard_decide(*arms((180, 200), (25, 50)), holdout_share=0.2, guard_units=200)
    assert (verdict.verdict, verdict.stop) == ("confirm", "period")
    assert guard_decide(*arms((180, 199), (25, 50)), guard_units=250).verdict is None
