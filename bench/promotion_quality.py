"""Promotion quality: how often each policy promotes, and how soon, in simulated A/B tests.

Each replicate routes trials to the arms at random (probability 1/2 each), draws each trial's success
from its arm's rate, and asks the policy after every trial until it returns a verdict; at the latest
that is "inconclusive", when both arms reach ``max_trials_per_arm`` (earlier when the futility stop
rules out a lift of ``min_detectable_lift``). Both policies see the same simulated trials (common random
numbers), so their figures compare like for like. The rows where the premises break (outcome delay,
clustered keys, novelty, drift) and the guard are ``bench.promotion_mechanisms``, built on this module.

The per-trial statistic is evaluated with numpy over whole batches of replicates by a twin of
``scheduler.policies`` (pure Python, too slow for millions of states). The twin cannot drift
unnoticed: before the run, its log e-values are compared with the policy's on sampled states, and
some replicates of every row are replayed through ``decide()`` itself, trial by trial; any
difference stops the benchmark.

Usage: ``python -m bench.promotion_quality [--replicates N] [--seed S] [--replay K] [--mixing-sd T] [--bars-only]``
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import comb

import numpy as np
from numpy.typing import NDArray

from scheduler import policies

DEFAULT_REPLICATES = 5000
DEFAULT_SEED = 20261126
DEFAULT_REPLAY = 10
CHUNK = 1000  # replicates simulated at once: bounds memory (~10 arrays of CHUNK x 2,300 steps)
# Extra trials beyond 2 x max so that both arms reach the maximum: the lagging arm is short of
# max after 2*max + k*sqrt(2*max) trials with probability ~Phi(-k); k = 8 makes that ~1e-15.
SLACK_SDS = 8
TWIN_SAMPLES = 3000
TWIN_TOLERANCE = 1e-9
COMMAND = "python -m bench.promotion_quality"

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Scenario:
    """One row: the arms' true success rates, the per-arm cap, and the bar (None: figures only)."""

    name: str
    control_rate: float
    treatment_rate: float
    max_trials_per_arm: int = policies.MAX_TRIALS_PER_ARM
    max_promoted: float | None = None
    min_promoted: float | None = None
    max_median_trials: float | None = None

    @property
    def has_bar(self) -> bool:
        return not (self.max_promoted is None and self.min_promoted is None)

    def bar_text(self) -> str:
        if self.max_promoted is not None:
            return f"promoted <= {self.max_promoted:.1%}"
        if self.min_promoted is not None:
            median = f", median <= {self.max_median_trials:.0f}" if self.max_median_trials else ""
            return f"promoted >= {self.min_promoted:.0%}{median}"
        return "(figures only)"

    def passes(self, outcome: Outcome) -> bool:
        if self.max_promoted is not None and outcome.promoted > self.max_promoted:
            return False
        if self.min_promoted is not None and outcome.promoted < self.min_promoted:
            return False
        if self.max_median_trials is not None and outcome.median_trials > self.max_median_trials:
            return False
        return True


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("equal 0.70 vs 0.70", 0.70, 0.70, max_promoted=0.02),
    Scenario("equal 0.50 vs 0.50", 0.50, 0.50, max_promoted=0.02),
    Scenario("worse 0.70 -> 0.60", 0.70, 0.60, max_promoted=0.002),
    Scenario("better 0.70 -> 0.85, cap 300", 0.70, 0.85, 300, min_promoted=0.95, max_median_trials=150),
    Scenario("equal 0.90 vs 0.90", 0.90, 0.90),
    Scenario("equal 0.95 vs 0.95", 0.95, 0.95),
    Scenario("better 0.70 -> 0.75", 0.70, 0.75),
    Scenario("better 0.70 -> 0.80", 0.70, 0.80),
    Scenario("better 0.70 -> 0.85", 0.70, 0.85),
    Scenario("better 0.50 -> 0.70", 0.50, 0.70),
)


@dataclass(frozen=True)
class Outcome:
    """Where one policy's replicates of one scenario ended."""

    promoted: float
    archived: float
    inconclusive: float
    median_trials: float
    mean_trials: float
    replicates: int


# --- simulation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paths:
    """Cumulative counts after each trial; shape (replicates, trials)."""

    control_successes: IntArray
    control_trials: IntArray
    treatment_successes: IntArray
    treatment_trials: IntArray


def steps_for(max_trials_per_arm: int) -> int:
    return 2 * max_trials_per_arm + math.ceil(SLACK_SDS * math.sqrt(2 * max_trials_per_arm))


def simulate(scenario: Scenario, replicates: int, rng: np.random.Generator) -> Paths:
    steps = steps_for(scenario.max_trials_per_arm)
    to_treatment = rng.random((replicates, steps)) < 0.5
    rate = np.where(to_treatment, scenario.treatment_rate, scenario.control_rate)
    return paths(to_treatment, rng.random((replicates, steps)) < rate)


def paths(to_treatment: BoolArray, success: BoolArray) -> Paths:
    """Cumulative counts of single-trial runs, in the order of their columns."""
    treatment_trials = np.cumsum(to_treatment, axis=1, dtype=np.int64)
    steps = to_treatment.shape[1]
    return Paths(
        control_successes=np.cumsum(success & ~to_treatment, axis=1, dtype=np.int64),
        control_trials=np.arange(1, steps + 1, dtype=np.int64)[None, :] - treatment_trials,
        treatment_successes=np.cumsum(success & to_treatment, axis=1, dtype=np.int64),
        treatment_trials=treatment_trials,
    )


# --- the numpy twin of scheduler.policies ---------------------------------------------------------

_log_erfcx = np.frompyfunc(policies.log_erfcx, 1, 1)


def _informative(p: Paths) -> BoolArray:
    trials = p.control_trials + p.treatment_trials
    successes = p.control_successes + p.treatment_successes
    return (p.control_trials > 0) & (p.treatment_trials > 0) & (successes > 0) & (successes < trials)


def lift_estimate_and_variance(p: Paths) -> tuple[FloatArray, FloatArray, BoolArray]:
    """RandomizationEvidence.lift_estimate and .variance, vectorised (0 where uninformative)."""
    informative = _informative(p)
    trials = (p.control_trials + p.treatment_trials).astype(np.float64)
    cross = p.treatment_successes * p.control_trials - p.control_successes * p.treatment_trials
    pooled = (p.control_successes + p.treatment_successes) / np.maximum(trials, 1.0)
    estimate = np.where(informative, 4.0 * cross / np.maximum(trials, 1.0) ** 2, 0.0)
    variance = np.where(informative, 4.0 * pooled * (1.0 - pooled) / np.maximum(trials, 1.0), 0.0)
    return estimate, variance, informative


def one_sided_log_evidence(
    lift: FloatArray, variance: FloatArray, mixing_sd: float, at_least: float | None = None
) -> FloatArray:
    """policies.one_sided_log_evidence over arrays.

    With ``at_least``, states whose evidence cannot reach it are left at -inf instead of computed:
    log erfcx(y) <= y**2 + log 2 always, and <= 0 for y >= 0, so those bounds decide most states
    without the (scalar) special function.
    """
    result = np.zeros_like(lift)
    positive = variance > 0.0
    safe = np.where(positive, variance, 1.0)
    r = mixing_sd * mixing_sd / safe
    y = -(lift / np.sqrt(safe) * np.sqrt(r / (1.0 + r))) / math.sqrt(2.0)
    penalty = 0.5 * np.log1p(r)
    needed = positive
    if at_least is not None:
        bound = np.where(y < 0.0, y * y + math.log(2.0), 0.0) - penalty
        needed = positive & (bound >= at_least)
        result = np.where(positive, -np.inf, 0.0)
    result[needed] = np.asarray(_log_erfcx(y[needed]), dtype=np.float64) - penalty[needed]
    return result


def exact_at_least(p: Paths, margin: float, sign: int) -> BoolArray:
    """sign * lift >= margin, in exact integer arithmetic as the policies compare it."""
    fraction = Fraction(repr(margin))
    cross = p.treatment_successes * p.control_trials - p.control_successes * p.treatment_trials
    scale = p.control_trials * p.treatment_trials
    return sign * fraction.denominator * cross >= fraction.numerator * scale


def reached(p: Paths, trials_per_arm: int) -> BoolArray:
    return np.minimum(p.control_trials, p.treatment_trials) >= trials_per_arm


def sequential_verdicts(
    p: Paths, policy: policies.SequentialPolicy
) -> tuple[BoolArray, BoolArray, BoolArray]:
    estimate, variance, _ = lift_estimate_and_variance(p)
    threshold = policy.threshold
    can_decide = reached(p, policy.min_trials_per_arm)
    for_treatment = one_sided_log_evidence(estimate, variance, policy.mixing_sd, threshold) >= threshold
    for_control = one_sided_log_evidence(-estimate, variance, policy.mixing_sd, threshold) >= threshold
    promote = can_decide & for_treatment & exact_at_least(p, policy.min_margin, +1)
    archive = can_decide & ~for_treatment & for_control
    close = reached(p, policy.max_trials_per_arm)
    if policy.min_detectable_lift > 0.0:
        close = close | (can_decide & (futility(p, policy.min_detectable_lift) >= policy.futility_threshold))
    return promote, archive, close


def futility(p: Paths, lift: float) -> FloatArray:
    """policies.futility_log_evidence for single-trial units, vectorised (-inf without information)."""
    trials = p.control_trials + p.treatment_trials
    pooled = (p.control_successes + p.treatment_successes) / np.maximum(trials, 1)

    def spread(successes: IntArray, arm_trials: IntArray) -> FloatArray:
        # sum over the arm's runs of (y - pooled)**2, over the arm's trials squared.
        deviations = successes - 2.0 * pooled * successes + pooled * pooled * arm_trials
        return np.maximum(0.0, deviations) / np.maximum(arm_trials, 1) ** 2

    both = spread(p.control_successes, p.control_trials) + spread(p.treatment_successes, p.treatment_trials)
    present = (p.control_trials > 0) & (p.treatment_trials > 0) & (both > 0.0)
    observed = p.treatment_successes / np.maximum(p.treatment_trials, 1) - p.control_successes / np.maximum(
        p.control_trials, 1
    )
    safe = np.where(present, both, 1.0)
    return np.where(present, lift * (lift / 2.0 - observed) / safe, -np.inf)


def margin_verdicts(p: Paths, policy: policies.MarginPolicy) -> tuple[BoolArray, BoolArray, BoolArray]:
    can_decide = reached(p, policy.sample_size_target)
    promote = can_decide & exact_at_least(p, policy.min_margin, +1)
    archive = can_decide & exact_at_least(p, policy.min_margin, -1)
    return promote, archive, reached(p, policy.max_trials_per_arm)


Policy = policies.SequentialPolicy | policies.MarginPolicy


def verdicts(p: Paths, policy: Policy) -> tuple[BoolArray, BoolArray, BoolArray]:
    if isinstance(policy, policies.SequentialPolicy):
        return sequential_verdicts(p, policy)
    return margin_verdicts(p, policy)


@dataclass(frozen=True)
class Ends:
    """Per replicate: the step of the first verdict, what it was (0 promote, 1 archive, 2 close)."""

    step: IntArray
    kind: IntArray
    trials_per_arm: IntArray


def first_verdicts(p: Paths, policy: Policy) -> Ends:
    promote, archive, close = verdicts(p, policy)
    anything = promote | archive | close
    if not anything.any(axis=1).all():
        raise RuntimeError("a replicate ran out of simulated trials before a verdict; raise SLACK_SDS")
    step = np.argmax(anything, axis=1)
    rows = np.arange(step.size)
    kind = np.where(promote[rows, step], 0, np.where(archive[rows, step], 1, 2))
    # Trials per arm at the verdict: the larger arm's count (the arm that waited longest).
    larger = np.maximum(p.control_trials[rows, step], p.treatment_trials[rows, step])
    return Ends(step=step.astype(np.int64), kind=kind.astype(np.int64), trials_per_arm=larger)


# --- drift checks against scheduler.policies ---------------------------------------------------------


def check_twin(rng: np.random.Generator, mixing_sd: float) -> int:
    """Compare the twin's evidence with RandomizationEvidence on random and extreme states."""
    states: list[tuple[int, int, int, int]] = [
        (0, 0, 0, 0), (0, 20, 20, 20), (20, 20, 0, 20), (20, 20, 20, 20), (0, 20, 0, 20), (1, 1000, 999, 1000),
        (500, 1000, 500, 1000), (5, 20, 400, 500),
    ]
    for _ in range(TWIN_SAMPLES):
        control_trials, treatment_trials = (int(n) for n in rng.integers(0, 1200, size=2))
        control_rate, treatment_rate = rng.random(2)
        states.append(
            (
                int(rng.binomial(control_trials, control_rate)),
                control_trials,
                int(rng.binomial(treatment_trials, treatment_rate)),
                treatment_trials,
            )
        )
    columns = [np.array([[s[i]] for s in states], dtype=np.int64) for i in range(4)]
    paths = Paths(*columns)
    estimate, variance, _ = lift_estimate_and_variance(paths)
    ours_t = one_sided_log_evidence(estimate, variance, mixing_sd)[:, 0]
    ours_c = one_sided_log_evidence(-estimate, variance, mixing_sd)[:, 0]
    for i, state in enumerate(states):
        evidence = policies.RandomizationEvidence.from_counts(policies.Counts(*state), mixing_sd)
        for mine, theirs in (
            (ours_t[i], evidence.treatment_evidence),
            (ours_c[i], evidence.control_evidence),
        ):
            if not math.isclose(mine, theirs, rel_tol=TWIN_TOLERANCE, abs_tol=TWIN_TOLERANCE):
                raise RuntimeError(
                    f"numpy twin drifted from scheduler.policies at {state}: {mine} vs {theirs}"
                )
    return len(states)


def replay(p: Paths, ends: Ends, policy: Policy, replicates: int) -> None:
    """Walk ``decide()`` trial by trial on some replicates and demand the twin's first verdict."""
    names = ("treatment", "control", "inconclusive")
    params = dict(policy.params)
    name = policies.SEQUENTIAL if isinstance(policy, policies.SequentialPolicy) else policies.MARGIN
    for row in range(min(replicates, ends.step.size)):
        for step in range(p.control_trials.shape[1]):
            decision = policies.decide(
                int(p.control_successes[row, step]),
                int(p.control_trials[row, step]),
                int(p.treatment_successes[row, step]),
                int(p.treatment_trials[row, step]),
                policy=name,
                **params,
            )
            if decision.winner is not None:
                expected = (int(ends.step[row]), names[int(ends.kind[row])])
                if (step, decision.winner) != expected:
                    raise RuntimeError(
                        f"{name}: decide() gave {decision.winner!r} at trial {step + 1}, "
                        f"the numpy twin {expected[1]!r} at trial {expected[0] + 1} (replicate {row})"
                    )
                break


# --- the run ----------------------------------------------------------------------------------------


def policies_for(scenario: Scenario, mixing_sd: float = policies.MIXING_SD) -> dict[str, Policy]:
    cap = scenario.max_trials_per_arm
    return {
        policies.SEQUENTIAL: policies.SequentialPolicy(max_trials_per_arm=cap, mixing_sd=mixing_sd),
        policies.MARGIN: policies.MarginPolicy(max_trials_per_arm=cap),
    }


def chunks(total: int, chunk: int = CHUNK) -> Iterator[int]:
    done = 0
    while done < total:
        size = min(chunk, total - done)
        yield size
        done += size


def run_scenario(
    scenario: Scenario,
    replicates: int,
    rng: np.random.Generator,
    replay_count: int,
    mixing_sd: float = policies.MIXING_SD,
) -> dict[str, Outcome]:
    kinds: dict[str, list[IntArray]] = {name: [] for name in (policies.SEQUENTIAL, policies.MARGIN)}
    trials: dict[str, list[IntArray]] = {name: [] for name in kinds}
    first_chunk = True
    for size in chunks(replicates):
        paths = simulate(scenario, size, rng)
        for name, policy in policies_for(scenario, mixing_sd).items():
            ends = first_verdicts(paths, policy)
            if first_chunk:
                replay(paths, ends, policy, replay_count)
            kinds[name].append(ends.kind)
            trials[name].append(ends.trials_per_arm)
        first_chunk = False
    outcomes = {}
    for name in kinds:
        kind = np.concatenate(kinds[name])
        per_arm = np.concatenate(trials[name])
        outcomes[name] = Outcome(
            promoted=float(np.mean(kind == 0)),
            archived=float(np.mean(kind == 1)),
            inconclusive=float(np.mean(kind == 2)),
            median_trials=float(np.median(per_arm)),
            mean_trials=float(np.mean(per_arm)),
            replicates=int(kind.size),
        )
    return outcomes


def cell(scenario: Scenario, outcome: Outcome) -> str:
    verdict = ("PASS" if scenario.passes(outcome) else "FAIL") if scenario.has_bar else "    "
    return (
        f"{outcome.promoted:7.2%} {outcome.archived:7.2%} {outcome.inconclusive:7.2%} "
        f"{outcome.median_trials:6.0f} {outcome.mean_trials:6.0f} {verdict}"
    )


def seed_rule_exact(per_arm: int, control_rate: float, treatment_rate: float, margin: Fraction) -> float:
    """P(lift >= margin) at a single look with ``per_arm`` trials on each arm, by enumeration."""

    def pmf(rate: float) -> list[float]:
        return [comb(per_arm, k) * rate**k * (1 - rate) ** (per_arm - k) for k in range(per_arm + 1)]

    control, treatment = pmf(control_rate), pmf(treatment_rate)
    return sum(
        control[c] * treatment[t]
        for c in range(per_arm + 1)
        for t in range(per_arm + 1)
        if Fraction(t - c, per_arm) >= margin
    )


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES, help="replicates per row")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    parser.add_argument("--replay", type=int, default=DEFAULT_REPLAY, help="replicates per row and policy replayed through decide()")
    parser.add_argument(
        "--mixing-sd", type=float, default=policies.MIXING_SD, help="the sequential policy's mixing sd (docs/STATISTICS.md's sweep)"
    )
    parser.add_argument("--bars-only", action="store_true", help="only the rows that carry a bar")
    args = parser.parse_args(argv)
    if args.replicates < 1 or args.replay < 0:
        parser.error("--replicates must be >= 1, --replay >= 0")
    if not 0.0 < args.mixing_sd <= 1.0:
        parser.error("--mixing-sd must be in (0, 1]")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    started = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    checked = check_twin(rng, args.mixing_sd)
    sequential = policies.SequentialPolicy(mixing_sd=args.mixing_sd)
    print(
        f"Promotion quality: {args.replicates} replicates per row, seed {args.seed}; 50/50 random routing, "
        "policy asked after every trial"
    )
    print(
        f"sequential: alpha {sequential.alpha} ({sequential.alpha / 2} per side), "
        f"min {sequential.min_trials_per_arm}/arm, mixing sd {sequential.mixing_sd}, "
        f"min_margin {sequential.min_margin}, futility at a lift of {sequential.min_detectable_lift} (level "
        f"{sequential.futility_alpha}); margin: target {policies.SAMPLE_SIZE_TARGET}/arm, "
        f"margin {policies.MARGIN_MIN_MARGIN}; max {policies.MAX_TRIALS_PER_ARM}/arm unless the row caps it"
    )
    print(
        "columns per policy: promoted, archived (control won), inconclusive, median and mean trials per "
        "arm at the verdict (larger arm)"
    )
    print(
        f"drift check: twin = policy on {checked} states; {args.replay} replicates per row replayed via decide()"
    )
    print()
    header = f"{'scenario':<30} {'bar':<30} | {'sequential':<45} | {'margin':<45} | promoted"
    sub = (
        f"{'':<30} {'':<30} | "
        + " | ".join([f"{'prom':>7} {'arch':>7} {'incl':>7} {'med':>6} {'mean':>6} {'':4}"] * 2)
        + " | seq/margin"
    )
    print(header)
    print(sub)
    print("-" * len(sub))
    all_pass = True
    for scenario in SCENARIOS:
        if args.bars_only and not scenario.has_bar:
            continue
        outcomes = run_scenario(scenario, args.replicates, rng, args.replay, args.mixing_sd)
        seq, margin = outcomes[policies.SEQUENTIAL], outcomes[policies.MARGIN]
        ratio = f"{seq.promoted / margin.promoted:.3f}" if margin.promoted else "-"
        if scenario.has_bar:
            all_pass &= scenario.passes(seq)
        print(
            f"{scenario.name:<30} {scenario.bar_text():<30} | {cell(scenario, seq)} | "
            f"{cell(scenario, margin)} | {ratio}"
        )
    print()
    print("seed rule at one look (exact enumeration, P(lift >= 0.10)):")
    for per_arm in (10, 20):
        figures = ", ".join(
            f"{label} {seed_rule_exact(per_arm, c, t, Fraction(1, 10)):.1%}"
            for label, c, t in (
                ("equal 0.7", 0.7, 0.7),
                ("equal 0.5", 0.5, 0.5),
                ("worse 0.7->0.6", 0.7, 0.6),
            )
        )
        print(f"  {per_arm} trials per arm: {figures}")
    print()
    elapsed = time.perf_counter() - started
    which = "at its defaults" if args.mixing_sd == policies.MIXING_SD else f"with mixing sd {args.mixing_sd}"
    verdict = "PASS on every bar" if all_pass else "FAIL on at least one bar"
    print(f"sequential policy {which}: {verdict} ({elapsed:.0f} s)")
    return 0 if all_pass else 1


if __name__ == "__main__":
    sys.exit(main())
