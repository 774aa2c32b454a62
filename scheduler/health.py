"""Health of a test before any verdict: the sample-ratio mismatch (SRM) check.

Pure (stdlib ``math`` only). The router hashes (test, unit) to an arm, so the arms' unit counts follow a
binomial with the routing share. A count far outside it means units are lost or duplicated on one arm
(a crash between assignment and the ledger write, a key that changes arm, a bot on one arm): the
randomisation every verdict rests on no longer holds, so the test is paused and never promoted.

The check is asked at every look, like the verdicts, so it must stay valid however often it looks. A
fixed-sample chi-square at p < 0.001 does not: asked after every unit of a healthy test it flags some 2.5% of
tests within 2,000 units, and each false pause stops a skill's improvement until an operator acts. So the
decision is an anytime-valid test of the multinomial counts (Lindon & Malek, "Anytime-valid inference for
multinomial count data", 2022, the sequential SRM check used by Optimizely and Eppo): the Bayes factor of a
Beta mixture around the routing share against the share itself is an e-process, and by Ville's inequality a
healthy test ever reaches ``1 / p_threshold`` with probability at most ``p_threshold``, over its whole life.
Pearson's chi-square (GrowthBook's gbstats check) is still reported, as the familiar figure.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Final

from scheduler.units import as_count, as_real

#: The chance of pausing a healthy test at any look over its whole life (GrowthBook's chi-square default).
SRM_P_VALUE: Final = 0.001
#: The mixture's prior weight, in units: Beta(k * share, k * (1 - share)). Small enough that a gross mismatch
#: on a few dozen units is caught (a 10% holdout with 20 of 60 units: e-value ~10,000), large enough that a
#: shift of a few points is caught within some thousands of units.
SRM_PRIOR_UNITS: Final = 10.0
#: The routers' share of units on the treatment arm of a test.
TREATMENT_SHARE: Final = 0.5


@dataclass(frozen=True)
class SrmCheck:
    """The arms' unit counts against the routing share.

    Attributes:
        control_units, treatment_units: the counts checked.
        treatment_share: the expected share of units on the treatment arm.
        e_value: the mixture's Bayes factor against the share (1.0 without units): the evidence of a mismatch.
        p_value: the anytime-valid p-value, min(1, 1 / e_value).
        mismatch: p_value < the threshold used (e_value > 1 / threshold).
        chi2, chi2_p_value: Pearson's statistic and its fixed-sample p-value (reported, not decided on).
        p_threshold: the threshold used.
    """

    control_units: int
    treatment_units: int
    treatment_share: float
    e_value: float
    p_value: float
    mismatch: bool
    chi2: float
    chi2_p_value: float
    p_threshold: float = SRM_P_VALUE

    def to_dict(self) -> dict[str, int | float | bool]:
        return asdict(self)


def srm_check(
    control_units: int,
    treatment_units: int,
    treatment_share: float = TREATMENT_SHARE,
    p_threshold: float = SRM_P_VALUE,
) -> SrmCheck:
    """Do the arms' unit counts depart from ``treatment_share`` beyond chance, at any look?

    Raises:
        ValueError: a count that is not an int >= 0, a share or threshold outside (0, 1).
    """
    control = as_count("control_units", control_units)
    treatment = as_count("treatment_units", treatment_units)
    share = as_real("treatment_share", treatment_share, 0.0, 1.0)
    threshold = as_real("p_threshold", p_threshold, 0.0, 1.0)
    total = control + treatment
    if not total:
        return SrmCheck(control, treatment, share, 1.0, 1.0, False, 0.0, 1.0, threshold)
    log_e = _log_e_value(control, treatment, share)
    # Past ~1e300 the figure is all the same: a mismatch; keep it a finite JSON number.
    e_value = math.exp(min(log_e, 690.0))
    p_value = math.exp(-max(log_e, 0.0))  # min(1, 1 / e_value)
    expected_treatment, expected_control = total * share, total * (1.0 - share)
    chi2 = (treatment - expected_treatment) ** 2 / expected_treatment + (
        control - expected_control
    ) ** 2 / expected_control
    chi2_p = math.erfc(math.sqrt(chi2 / 2.0))
    return SrmCheck(control, treatment, share, e_value, p_value, p_value < threshold, chi2, chi2_p, threshold)


def _log_e_value(control: int, treatment: int, share: float) -> float:
    """log of the Beta-binomial mixture's likelihood over the binomial's at ``share`` (the binomial
    coefficients cancel)."""
    a, b = SRM_PRIOR_UNITS * share, SRM_PRIOR_UNITS * (1.0 - share)
    mixture = _log_beta(a + treatment, b + control) - _log_beta(a, b)
    null = treatment * math.log(share) + control * math.log1p(-share)
    return mixture - null


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
