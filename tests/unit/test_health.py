"""scheduler.health: the sample-ratio mismatch check (chi-square, one degree of freedom)."""

from __future__ import annotations

import json

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
def test_known_values(control: int, treatment: int, share: float, chi2: float, p_value: float) -> None:
    check = srm_check(control, treatment, share)
    assert check.chi2 == pytest.approx(chi2, rel=1e-4)
    assert check.p_value == pytest.approx(p_value, rel=1e-3)
    assert check.mismatch is (p_value < SRM_P_VALUE)


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
    assert 0.0 <= check.p_value <= 1.0 and check.chi2 >= 0.0
    mirror = srm_check(treatment, control, 1.0 - share)
    assert mirror.p_value == pytest.approx(check.p_value, rel=1e-9, abs=1e-300)


def test_no_mismatch_while_an_arm_expects_too_few_units() -> None:
    """A guard's 10% holdout: its first two units landing there is p = 2e-5, and no evidence of broken routing."""
    early = srm_check(2, 0, treatment_share=0.9)  # control is the holdout
    assert early.p_value < 0.001 and not early.mismatch
    assert srm_check(20, 40, treatment_share=0.9).mismatch  # 6 expected on the holdout: judged
