"""Promotion policies for A/B tests of skill variations: counts or units in, a decision out.

Pure: no I/O, no Celery, no database, stdlib ``math`` only, so that the statistics can be tested
exhaustively and simulated fast (``bench/promotion_quality.py``). docs/STATISTICS.md explains the
choice of test, what it guarantees and what it costs, with measured figures.

``decide(counts...)`` reads run counts (every run its own unit); ``decide_units(control, treatment)``
reads each arm's assignment units (``scheduler.units.ArmUnits``), so that the runs of one key count as
one draw. With single-trial units both give the same verdict.

Policies (``policy=...``):

``sequential`` (default)
    Two one-sided, always-valid tests of "the treatment's success rate is higher" and "... lower",
    each at level ``alpha / 2``: a normal mixture (half-normal on the lift, sd ``mixing_sd``) of
    likelihood ratios of the randomisation statistic on units. The probability of *ever* promoting a
    treatment that is no better than the control stays below ``alpha / 2`` however often the
    policy is asked (exactly for a fixed pooled rate, approximately with the observed one; the
    benchmark measures 1-1.5% at alpha = 0.05). A futility stop closes the test as "inconclusive"
    once a lift of ``min_detectable_lift`` is ruled out (it can only remove promotions); at
    ``max_trials_per_arm`` units on both arms (or ``max_runs_factor`` times as many runs) without a
    verdict the test closes as "inconclusive" too. ``Decision.stop`` says which.
``margin``
    The seed's rule, kept for comparison: once both arms have ``sample_size_target`` trials,
    promote at a lift of at least ``min_margin``, archive at ``-min_margin``. It has no error
    control; asked after every trial it promotes equal arms most of the time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from fractions import Fraction
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, Self, TypeAlias

from scheduler.units import ArmUnits, as_count, as_real, check_arms, null_variance, set_checked

Winner: TypeAlias = Literal["treatment", "control", "inconclusive"] | None
Stop: TypeAlias = Literal["evidence", "futility", "maximum"] | None
JSONScalar: TypeAlias = str | int | float | None
JSONValue: TypeAlias = JSONScalar | dict[str, JSONScalar]

SEQUENTIAL: Final = "sequential"
MARGIN: Final = "margin"
POLICIES: Final = (SEQUENTIAL, MARGIN)
DEFAULT_POLICY: Final = SEQUENTIAL

# --- sequential policy defaults -----------------------------------------------------------------
#: Family-wise level: each of the two one-sided tests gets ``ALPHA / 2``.
ALPHA: Final = 0.05
#: No verdict before both arms have this many trials; the normal approximation behind the
#: plug-in weights is poor below it, and a skill's first runs are often unrepresentative.
MIN_TRIALS_PER_ARM: Final = 20
#: Both arms at this many trials without a verdict: close the test as inconclusive.
MAX_TRIALS_PER_ARM: Final = 1000
#: Both arms at this many times ``max_trials_per_arm`` in trials (runs) without a verdict: close as
#: inconclusive even if the units are fewer. With assignment keys the units are a fixed population (users):
#: once each has many runs, more runs add almost no information about the lift, and a test that
#: could never reach its maximum in units would hold the skill's only test slot for ever.
MAX_RUNS_FACTOR: Final = 3
#: Floor on the observed lift for a promotion (0: any lift the test establishes).
MIN_MARGIN: Final = 0.0
#: Standard deviation of the half-normal mixing distribution over the lift (0.10 = 10 points of
#: success rate). Chosen by simulation: near the best power for lifts of 0.10-0.20 within a few
#: hundred trials per arm at the same error (docs/STATISTICS.md, "The mixing sd").
MIXING_SD: Final = 0.10

#: The futility stop: close a test as inconclusive once a lift of this much (absolute points) is
#: ruled out at any look; 0 turns the stop off. It can only remove promotions.
MIN_DETECTABLE_LIFT: Final = 0.05
#: Level of the futility stop: a test whose true lift is ``min_detectable_lift`` or more is closed by
#: it with probability at most this (docs/STATISTICS.md, "The futility stop").
FUTILITY_ALPHA: Final = 0.10
#: How the confidence sequence is computed, stored with every interval (it under-covers slightly near
#: success rates of 0 and 1; docs/STATISTICS.md measures it).
LIFT_CI_KIND: Final = "always-valid, normal approximation"

# --- margin policy defaults (the seed's rule) ---------------------------------------------------
#: Trials each arm needs before the margin rule looks at the lift.
SAMPLE_SIZE_TARGET: Final = 20
#: Lift (in success-rate points) at which the margin rule promotes, and minus which it archives.
MARGIN_MIN_MARGIN: Final = 0.10

# log erfcx(y) switches to its asymptotic series here: math.erfc underflows past y ~ 26 and the
# series' first omitted term (105 / (2 y^2)^4) is below 3e-10 from y = 20 on.
_ERFCX_SERIES_FROM: Final = 20.0
_BISECTION_STEPS: Final = 200


# --- the data -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """Successes and trials of the two arms of a test, checked on construction.

    Raises:
        ValueError: a count that is not an int (bools and floats included), is negative, or
            successes above trials.
    """

    control_successes: int
    control_trials: int
    treatment_successes: int
    treatment_trials: int

    def __post_init__(self) -> None:
        for name in ("control_successes", "control_trials", "treatment_successes", "treatment_trials"):
            object.__setattr__(self, name, as_count(name, getattr(self, name)))
        for arm in ("control", "treatment"):
            successes, trials = getattr(self, f"{arm}_successes"), getattr(self, f"{arm}_trials")
            if successes > trials:
                raise ValueError(f"{arm}_successes ({successes}) exceeds {arm}_trials ({trials})")

    def arms(self) -> tuple[ArmUnits, ArmUnits]:
        """Control and treatment, every run its own unit."""
        return (
            ArmUnits.from_counts(self.control_successes, self.control_trials),
            ArmUnits.from_counts(self.treatment_successes, self.treatment_trials),
        )


@dataclass(frozen=True)
class Decision:
    """What a policy decided about a test, and the figures behind it.

    Figures that do not exist yet (a rate of an empty arm, an interval before any information)
    are ``None``, never NaN. ``to_dict()`` gives the JSON-able form stored with the test.

    Attributes:
        winner: ``"treatment"`` (promote), ``"control"`` (archive the treatment), ``"inconclusive"``
            (closed without a verdict) or None (keep going).
        reason: one line for people: why this verdict, with the deciding figures.
        lift: treatment_rate - control_rate (None while an arm is empty).
        statistic: ``sequential``: the larger of the two one-sided log e-values;
            ``margin``: the lift.
        threshold: the value ``statistic`` must reach: log(2 / alpha), or the margin.
        evidence_treatment, evidence_control: log e-values for "treatment better" / "treatment worse"
            (``sequential`` only).
        critical_lift: the absolute lift that would give a verdict at the current counts
            (``sequential`` only; None without information).
        lift_ci_low, lift_ci_high: always-valid (1 - alpha) confidence sequence for the lift,
            normal approximation (``sequential`` only; None without information). A verdict
            for the treatment is ``lift_ci_low >= 0`` (with the margin), for the control
            ``lift_ci_high <= 0``: the same inversion, up to the bisection's rounding.
        params: every parameter the policy used, defaults included.
        stop: ``"evidence"`` (a verdict for an arm), ``"futility"`` (closed early: a lift of
            ``min_detectable_lift`` is ruled out), ``"maximum"`` (closed at the maximum), or None.
        control_units, treatment_units: the arms' units (equal to the trials when every unit is one run).
        futility_evidence: log likelihood ratio of "lift 0" against "lift ``min_detectable_lift``"
            (``sequential`` with the futility stop on; None otherwise or without information).
        futility_threshold: log(1 / futility_alpha), the value ``futility_evidence`` must reach.

    The ``lift`` of a test that stopped on evidence is the lift *observed at stopping*: a sequential test
    stops when the estimate happens to be high, so it is biased upward (about +0.09 for a true +0.05);
    the guard's holdout estimate after the promotion is the honest figure.
    """

    winner: Winner
    policy: str
    reason: str
    control_successes: int
    control_trials: int
    treatment_successes: int
    treatment_trials: int
    control_rate: float | None
    treatment_rate: float | None
    lift: float | None
    statistic: float | None
    threshold: float
    evidence_treatment: float | None = None
    evidence_control: float | None = None
    critical_lift: float | None = None
    lift_ci_low: float | None = None
    lift_ci_high: float | None = None
    params: Mapping[str, float | int] = field(default_factory=dict, hash=False)
    stop: Stop = None
    control_units: int | None = None
    treatment_units: int | None = None
    futility_evidence: float | None = None
    futility_threshold: float | None = None

    def __post_init__(self) -> None:
        # Read-only, so a frozen Decision cannot be changed through its params either.
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def to_dict(self) -> dict[str, JSONValue]:
        """The decision as JSON-able values (stored in Postgres JSON columns), the interval labelled."""
        figures: dict[str, JSONValue] = {f.name: getattr(self, f.name) for f in fields(self)}
        figures["params"] = dict(self.params)
        figures["lift_ci_kind"] = LIFT_CI_KIND if self.lift_ci_low is not None else None
        return figures


def _arm_figures(control: ArmUnits, treatment: ArmUnits) -> dict[str, Any]:
    """The fields of a Decision that only restate its input."""
    return {
        "control_successes": control.successes,
        "control_trials": control.trials,
        "treatment_successes": treatment.successes,
        "treatment_trials": treatment.trials,
        "control_rate": control.rate,
        "treatment_rate": treatment.rate,
        "lift": _lift(control, treatment),
        "control_units": control.units,
        "treatment_units": treatment.units,
    }


# --- the sequential statistic -------------------------------------------------------------------


def log_erfcx(y: float) -> float:
    """log(exp(y**2) * erfc(y)), finite for every finite y (erfc alone underflows past ~26)."""
    if y < _ERFCX_SERIES_FROM:
        return y * y + math.log(math.erfc(y))
    u = 1.0 / (2.0 * y * y)
    return math.log1p(-u + 3.0 * u * u - 15.0 * u**3) - math.log(y * math.sqrt(math.pi))


def one_sided_log_evidence(lift: float, variance: float, mixing_sd: float) -> float:
    """log of the half-normal mixture of Gaussian likelihood ratios for "lift > 0".

    ``integral over theta > 0 of exp(theta * lift / variance - theta**2 / (2 * variance))``
    ``* 2 * phi(theta / mixing_sd) / mixing_sd``, in closed form (Howard et al. 2021, one-sided
    normal mixture): ``log erfcx(-x / sqrt 2) - log(1 + r) / 2`` with ``r = mixing_sd**2 / variance``
    and ``x = lift / sqrt(variance) * sqrt(r / (1 + r))``.

    Args:
        lift: the (balance-weighted) lift estimate; use its negation for "lift < 0".
        variance: its variance under the null; 0 means no information (log e-value 0).
        mixing_sd: sd of the half-normal mixing distribution over the true lift.
    """
    if variance <= 0.0:
        return 0.0
    r = mixing_sd * mixing_sd / variance
    x = lift / math.sqrt(variance) * math.sqrt(r / (1.0 + r))
    return log_erfcx(-x / math.sqrt(2.0)) - 0.5 * math.log1p(r)


@dataclass(frozen=True)
class RandomizationEvidence:
    """The evidence the arms' units carry, as the sequential policy reads it.

    A randomisation test on units. Under "the variation makes no difference" each unit's outcomes are
    what they would have been on either arm, and the router sent the unit to an arm by a fair coin
    ``X_i`` (+1 treatment, -1 control). Unit ``i`` has ``y_i`` successes in ``m_i`` trials; with the
    pooled rate ``p`` its score is ``c_i = y_i - p m_i``. Given the outcomes, ``D = sum_i X_i c_i`` is a
    sum of independent symmetric bounded steps, so ``exp(theta D - theta**2 V / 2)`` with
    ``V = sum_i c_i**2`` is a supermartingale for every theta >= 0 (``cosh(z) <= exp(z**2 / 2)``), also
    when the treatment is worse, and so is any mixture over theta. In lift units (the ratio of sums
    and its delta-method variance, for balanced arms):

        lift_estimate = 2 D / M = 4 (s_t m_c - s_c m_t) / M**2      variance = 4 V / M**2

    with ``M`` all trials. When every unit has one trial these are exactly the run-level figures
    (``variance = 4 p (1 - p) / M``, the pooled variance of Johari et al.'s mSPRT) and ``decide()`` and
    ``decide_units()`` agree. Units with many trials, or users who differ, make ``V`` larger than
    ``M p (1 - p)``, so clustered runs cannot pass for independent evidence. For a fixed ``p`` and a
    fixed set of units the e-value is exact; the policy plugs in the pooled rate so far and rescales by
    the trials so far (the approximations the benchmark measures). Unequal arms (which a fair router
    rarely produces) shrink the estimate by the balance ``4 m_c m_t / M**2`` and make the test more
    conservative.

    Args:
        control, treatment: the arms' units.
        mixing_sd: sd of the half-normal mixing distribution over the lift.
    """

    control: ArmUnits
    treatment: ArmUnits
    mixing_sd: float

    @classmethod
    def from_counts(cls, counts: Counts, mixing_sd: float) -> RandomizationEvidence:
        """Run counts as single-trial units."""
        return cls(*counts.arms(), mixing_sd)

    @property
    def _pooled(self) -> ArmUnits:
        return self.control + self.treatment

    @property
    def informative(self) -> bool:
        """False while an arm has no trials, or the units' outcomes carry no spread at all."""
        both = self._pooled
        return bool(self.control.trials and self.treatment.trials and self._spread_numerator(both) > 0)

    @staticmethod
    def _spread_numerator(both: ArmUnits) -> int:
        # M**2 * sum_i (y_i - p m_i)**2 with p = S / M, in exact integers (0 when every trial had the
        # same outcome, or every unit sits exactly at the pooled rate).
        m, s = both.trials, both.successes
        return m * m * both.sum_successes_sq - 2 * m * s * both.sum_cross + s * s * both.sum_trials_sq

    @property
    def balance(self) -> float:
        """4 m_c m_t / M**2 over trials: 1 for equal arms, smaller the more unequal they are."""
        total = self.control.trials + self.treatment.trials
        return 4.0 * self.control.trials * self.treatment.trials / total**2 if total else 0.0

    @property
    def lift_estimate(self) -> float:
        if not self.informative:
            return 0.0
        c, t = self.control, self.treatment
        cross = t.successes * c.trials - c.successes * t.trials
        return 4.0 * cross / (c.trials + t.trials) ** 2

    @property
    def variance(self) -> float:
        if not self.informative:
            return 0.0
        both = self._pooled
        # Exact integers divided once: the same float whichever way the units were aggregated.
        return 4 * self._spread_numerator(both) / both.trials**4

    @property
    def treatment_evidence(self) -> float:
        """log e-value for "treatment better"."""
        return one_sided_log_evidence(self.lift_estimate, self.variance, self.mixing_sd)

    @property
    def control_evidence(self) -> float:
        """log e-value for "treatment worse"."""
        return one_sided_log_evidence(-self.lift_estimate, self.variance, self.mixing_sd)

    def critical_estimate(self, threshold: float) -> float | None:
        """The lift_estimate at which the one-sided evidence reaches ``threshold`` (bisection)."""
        variance = self.variance
        if variance <= 0.0:
            return None
        r = self.mixing_sd**2 / variance
        # erfc(y) >= 1 for y <= 0, so log erfcx(y) >= y**2: this lift surely reaches the threshold.
        high = math.sqrt(2.0 * (threshold + 0.5 * math.log1p(r)) * variance * (1.0 + r) / r)
        low = 0.0
        for _ in range(_BISECTION_STEPS):
            middle = 0.5 * (low + high)
            if middle in (low, high):
                break
            if one_sided_log_evidence(middle, variance, self.mixing_sd) >= threshold:
                high = middle
            else:
                low = middle
        return high


def futility_log_evidence(control: ArmUnits, treatment: ArmUnits, lift: float) -> float | None:
    """log likelihood ratio of "lift = 0" against "lift = ``lift``" (> 0), valid at any look.

    The sequential probability ratio test of two normal means on the ratio-of-sums lift ``L`` and its
    delta-method variance ``W`` over units (deviations from the pooled rate; information ``1 / W``
    grows with the units): ``log F = lift * (lift / 2 - L) / W``. Under "the true lift is ``lift``"
    (or more) ``F`` is a (super)martingale in the normal approximation, so by Ville's inequality it
    ever reaches ``1 / a`` with probability at most ``a``: a futility stop at that level closes a test
    whose true lift is ``lift`` or more with probability at most ``a``. None without information.
    """
    spread = null_variance(control, treatment)
    if spread is None or spread <= 0.0:
        return None
    observed = treatment.successes / treatment.trials - control.successes / control.trials
    return lift * (lift / 2.0 - observed) / spread


# --- the policies -------------------------------------------------------------------------------


def _waiting(control: int, treatment: int, what: str, needed: int) -> str:
    return (
        f"waiting: {control} control and {treatment} treatment {what}, a verdict needs {needed} on each arm"
    )


def _exact(value: float) -> Fraction:
    # Margins are read as the decimal they print as, so a lift of exactly 0.1 (17/20 - 15/20)
    # meets a 0.1 margin instead of losing to binary rounding.
    return Fraction(repr(value))


def _exact_lift(control: ArmUnits, treatment: ArmUnits) -> Fraction | None:
    """Ratio-of-sums lift as an exact fraction; None while an arm has no trials."""
    if not (control.trials and treatment.trials):
        return None
    return Fraction(treatment.successes, treatment.trials) - Fraction(control.successes, control.trials)


def _lift(control: ArmUnits, treatment: ArmUnits) -> float | None:
    exact = _exact_lift(control, treatment)
    return None if exact is None else float(exact)


class Parametrised:
    """What the policies and the guard share: parameters are the dataclass's fields, checked by its
    ``__post_init__``, and a caller's mapping of them is refused if it names one they do not have."""

    NAME: ClassVar[str]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        allowed = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown parameter(s) for {cls.NAME}: {', '.join(unknown)}; allowed: {', '.join(allowed)}"
            )
        # Types are checked at run time by __post_init__, which is the point of this path.
        return replace(cls(), **params)  # type: ignore[type-var]

    @property
    def params(self) -> dict[str, float | int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class SequentialPolicy(Parametrised):
    """Always-valid sequential test on units; see the module docstring and docs/STATISTICS.md.

    Each field defaults to the module's constant of the same name in capitals, which says what it means;
    ``__post_init__`` gives its range. The per-arm minimum and maximum count units.
    """

    alpha: float = ALPHA
    min_trials_per_arm: int = MIN_TRIALS_PER_ARM
    max_trials_per_arm: int = MAX_TRIALS_PER_ARM
    min_margin: float = MIN_MARGIN
    mixing_sd: float = MIXING_SD
    min_detectable_lift: float = MIN_DETECTABLE_LIFT
    futility_alpha: float = FUTILITY_ALPHA
    max_runs_factor: int = MAX_RUNS_FACTOR

    NAME: ClassVar[str] = SEQUENTIAL

    def __post_init__(self) -> None:
        alpha = as_real("alpha", self.alpha, 0.0, 1.0)
        low = as_count("min_trials_per_arm", self.min_trials_per_arm, minimum=1)
        set_checked(
            self,
            alpha=alpha,
            min_trials_per_arm=low,
            max_trials_per_arm=as_count("max_trials_per_arm", self.max_trials_per_arm, minimum=low),
            min_margin=as_real("min_margin", self.min_margin, 0.0, 1.0, low_open=False),
            mixing_sd=as_real("mixing_sd", self.mixing_sd, 0.0, 1.0, high_open=False),
            min_detectable_lift=as_real(
                "min_detectable_lift", self.min_detectable_lift, 0.0, 1.0, low_open=False
            ),
            futility_alpha=as_real("futility_alpha", self.futility_alpha, 0.0, 1.0),
            max_runs_factor=as_count("max_runs_factor", self.max_runs_factor, minimum=1),
        )

    @property
    def threshold(self) -> float:
        """log(2 / alpha): Ville's inequality bounds each one-sided error by alpha / 2."""
        return math.log(2.0 / self.alpha)

    @property
    def futility_threshold(self) -> float:
        return math.log(1.0 / self.futility_alpha)

    def decide_units(self, control: ArmUnits, treatment: ArmUnits) -> Decision:
        evidence = RandomizationEvidence(control, treatment, self.mixing_sd)
        for_treatment, for_control = evidence.treatment_evidence, evidence.control_evidence
        critical = evidence.critical_estimate(self.threshold)
        interval: tuple[float | None, float | None] = (None, None)
        critical_lift = None
        lift = _lift(control, treatment)
        if critical is not None and lift is not None:
            # lift_estimate = balance * lift, so the critical estimate maps back to the lift scale.
            critical_lift = critical / evidence.balance
            # A lift lives in [-1, 1]; clipping there keeps "treatment wins <=> low > 0".
            interval = (max(-1.0, lift - critical_lift), min(1.0, lift + critical_lift))
        futility_on = self.min_detectable_lift > 0.0
        futility = (
            futility_log_evidence(control, treatment, self.min_detectable_lift) if futility_on else None
        )
        winner, stop, reason = self._verdict(control, treatment, for_treatment, for_control, futility)
        return Decision(
            winner=winner,
            policy=SEQUENTIAL,
            reason=reason,
            statistic=max(for_treatment, for_control),
            threshold=self.threshold,
            evidence_treatment=for_treatment,
            evidence_control=for_control,
            critical_lift=critical_lift,
            lift_ci_low=interval[0],
            lift_ci_high=interval[1],
            params=self.params,
            stop=stop,
            futility_evidence=futility,
            futility_threshold=self.futility_threshold if futility_on else None,
            **_arm_figures(control, treatment),
        )

    def _verdict(
        self,
        control: ArmUnits,
        treatment: ArmUnits,
        for_treatment: float,
        for_control: float,
        futility: float | None,
    ) -> tuple[Winner, Stop, str]:
        low, high = min(control.units, treatment.units), self.max_trials_per_arm
        if low < self.min_trials_per_arm:
            return None, None, _waiting(control.units, treatment.units, "units", self.min_trials_per_arm)
        threshold = self.threshold
        figures = f"log e-values {for_treatment:.3f} (treatment) / {for_control:.3f} (control)"
        lift = _lift(control, treatment)
        observed = f"observed lift at stopping {lift:+.4f} (biased upward)"
        held_back = ""
        if for_treatment >= threshold:
            exact_lift = _exact_lift(control, treatment)
            if exact_lift is not None and exact_lift >= _exact(self.min_margin):
                return (
                    "treatment",
                    "evidence",
                    f"treatment better: {figures}, threshold {threshold:.3f}; {observed}",
                )
            held_back = f"treatment better but lift {lift:.4f} < min_margin {self.min_margin}"
        elif for_control >= threshold:
            return "control", "evidence", f"control better: {figures}, threshold {threshold:.3f}; {observed}"
        if futility is not None and futility >= self.futility_threshold:
            return (
                "inconclusive",
                "futility",
                f"inconclusive (futility): a lift of {self.min_detectable_lift} is ruled out "
                f"(log LR {futility:.3f} >= {self.futility_threshold:.3f}; lift {lift:+.4f})",
            )
        runs_cap = self.max_runs_factor * high
        if low >= high or min(control.trials, treatment.trials) >= runs_cap:
            at = f"{high} units per arm" if low >= high else f"{runs_cap} runs per arm"
            if held_back:
                return "inconclusive", "maximum", f"{held_back} at {at}"
            return "inconclusive", "maximum", f"inconclusive: no verdict within {at} ({figures})"
        if held_back:
            return None, None, f"{held_back}: keep going"
        return None, None, f"keep going: {figures} below {threshold:.3f}"


@dataclass(frozen=True)
class MarginPolicy(Parametrised):
    """The seed's rule: per-arm target, then promote/archive at a fixed lift margin.

    Unlike the seed, which kept a test that was undecided at the target running forever, an
    undecided test keeps going until ``max_trials_per_arm`` on both arms and then closes as
    "inconclusive" (the same horizon as the sequential policy, so the two compare like for like).
    It reads the arms' trials, not their units: it has no error control to protect anyway.
    """

    sample_size_target: int = SAMPLE_SIZE_TARGET
    min_margin: float = MARGIN_MIN_MARGIN
    max_trials_per_arm: int = MAX_TRIALS_PER_ARM

    NAME: ClassVar[str] = MARGIN

    def __post_init__(self) -> None:
        target = as_count("sample_size_target", self.sample_size_target, minimum=1)
        set_checked(
            self,
            sample_size_target=target,
            # A zero margin would both promote and archive a tie.
            min_margin=as_real("min_margin", self.min_margin, 0.0, 1.0, high_open=False),
            max_trials_per_arm=as_count("max_trials_per_arm", self.max_trials_per_arm, minimum=target),
        )

    def decide_units(self, control: ArmUnits, treatment: ArmUnits) -> Decision:
        winner, reason = self._verdict(control, treatment)
        lift = _lift(control, treatment)
        return Decision(
            winner=winner,
            policy=MARGIN,
            reason=reason,
            statistic=lift,
            threshold=self.min_margin,
            params=self.params,
            stop=None if winner is None else "maximum" if winner == "inconclusive" else "evidence",
            **_arm_figures(control, treatment),
        )

    def _verdict(self, control: ArmUnits, treatment: ArmUnits) -> tuple[Winner, str]:
        reached = min(control.trials, treatment.trials)
        if reached < self.sample_size_target:
            return None, _waiting(control.trials, treatment.trials, "trials", self.sample_size_target)
        exact_lift = _exact_lift(control, treatment)
        assert exact_lift is not None  # both arms have >= 1 trial here
        margin = _exact(self.min_margin)
        lift = float(exact_lift)
        if exact_lift >= margin:
            return "treatment", f"treatment better: lift {lift:.4f} >= {self.min_margin}"
        if exact_lift <= -margin:
            return "control", f"control better: lift {lift:.4f} <= -{self.min_margin}"
        if reached >= self.max_trials_per_arm:
            return "inconclusive", (
                f"inconclusive: lift {lift:.4f} within +/-{self.min_margin} "
                f"at {self.max_trials_per_arm} trials per arm"
            )
        return None, f"keep going: lift {lift:.4f} within +/-{self.min_margin}"


_POLICY_CLASSES: Final[dict[str, type[SequentialPolicy] | type[MarginPolicy]]] = {
    SEQUENTIAL: SequentialPolicy,
    MARGIN: MarginPolicy,
}


def make_policy(policy: str = DEFAULT_POLICY, **params: float) -> SequentialPolicy | MarginPolicy:
    """The named policy with its parameters checked (see ``decide``)."""
    if policy not in _POLICY_CLASSES:
        raise ValueError(f"unknown policy {policy!r}; known: {', '.join(POLICIES)}")
    return _POLICY_CLASSES[policy].from_params(params)


def decide(
    control_successes: int,
    control_trials: int,
    treatment_successes: int,
    treatment_trials: int,
    policy: str = DEFAULT_POLICY,
    **params: float,
) -> Decision:
    """Decide an A/B test from its counts (every run its own unit): promote, archive, close, or keep going.

    Args:
        policy: ``"sequential"`` (default) or ``"margin"``.
        **params: the policy's parameters (the fields of SequentialPolicy or MarginPolicy); omitted ones
            take the module defaults.

    Returns:
        A Decision; ``winner`` is "treatment", "control", "inconclusive" or None (keep going).

    Raises:
        ValueError: a count that is not an int (bools and floats included) or is negative,
            successes above trials, an unknown policy or parameter name, or a parameter out of range.
    """
    counts = Counts(control_successes, control_trials, treatment_successes, treatment_trials)
    return make_policy(policy, **params).decide_units(*counts.arms())


def decide_units(
    control: ArmUnits,
    treatment: ArmUnits,
    policy: str = DEFAULT_POLICY,
    **params: float,
) -> Decision:
    """Decide an A/B test from its arms' assignment units (scheduler.units.ArmUnits).

    The sequential policy tests on units (the assignment keys, or runs without a key): units, not
    runs, are the independent draws. ``min_trials_per_arm`` and ``max_trials_per_arm`` count units.
    With every unit at one trial it gives exactly ``decide()``'s verdict on the same counts. The margin
    policy reads the arms' trials, as ``decide()`` does.

    Raises:
        ValueError: an argument that is not an ArmUnits, an unknown policy or parameter, or a
            parameter out of range (see ``decide``).
    """
    check_arms(control=control, treatment=treatment)
    return make_policy(policy, **params).decide_units(control, treatment)
