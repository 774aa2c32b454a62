"""scheduler.health: the sample-ratio mismatch check (an anytime-valid mixture e-value; chi-square reported)."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.health import SRM_P_VALUE, srm_check


@pytest.mark.parametrize(
    ("control", "treatment", "share", "chi2", "p_value"),
    [
        # chi2 = (60 - 50)^2 / 50 * 2 = 4; P(chi2_1 >= 4) = 0.0455003
        (40, 60, 0.5, 4.0, 0.04550026),
        # reference values from scipy.stats.chisquare
        (5000, 5233, 0.5, 5.3051, 0.02126),
        (900, 100, 0.1, 0.0, 1.0),
        # 90/10 expected, 850/150 seen: 50^2/900 + 50^2/100 = 27.78
        (850, 150, 0.1, 27.7778, 1.36080e-7),
    ],
)
def test_chi_square_is_reported(control: int, treatment: int, share: float, chi2: float, p_value: float) -> None:
    check = srm_check(control, treatment, share)
    assert check.chi2 == pytest.approx(chi2, rel=1e-4)
    assert check.chi2_p_value == pytest.approx(p_value, rel=1e-3)


@pytest.mark.parametrize(
    ("control", "treatment", "share", "e_value"),
    [
        # Beta(5, 5) mixture at share 0.5: e = [B(5 + t, 5 + c) / B(5, 5)] / 0.5^(t + c)
        (0, 1, 0.5, 1.0),  # B(6, 5) / B(5, 5) = 5 / 10
        (0, 2, 0.5, 12 / 11),  # B(7, 5) / B(5, 5) = (5 * 6) / (10 * 11)
        (1, 1, 0.5, 10 / 11),  # B(6, 6) / B(5, 5) = (5 * 5) / (10 * 11)
        # Beta(9, 1) at share 0.9, one unit on the holdout: [B(9, 2) / B(9, 1)] / 0.1 = (1 / 10) / 0.1
        (1, 0, 0.9, 1.0),
    ],
)
def test_known_e_values(control: int, treatment: int, share: float, e_value: float) -> None:
    check = srm_check(control, treatment, share)
    assert check.e_value == pytest.approx(e_value, rel=1e-9)
    assert check.p_value == pytest.approx(min(1.0, 1.0 / e_value), rel=1e-9)


def test_a_healthy_split_looked_at_after_every_unit_is_not_paused() -> None:
    """The point of the e-value: its false pauses are bounded by the threshold over all looks, where a
    fixed-sample chi-square asked after every unit pauses some 2.5% of healthy tests (rates in bench/srm)."""
    rng = random.Random(20261130)
    paused = 0
    for _ in range(60):
        control = treatment = 0
        mismatch = False
        for _ in range(2000):
            if rng.random() < 0.5:
                treatment += 1
            else:
                control += 1
            mismatch |= srm_check(control, treatment).mismatch
        paused += mismatch
    assert paused == 0


def test_a_real_mismatch_is_caught() -> None:
    assert srm_check(20, 40, treatment_share=0.9).mismatch  # 6 expected on the holdout, 20 seen
    assert srm_check(4750, 5250).mismatch  # 5% of one arm's units lost
    assert not srm_check(4900, 5100).mismatch


def test_degenerate_and_extreme() -> None:
    assert srm_check(0, 0).p_value == 1.0 and not srm_check(0, 0).mismatch
    assert srm_check(1000, 0).mismatch
    check = srm_check(480, 520)
    assert not check.mismatch
    assert json.loads(json.dumps(check.to_dict(), allow_nan=False)) == check.to_dict()


@pytest.mark.parametrize(
    "args",
    [(-1, 1, 0.5, 0.001), (1, 1.0, 0.5, 0.001), (True, 1, 0.5, 0.001), (1, 1, 0.0, 0.001), (1, 1, 0.5, 1.0)],
)
def test_bad_input_is_refused(args: tuple[object, ...]) -> None:
    with pytest.raises(ValueError):
        srm_check(*args)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(control=st.integers(0, 10**6), treatment=st.integers(0, 10**6), share=st.floats(0.01, 0.99))
def test_p_value_is_a_probability_and_symmetric(control: int, treatment: int, share: float) -> None:
    check = srm_check(control, treatment, share)
    assert 0.0 <= check.p_value <= 1.0 and 0.0 <= check.chi2_p_value <= 1.0 and check.chi2 >= 0.0
    assert check.e_value >= 0.0 and check.mismatch is (check.p_value < SRM_P_VALUE)
    mirror = srm_check(treatment, control, 1.0 - share)
    assert mirror.p_value == pytest.approx(check.p_value, rel=1e-6, abs=1e-300)
    assert mirror.chi2_p_value == pytest.approx(check.chi2_p_value, rel=1e-9, abs=1e-300)


def test_a_holdouts_first_units_are_no_evidence() -> None:
    """A guard's 10% holdout: its first two units landing there is chi-square p = 2e-5, and no evidence of
    broken routing; the e-value needs no floor of expected units to know it."""
    early = srm_check(2, 0, treatment_share=0.9)  # control is the holdout
    assert early.chi2_p_value < 0.001 and not early.mismatch and early.e_value < 2
