"""The guard after a promotion: roll back a regression, confirm a clean period.

Pure (stdlib ``math`` only); docs/STATISTICS.md ("The guard") has the figures.

After a promotion the new production version serves ``1 - holdout_share`` of the units and the previous
production version keeps ``holdout_share`` (the holdout) for a guard period, as in LaunchDarkly's guarded
rollouts. The promotion's own test cannot catch what changes after it (novelty that wears off, drift
that reverses a small lift) and its lift at stopping is biased upward; the holdout measures the promoted
version against the one it replaced, on the same traffic, afterwards.

- **Rollback**: a one-sided always-valid test of "production is worse than the holdout". The difference
  of the arms' ratio-of-sums rates ``d = r_prod - r_hold`` with its *unpooled* delta-method variance over
  units ``W = W_prod + W_hold`` (each arm's own spread, so a 10% holdout costs what it costs and no
  balance factor for 50/50 splits weakens the test), and a half-normal mixture over the size of the
  regression (the one-sided normal-mixture mSPRT of the policies, on ``-d``). Under "production is
  as good or better", the e-value reaches ``1 / alpha`` with probability at most ``alpha`` at any look
  (Ville; normal approximation with the variance plugged in).
- **Early confirm** (not before ``min_confirm_units``): the sequential probability ratio test of "regression of ``max_regression``"
  against "no regression": ``log C = eps * (d + eps / 2) / W``. Reaching ``log(1 / confirm_alpha)``
  rules out a regression of ``eps`` or more at that level, at any look, and ends the guard (and its
  holdout) before the period ends.
- **Confirm at the end**: the period (``guard_units`` units in both arms) ends without a rollback
  (whatever ``min_confirm_units`` says: a period shorter than the floor ends at its own length).

A variance floor keeps a degenerate arm (all successes or all failures so far) from claiming infinite
precision: each arm's variance is at least the binomial one of its trials at a smoothed rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias

from scheduler.health import srm_check
from scheduler.policies import Parametrised, one_sided_log_evidence
from scheduler.units import ArmUnits, as_count, as_real, check_arms, null_variance, set_checked

GuardWinner: TypeAlias = Literal["rollback", "confirm"] | None
GuardStop: TypeAlias = Literal["regression", "clean", "period"] | None

#: Share of units kept on the holdout version (the last confirmed production version) during the guard.
HOLDOUT_SHARE: Final = 0.10
#: Level of the rollback test: a promotion as good as the version it replaced (or better) is rolled
#: back with probability at most this, however often the guard looks.
GUARD_ALPHA: Final = 0.01
#: Length of the guard period in units (both arms): the guard confirms when it ends clean.
GUARD_UNITS: Final = 5000
#: The shortest guard: no confirm before this many units (both arms). An early confirm assumes the
#: promoted version behaves now as it will later; novelty that wears off breaks that, and this floor is
#: what lets the guard see the end of a novelty effect before it can confirm (docs/STATISTICS.md).
GUARD_MIN_CONFIRM_UNITS: Final = 1000
#: No verdict at all before each arm (the holdout is the small one) has this many units: the normal
#: approximation behind the e-value is poor below it (the same floor as the policies' per-arm minimum).
GUARD_MIN_UNITS: Final = 20
#: The smallest regression worth a rollback (absolute points): the early confirm rules it out.
GUARD_MAX_REGRESSION: Final = 0.10
#: Level of the early confirm: a regression of ``GUARD_MAX_REGRESSION`` or more is confirmed early with
#: probability at most this.
GUARD_CONFIRM_ALPHA: Final = 0.05
#: sd of the half-normal mixing distribution over the size of a regression.
GUARD_MIXING_SD: Final = 0.10

# Pseudo-counts for the variance floor: the binomial variance at (s + 1/2) / (m + 1).
_FLOOR_PRIOR: Final = 0.5


@dataclass(frozen=True)
class GuardPolicy(Parametrised):
    """The guard's parameters, checked on construction (see ``guard_decide``)."""

    holdout_share: float = HOLDOUT_SHARE
    alpha: float = GUARD_ALPHA
    guard_units: int = GUARD_UNITS
    min_confirm_units: int = GUARD_MIN_CONFIRM_UNITS
    min_units: int = GUARD_MIN_UNITS
    max_regression: float = GUARD_MAX_REGRESSION
    confirm_alpha: float = GUARD_CONFIRM_ALPHA
    mixing_sd: float = GUARD_MIXING_SD

    NAME: ClassVar[str] = "the guard"

    def __post_init__(self) -> None:
        min_units = as_count("min_units", self.min_units, minimum=1)
        set_checked(
            self,
            holdout_share=as_real("holdout_share", self.holdout_share, 0.0, 1.0),
            alpha=as_real("alpha", self.alpha, 0.0, 1.0),
            max_regression=as_real("max_regression", self.max_regression, 0.0, 1.0, low_open=False),
            confirm_alpha=as_real("confirm_alpha", self.confirm_alpha, 0.0, 1.0),
            mixing_sd=as_real("mixing_sd", self.mixing_sd, 0.0, 1.0, high_open=False),
            min_confirm_units=as_count("min_confirm_units", self.min_confirm_units),
            guard_units=as_count("guard_units", self.guard_units, minimum=min_units),
            min_units=min_units,
        )

    @property
    def threshold(self) -> float:
        return math.log(1.0 / self.alpha)

    @property
    def confirm_threshold(self) -> float:
        return math.log(1.0 / self.confirm_alpha)


@dataclass(frozen=True)
class GuardVerdict:
    """What the guard decided, and the figures behind it (None, never NaN, where a figure is missing).

    Attributes:
        verdict: ``"rollback"`` (production is worse than the holdout), ``"confirm"`` (the period
            ended clean, or a regression of ``max_regression`` is ruled out), or None (keep guarding).
        stop: ``"regression"``, ``"clean"`` (early confirm), ``"period"`` (confirm at the end), None.
        production_rate, holdout_rate: ratio-of-sums success rates (None without trials).
        difference: production_rate - holdout_rate: the honest estimate of what the promotion changed.
        standard_error: sqrt of the variance of ``difference`` (None without information).
        evidence_regression: log e-value for "production is worse" (0 without information);
            threshold: log(1 / alpha).
        evidence_clean: log likelihood ratio of "no regression" against "regression of
            max_regression" (None without information or with max_regression 0);
            confirm_threshold: log(1 / confirm_alpha).
        srm_p_value, srm_mismatch: the sample-ratio check of the units against the holdout share.
    """

    verdict: GuardWinner
    reason: str
    stop: GuardStop
    production_units: int
    holdout_units: int
    production_trials: int
    holdout_trials: int
    production_rate: float | None
    holdout_rate: float | None
    difference: float | None
    standard_error: float | None
    evidence_regression: float
    threshold: float
    evidence_clean: float | None
    confirm_threshold: float
    srm_p_value: float
    srm_mismatch: bool
    params: Mapping[str, float | int] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able values (stored in Postgres JSON columns)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "params": dict(self.params)}


def _variance(production: ArmUnits, holdout: ArmUnits) -> float | None:
    """Variance of production_rate - holdout_rate under "no difference", over units; None without trials.

    Deviations from the *pooled* rate (units.null_variance): an arm's own rate would make a lucky holdout
    look precise exactly when it looks good, which measurably doubled the false rollbacks of a 10% holdout.
    Floored by the binomial variance at a smoothed pooled rate, so that arms without any spread yet (all
    successes, all failures) cannot claim infinite precision.
    """
    delta = null_variance(production, holdout)
    if delta is None:
        return None
    both = production + holdout
    smoothed = (both.successes + _FLOOR_PRIOR) / (both.trials + 2 * _FLOOR_PRIOR)
    floor = smoothed * (1.0 - smoothed) * (1.0 / production.trials + 1.0 / holdout.trials)
    return max(delta, floor)


def guard_decide(
    production: ArmUnits, holdout: ArmUnits, holdout_share: float = HOLDOUT_SHARE, **params: Any
) -> GuardVerdict:
    """Decide the guard of a promotion from the arms' units.

    Args:
        production: units served by the promoted version since the promotion.
        holdout: units served by the holdout version (the last confirmed production version) since then.
        holdout_share: the routing share of the holdout (for the sample-ratio check), in (0, 1).
        **params: the other fields of GuardPolicy (defaults: the GUARD_* constants); ``max_regression`` 0
            turns the early confirm off.

    Raises:
        ValueError: an arm that is not an ArmUnits, an unknown parameter, or one out of range.
    """
    check_arms(production=production, holdout=holdout)
    policy = GuardPolicy.from_params({**params, "holdout_share": holdout_share})
    # The holdout plays the treatment role of srm_check: its expected share is holdout_share.
    srm = srm_check(production.units, holdout.units, policy.holdout_share)
    variance = _variance(production, holdout)
    difference = standard_error = clean = None
    regression = 0.0
    if production.rate is not None and holdout.rate is not None:
        difference = production.rate - holdout.rate
    if difference is not None and variance is not None:
        standard_error = math.sqrt(variance)
        regression = one_sided_log_evidence(-difference, variance, policy.mixing_sd)
        eps = policy.max_regression
        if eps > 0.0:
            clean = eps * (difference + eps / 2.0) / variance
    verdict, stop, reason = _verdict(policy, production, holdout, difference, regression, clean)
    return GuardVerdict(
        verdict=verdict,
        reason=reason,
        stop=stop,
        production_units=production.units,
        holdout_units=holdout.units,
        production_trials=production.trials,
        holdout_trials=holdout.trials,
        production_rate=production.rate,
        holdout_rate=holdout.rate,
        difference=difference,
        standard_error=standard_error,
        evidence_regression=regression,
        threshold=policy.threshold,
        evidence_clean=clean,
        confirm_threshold=policy.confirm_threshold,
        srm_p_value=srm.p_value,
        srm_mismatch=srm.mismatch,
        params=policy.params,
    )


def _verdict(
    policy: GuardPolicy,
    production: ArmUnits,
    holdout: ArmUnits,
    difference: float | None,
    regression: float,
    clean: float | None,
) -> tuple[GuardWinner, GuardStop, str]:
    units = production.units + holdout.units
    if min(holdout.units, production.units) < policy.min_units:
        return (
            None,
            None,
            (
                f"guarding: {holdout.units} holdout and {production.units} production units, "
                f"a verdict needs {policy.min_units} on each"
            ),
        )
    shown = f"production - holdout {difference:+.4f}" if difference is not None else "no difference yet"
    if regression >= policy.threshold:
        return (
            "rollback",
            "regression",
            (
                f"rollback: production worse than the holdout ({shown}; log e-value {regression:.3f} "
                f">= {policy.threshold:.3f}) after {units} units"
            ),
        )
    if units >= policy.guard_units:
        return (
            "confirm",
            "period",
            f"confirm: guard period of {policy.guard_units} units ended clean ({shown})",
        )
    if units < policy.min_confirm_units:
        return None, None, f"guarding: {shown}, {units} units, a confirm needs {policy.min_confirm_units}"
    if clean is not None and clean >= policy.confirm_threshold:
        return (
            "confirm",
            "clean",
            (
                f"confirm: a regression of {policy.max_regression} is ruled out ({shown}; log LR "
                f"{clean:.3f} >= {policy.confirm_threshold:.3f}) after {units} units"
            ),
        )
    return None, None, f"guarding: {shown}, {units} of {policy.guard_units} units"
