"""Health of a test before any verdict: the sample-ratio mismatch (SRM) check.

Pure (stdlib ``math`` only). The router hashes (test, unit) to an arm, so the arms' unit counts follow a
binomial with the routing share. A count far outside it means units are lost or duplicated on one arm
(a crash between assignment and the ledger write, a key that changes arm, a bot on one arm): the
randomisation every verdict rests on no longer holds, so the test is paused and never promoted.

As GrowthBook's gbstats does it: Pearson's chi-square with one degree of freedom on the unit counts
against the expected split, flagged below a small p-value (many tests are checked many times, so the
threshold is strict). For one degree of freedom ``P(chi2_1 > x) = erfc(sqrt(x / 2))``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final

from scheduler.units import as_count

#: p-value below which the split counts as mismatched (GrowthBook's default).
SRM_P_VALUE: Final = 0.001
#: No mismatch is declared while either arm expects fewer units than this: the chi-square approximation is
#: poor there (the classic rule of five), and a guard's 10% holdout would otherwise be paused by its first two
#: units landing on the holdout (p = 2e-5).
SRM_MIN_EXPECTED: Final = 5.0
#: The routers' share of units on the treatment arm of a test.
TREATMENT_SHARE: Final = 0.5


@dataclass(frozen=True)
class SrmCheck:
    """The chi-square test of the arms' unit counts against the routing share.

    Attributes:
        control_units, treatment_units: the counts checked.
        treatment_share: the expected share of units on the treatment arm.
        chi2: Pearson's statistic (0.0 without units).
        p_value: P(chi2_1 >= chi2); 1.0 without units.
        mismatch: p_value < the threshold used.
        p_threshold: that threshold.
    """

    control_units: int
    treatment_units: int
    treatment_share: float
    chi2: float
    p_value: float
    mismatch: bool
    p_threshold: float = SRM_P_VALUE

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


def _share(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not 0.0 < number < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {number!r}")
    return number


def srm_check(
    control_units: int,
    treatment_units: int,
    treatment_share: float = TREATMENT_SHARE,
    p_threshold: float = SRM_P_VALUE,
) -> SrmCheck:
    """Do the arms' unit counts depart from ``treatment_share`` beyond chance?

    Never while either arm expects fewer than ``SRM_MIN_EXPECTED`` units (the p-value is still reported).

    Raises:
        ValueError: a count that is not an int >= 0, a share or threshold outside (0, 1).
    """
    control = as_count("control_units", control_units)
    treatment = as_count("treatment_units", treatment_units)
    share = _share("treatment_share", treatment_share)
    threshold = _share("p_threshold", p_threshold)
    total = control + treatment
    if not total:
        return SrmCheck(control, treatment, share, 0.0, 1.0, False, threshold)
    expected_treatment, expected_control = total * share, total * (1.0 - share)
    chi2 = (treatment - expected_treatment) ** 2 / expected_treatment + (
        control - expected_control
    ) ** 2 / expected_control
    p_value = math.erfc(math.sqrt(chi2 / 2.0))
    enough = min(expected_treatment, expected_control) >= SRM_MIN_EXPECTED
    return SrmCheck(control, treatment, share, chi2, p_value, enough and p_value < threshold, threshold)
