"""scheduler.policies: the promotion statistics, pure (no DB, no broker).

The small bars reuse the benchmark's vectorised simulation (bench/promotion_quality.py), whose numpy
twin of the statistic is itself checked against the policy here and by replaying replicates through
decide().
"""

from __future__ import annotations

import json
import math
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import policies
from scheduler.policies import (
    ALPHA,
    MAX_TRIALS_PER_ARM,
    MIN_TRIALS_PER_ARM,
    Decision,
    decide,
)

np = pytest.importorskip("numpy")
bench = pytest.importorskip("bench.promotion_quality")

WINNERS = {"treatment", "control", "inconclusive", None}


def float_figures(decision: Decision) -> list[float]:
    figures = decision.to_dict()
    values = [v for v in figures.values() if isinstance(v, float)]
    params = figures["params"]
    assert isinstance(params, dict)
    return values + [v for v in params.values() if isinstance(v, float)]


# --- the small bars -------------------------------------------------------------------------------

REPLICATES = 1000


def three_se(rate: float, n: int = REPLICATES) -> float:
    """Three standard errors of a binomial proportion: the Monte Carlo slack the small bars allow.

    The full bars (5,000+ replicates) live in the benchmark; here 1,000 replicates estimate each rate,
    so a bar p is widened by 3 * sqrt(p (1 - p) / n), which a correct policy exceeds ~0.1% of the time.
    """
    return 3.0 * math.sqrt(rate * (1.0 - rate) / n)


def run(scenario: bench.Scenario, seed: int) -> dict[str, bench.Ends]:
    rng = np.random.default_rng(seed)
    paths = bench.simulate(scenario, REPLICATES, rng)
    ends = {}
    for name, policy in bench.policies_for(scenario).items():
        ends[name] = bench.first_verdicts(paths, policy)
        bench.replay(paths, ends[name], policy, 2)
    return ends


@pytest.mark.parametrize(("control", "treatment"), [(0.7, 0.7), (0.5, 0.5)])
def test_equal_arms_are_rarely_promoted(control: float, treatment: float) -> None:
    ends = run(bench.Scenario("equal", control, treatment), seed=11)
    promoted = float(np.mean(ends[policies.SEQUENTIAL].kind == 0))
    assert promoted <= 0.02 + three_se(0.02)
    # The seed's margin rule, asked after every trial, promotes equal arms far more often.
    assert float(np.mean(ends[policies.MARGIN].kind == 0)) > 0.2


def test_worse_treatment_is_almost_never_promoted() -> None:
    ends = run(bench.Scenario("worse", 0.7, 0.6), seed=12)
    sequential = ends[policies.SEQUENTIAL]
    assert float(np.mean(sequential.kind == 0)) <= 0.002 + three_se(0.002)
    # Archived, or closed early by the futility stop (a +5-point lift is soon ruled out): not left to
    # run to the maximum.
    early = (sequential.kind == 1) | (
        (sequential.kind == 2) & (sequential.trials_per_arm < MAX_TRIALS_PER_ARM)
    )
    assert float(np.mean(early)) > 0.9


def test_better_treatment_is_promoted_soon() -> None:
    ends = run(bench.Scenario("better", 0.70, 0.85, 300), seed=13)[policies.SEQUENTIAL]
    assert float(np.mean(ends.kind == 0)) >= 0.95 - three_se(0.95)
    # "median <= 150" is "at least half stop by 150"; the same slack on that proportion.
    assert float(np.mean(ends.trials_per_arm <= 150)) >= 0.5 - three_se(0.5)


def test_bench_twin_matches_the_policy() -> None:
    assert bench.check_twin(np.random.default_rng(5), policies.MIXING_SD) > 1000


# --- degenerate input -------------------------------------------------------------------------------


def test_zero_trials_keep_going_without_figures() -> None:
    decision = decide(0, 0, 0, 0)
    assert decision.winner is None
    assert (decision.control_rate, decision.treatment_rate, decision.lift) == (None, None, None)
    assert decision.evidence_treatment == decision.evidence_control == 0.0
    assert decision.lift_ci_low is None and decision.critical_lift is None
    assert "waiting" in decision.reason


def test_one_empty_arm_is_no_information() -> None:
    decision = decide(0, 0, 500, 500)
    assert decision.winner is None
    assert decision.lift is None and decision.treatment_rate == 1.0
    assert decision.statistic == 0.0


@pytest.mark.parametrize("successes", ["all", "none"])
def test_identical_outcomes_everywhere_are_no_information(successes: str) -> None:
    for n in (MIN_TRIALS_PER_ARM, 100, MAX_TRIALS_PER_ARM - 1):
        s = n if successes == "all" else 0
        decision = decide(s, n, s, n)
        assert decision.winner is None
        assert decision.evidence_treatment == decision.evidence_control == 0.0
        assert decision.lift == 0.0
    closing = decide(0, MAX_TRIALS_PER_ARM, 0, MAX_TRIALS_PER_ARM)
    assert closing.winner == "inconclusive"


def test_all_successes_against_all_failures_decides_at_the_minimum() -> None:
    n = MIN_TRIALS_PER_ARM
    assert decide(0, n, n, n).winner == "treatment"
    assert decide(n, n, 0, n).winner == "control"
    assert decide(0, n - 1, n - 1, n - 1).winner is None  # one short of the minimum


def test_extreme_counts_stay_finite() -> None:
    for args in [(0, 10**6, 10**6, 10**6), (1, 10**6, 10**6 - 1, 10**6), (10**6, 10**6, 0, 10**6)]:
        decision = decide(*args)
        assert all(math.isfinite(v) for v in float_figures(decision))


# --- unequal arms, minimum, maximum, margin --------------------------------------------------------


def test_min_trials_apply_per_arm() -> None:
    assert decide(0, 500, 19, 19).winner is None
    assert decide(0, 19, 500, 500).winner is None
    assert decide(0, 20, 20, 20, min_trials_per_arm=21).winner is None


def test_unequal_arms_decide_and_imbalance_is_conservative() -> None:
    balanced = decide(140, 200, 170, 200)
    unbalanced = decide(70, 100, 255, 300)  # same rates, same total trials
    assert unbalanced.winner in WINNERS
    assert unbalanced.lift == pytest.approx(balanced.lift)
    assert unbalanced.evidence_treatment is not None and balanced.evidence_treatment is not None
    assert unbalanced.evidence_treatment < balanced.evidence_treatment
    # The test assumes the router's 50/50 split: a 2:1 imbalance costs a little, 30:1 a lot.
    assert decide(140, 200, 340, 400).winner == "treatment"
    assert decide(70, 100, 2550, 3000).winner is None


def test_maximum_needs_both_arms() -> None:
    n = MAX_TRIALS_PER_ARM
    assert decide(700, n, 699, n - 1, min_detectable_lift=0).winner is None
    assert decide(700, n, 700, n, min_detectable_lift=0).winner == "inconclusive"
    assert decide(700, n, 700, n, min_detectable_lift=0).stop == "maximum"
    assert decide(1050, n + 500, 700, n).winner == "inconclusive"
    assert decide(70, 100, 70, 100, max_trials_per_arm=100).winner == "inconclusive"


def test_a_verdict_at_the_maximum_beats_inconclusive() -> None:
    assert decide(140, 200, 180, 200, max_trials_per_arm=200).winner == "treatment"


def test_min_margin_holds_back_a_small_proven_lift() -> None:
    proven = decide(7000, 10000, 7300, 10000, max_trials_per_arm=20000)
    assert proven.winner == "treatment"
    held = decide(7000, 10000, 7300, 10000, max_trials_per_arm=20000, min_margin=0.05)
    assert held.winner is None and "min_margin" in held.reason
    closed = decide(7000, 10000, 7300, 10000, max_trials_per_arm=10000, min_margin=0.05)
    assert closed.winner == "inconclusive"
    # The floor is on promotion only: a worse treatment is still archived.
    assert decide(7300, 10000, 7000, 10000, min_margin=0.05, max_trials_per_arm=20000).winner == "control"


def test_threshold_is_log_two_over_alpha() -> None:
    assert decide(0, 0, 0, 0).threshold == pytest.approx(math.log(2 / ALPHA))
    assert decide(0, 0, 0, 0, alpha=0.01).threshold == pytest.approx(math.log(200))


def test_verdict_and_confidence_sequence_agree() -> None:
    decision = decide(140, 200, 175, 200)
    assert decision.winner == "treatment"
    assert decision.lift_ci_low is not None and decision.lift_ci_low > 0
    assert decision.lift is not None and decision.critical_lift is not None
    assert decision.lift >= decision.critical_lift


# --- the margin rule ----------------------------------------------------------------------------------


def test_margin_rule_waits_for_the_target_on_each_arm() -> None:
    assert decide(0, 19, 20, 20, policy="margin").winner is None
    assert decide(0, 20, 19, 19, policy="margin").winner is None
    assert decide(0, 20, 20, 20, policy="margin").winner == "treatment"


def test_margin_rule_at_exactly_the_margin() -> None:
    # 17/20 - 15/20 is 0.09999999999999998 in floats; the rule compares exactly.
    assert decide(15, 20, 17, 20, policy="margin").winner == "treatment"
    assert decide(17, 20, 15, 20, policy="margin").winner == "control"
    assert decide(15, 20, 16, 20, policy="margin").winner is None


def test_margin_rule_keeps_going_then_closes() -> None:
    assert decide(700, 999, 700, 999, policy="margin").winner is None
    assert decide(700, 1000, 700, 1000, policy="margin").winner == "inconclusive"
    assert decide(30, 40, 30, 40, policy="margin", max_trials_per_arm=40).winner == "inconclusive"
    decision = decide(10, 20, 14, 20, policy="margin", min_margin=0.25, sample_size_target=20)
    assert decision.winner is None and decision.threshold == 0.25


def test_margin_rule_figures() -> None:
    decision = decide(14, 20, 17, 20, policy="margin")
    assert decision.policy == "margin" and decision.statistic == pytest.approx(0.15)
    assert decision.evidence_treatment is None and decision.lift_ci_low is None
    assert decision.to_dict()["params"] == {
        "sample_size_target": 20,
        "min_margin": 0.1,
        "max_trials_per_arm": 1000,
    }


# --- bad input ----------------------------------------------------------------------------------------

BAD_COUNTS = [
    (-1, 10, 0, 10),
    (0, -1, 0, 10),
    (11, 10, 0, 10),
    (0, 10, 11, 10),
    (1.0, 10, 0, 10),
    (0, 10.0, 0, 10),
    (True, 10, 0, 10),
    (0, 10, 0, False),
    (None, 10, 0, 10),
    ("1", 10, 0, 10),
]


@pytest.mark.parametrize("counts", BAD_COUNTS)
@pytest.mark.parametrize("policy", ["sequential", "margin"])
def test_bad_counts_are_refused(counts: tuple[object, ...], policy: str) -> None:
    with pytest.raises(ValueError, match="control|treatment"):
        decide(*counts, policy=policy)  # type: ignore[arg-type]


BAD_SEQUENTIAL = [
    {"alpha": 0},
    {"alpha": 1},
    {"alpha": -0.05},
    {"alpha": 1.5},
    {"alpha": math.nan},
    {"alpha": math.inf},
    {"alpha": True},
    {"alpha": "0.05"},
    {"min_trials_per_arm": 0},
    {"min_trials_per_arm": 2.5},
    {"min_trials_per_arm": True},
    {"max_trials_per_arm": 19},
    {"min_trials_per_arm": 50, "max_trials_per_arm": 40},
    {"min_margin": -0.1},
    {"min_margin": 1.0},
    {"mixing_sd": 0},
    {"mixing_sd": -1},
    {"sample_size_target": 20},
    {"alpa": 0.05},
]

BAD_MARGIN = [
    {"min_margin": 0},
    {"min_margin": 1.5},
    {"sample_size_target": 0},
    {"sample_size_target": 30, "max_trials_per_arm": 20},
    {"alpha": 0.05},
    {"min_trials_per_arm": 20},
]


@pytest.mark.parametrize("params", BAD_SEQUENTIAL)
def test_bad_sequential_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decide(10, 20, 12, 20, **params)  # type: ignore[arg-type]


@pytest.mark.parametrize("params", BAD_MARGIN)
def test_bad_margin_parameters_are_refused(params: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        decide(10, 20, 12, 20, policy="margin", **params)  # type: ignore[arg-type]


def test_unknown_policy_and_parameter_are_named() -> None:
    with pytest.raises(ValueError, match="unknown policy 'bayes'"):
        decide(1, 2, 1, 2, policy="bayes")
    with pytest.raises(ValueError, match="alpa"):
        decide(1, 2, 1, 2, alpa=0.05)


def test_integer_likes_are_counts() -> None:
    decision = decide(np.int64(0), np.int64(20), np.int32(20), 20)
    assert decision.winner == "treatment" and type(decision.control_trials) is int


# --- the Decision ---------------------------------------------------------------------------------------


def test_decision_is_frozen_and_json_able() -> None:
    decision = decide(140, 200, 175, 200)
    with pytest.raises(FrozenInstanceError):
        decision.winner = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        decision.params["alpha"] = 0.5  # type: ignore[index]
    figures = decision.to_dict()
    assert json.loads(json.dumps(figures, allow_nan=False)) == figures
    assert figures["params"] == {
        "alpha": 0.05,
        "min_trials_per_arm": 20,
        "max_trials_per_arm": 1000,
        "min_margin": 0.0,
        "mixing_sd": 0.1,
        "min_detectable_lift": 0.05,
        "futility_alpha": 0.1,
        "max_runs_factor": 3,
    }
    assert figures["stop"] == "evidence" and figures["control_units"] == 200
    assert hash(decision) == hash(decide(140, 200, 175, 200))


def test_defaults_are_the_module_constants() -> None:
    policy = policies.SequentialPolicy()
    assert (policy.alpha, policy.min_trials_per_arm, policy.max_trials_per_arm) == (0.05, 20, 1000)
    assert (policy.min_margin, policy.mixing_sd) == (0.0, 0.1)
    margin = policies.MarginPolicy()
    assert (margin.sample_size_target, margin.min_margin, margin.max_trials_per_arm) == (20, 0.1, 1000)


def test_log_erfcx_is_continuous_and_finite() -> None:
    y = 20.0
    direct = y * y + math.log(math.erfc(y))
    assert policies.log_erfcx(y) == pytest.approx(direct, rel=1e-9)
    assert policies.log_erfcx(y - 1e-9) == pytest.approx(policies.log_erfcx(y + 1e-9), rel=1e-9)
    for value in (-1e6, -30.0, 0.0, 1e3, 1e150):
        assert math.isfinite(policies.log_erfcx(value))


# --- properties -----------------------------------------------------------------------------------------

arm = st.integers(min_value=0, max_value=3000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)
policy_names = st.sampled_from(["sequential", "margin"])


@settings(max_examples=150, deadline=None)
@given(control=arm, treatment=arm, policy=policy_names)
def test_figures_are_finite_and_json(
    control: tuple[int, int], treatment: tuple[int, int], policy: str
) -> None:
    decision = decide(*control, *treatment, policy=policy)
    assert decision.winner in WINNERS
    assert all(math.isfinite(v) for v in float_figures(decision))
    json.dumps(decision.to_dict(), allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(control=arm, treatment=arm, policy=policy_names)
def test_decide_is_a_pure_function(control: tuple[int, int], treatment: tuple[int, int], policy: str) -> None:
    first = decide(*control, *treatment, policy=policy)
    again = decide(*control, *treatment, policy=policy)
    assert first == again and first.to_dict() == again.to_dict()


@settings(max_examples=150, deadline=None)
@given(
    control=arm,
    treatment=arm,
    minimum=st.integers(min_value=1, max_value=200),
)
def test_never_a_verdict_before_the_minimum(
    control: tuple[int, int], treatment: tuple[int, int], minimum: int
) -> None:
    sequential = decide(
        *control, *treatment, min_trials_per_arm=minimum, max_trials_per_arm=max(minimum, 1000)
    )
    margin = decide(*control, *treatment, policy="margin", sample_size_target=minimum)
    if min(control[1], treatment[1]) < minimum:
        assert sequential.winner is None and margin.winner is None


@settings(max_examples=150, deadline=None)
@given(
    successes=st.integers(min_value=-5, max_value=60),
    trials=st.integers(min_value=-5, max_value=50),
    other=arm,
    treatment_side=st.booleans(),
)
def test_impossible_counts_raise_instead_of_deciding(
    successes: int, trials: int, other: tuple[int, int], treatment_side: bool
) -> None:
    bad = (successes, trials)
    args = (*other, *bad) if treatment_side else (*bad, *other)
    if 0 <= successes <= trials:
        assert decide(*args).winner in WINNERS
    else:
        with pytest.raises(ValueError):
            decide(*args)


@settings(max_examples=150, deadline=None)
@given(control=arm, treatment=arm)
def test_swapping_the_arms_swaps_the_evidence(control: tuple[int, int], treatment: tuple[int, int]) -> None:
    # The futility stop is one-sided (it rules out a *lift*), so the symmetry holds without it.
    forward = decide(*control, *treatment, min_detectable_lift=0)
    backward = decide(*treatment, *control, min_detectable_lift=0)
    assert forward.evidence_treatment == backward.evidence_control
    assert forward.evidence_control == backward.evidence_treatment
    swapped = {"treatment": "control", "control": "treatment"}
    assert backward.winner == swapped.get(str(forward.winner), forward.winner)


@settings(max_examples=150, deadline=None)
@given(control=arm, treatment=arm)
def test_a_verdict_comes_with_its_evidence(control: tuple[int, int], treatment: tuple[int, int]) -> None:
    decision = decide(*control, *treatment)
    if decision.winner in ("treatment", "control"):
        assert decision.statistic is not None and decision.statistic >= decision.threshold
        assert decision.lift_ci_low is not None and decision.lift_ci_high is not None
        # The interval and the test are the same inversion (bisection rounding aside).
        if decision.winner == "treatment":
            assert decision.lift_ci_low >= -1e-9
        else:
            assert decision.lift_ci_high <= 1e-9
