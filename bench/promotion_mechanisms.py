"""Promotion quality when the premises break: outcome delay, clustered keys, novelty, drift, and the guard.

Each row simulates the mechanism of issue 11 next to the naive counting it replaces:

- **mechanism**: every run is written to the ledger when it is routed (unit, arm, time, deadline); at
  every look (the beat, once a second) the verdict reads the complete prefix
  (``bench.cohorts.complete_prefix``: the trials assigned before the oldest one still pending, a
  trial past its deadline a failure), aggregated per unit (``scheduler.units.ArmUnits``) and decided
  by ``scheduler.policies.decide_units`` with the futility stop; after every promotion the guard
  (``scheduler.guard.guard_decide``) watches the new production version against a 10% holdout and may
  roll it back.
- **naive**: the counting before issue 11: every outcome recorded by the look counts, every run is an
  independent trial, the decision is ``decide()`` on the run counts, and nothing watches a promotion.

As in ``bench.promotion_quality``, numpy twins evaluate the statistics over whole batches; the twins of
the unit statistic and of the guard are compared with the pure modules on sampled states before the
run, and the first replicates of the delay and clustered rows are replayed through the pure mechanism
itself (``complete_prefix`` + ``decide_units`` at every look), which must reach the same first verdict.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from bench import promotion_quality as pq
from bench.cohorts import Trial, complete_prefix
from scheduler import guard as guards
from scheduler import policies
from scheduler.units import ArmUnits

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

LOOK_SECONDS = 1.0  # the beat's period in the simulation
RUNS_PER_SECOND = 1.0  # Poisson arrivals of runs routed into the test
OUTCOME_SECONDS = 2.0  # a typical run's time to its recorded outcome
DEADLINE_SECONDS = 120.0  # time limit plus slack: a trial pending longer counts as a failure
TWIN_SAMPLES = 2000
TWIN_TOLERANCE = 1e-9
GUARD_HORIZON = 5000  # runs: the "rolled back within 5,000 runs"
UNKNOWN = -1
# Replicates of a clustered row simulated at once: its runs are 3x longer than a policy row's, and the
# run-counted twin over (chunk x runs) arrays is what sets the benchmark's peak memory.
CLUSTER_CHUNK = 250
# The same for guard walks (5,000 runs each).
GUARD_CHUNK = 250


# --- the unit twin: scheduler.policies.decide_units over arrays -----------------------------------


@dataclass
class Aggregates:
    """ArmUnits of both arms over arrays of any shape: n, m, s, mm, yy, ym per arm."""

    control: tuple[IntArray, ...]
    treatment: tuple[IntArray, ...]


def unit_evidence(agg: Aggregates, mixing_sd: float, at_least: float | None = None) -> tuple[FloatArray, ...]:
    """RandomizationEvidence's two log e-values for units, vectorised."""
    _, mc, sc, mmc, yyc, ymc = agg.control
    _, mt, st, mmt, yyt, ymt = agg.treatment
    m, s = mc + mt, sc + st
    mm, yy, ym = mmc + mmt, yyc + yyt, ymc + ymt
    # M^2 sum (y - p m)^2 in integers, as float (the figures fit well within 2^53 at these sizes).
    spread = (m.astype(np.float64) ** 2) * yy - 2.0 * m * s * ym + (s.astype(np.float64) ** 2) * mm
    informative = (mc > 0) & (mt > 0) & (spread > 0.0)
    safe_m = np.maximum(m, 1).astype(np.float64)
    estimate = np.where(informative, 4.0 * (st * mc - sc * mt) / safe_m**2, 0.0)
    variance = np.where(informative, 4.0 * spread / safe_m**4, 0.0)
    return (
        pq.one_sided_log_evidence(estimate, variance, mixing_sd, at_least),
        pq.one_sided_log_evidence(-estimate, variance, mixing_sd, at_least),
    )


def unit_futility(agg: Aggregates, lift: float) -> FloatArray:
    """policies.futility_log_evidence, vectorised (-inf without information)."""
    _, mc, sc, mmc, yyc, ymc = agg.control
    _, mt, st, mmt, yyt, ymt = agg.treatment
    pooled = (sc + st) / np.maximum(mc + mt, 1)

    def spread(m: IntArray, yy: IntArray, ym: IntArray, mm: IntArray) -> FloatArray:
        deviations = yy - 2.0 * pooled * ym + pooled * pooled * mm
        return np.maximum(0.0, deviations) / np.maximum(m, 1).astype(np.float64) ** 2

    both = spread(mc, yyc, ymc, mmc) + spread(mt, yyt, ymt, mmt)
    present = (mc > 0) & (mt > 0) & (both > 0.0)
    observed = st / np.maximum(mt, 1) - sc / np.maximum(mc, 1)
    return np.where(present, lift * (lift / 2.0 - observed) / np.where(present, both, 1.0), -np.inf)


def unit_verdicts(agg: Aggregates, policy: policies.SequentialPolicy) -> IntArray:
    """The first verdict of decide_units at these states: 0 promote, 1 archive, 2 close, -1 none.

    min_margin is taken as 0 (the default); the benchmark uses no other.
    """
    threshold = policy.threshold
    for_t, for_c = unit_evidence(agg, policy.mixing_sd, threshold)
    low = np.minimum(agg.control[0], agg.treatment[0])
    can = low >= policy.min_trials_per_arm
    promote = can & (for_t >= threshold)
    archive = can & ~(for_t >= threshold) & (for_c >= threshold)
    runs = np.minimum(agg.control[1], agg.treatment[1])
    close = can & (
        (low >= policy.max_trials_per_arm) | (runs >= policy.max_runs_factor * policy.max_trials_per_arm)
    )
    if policy.min_detectable_lift > 0.0:
        close |= can & (unit_futility(agg, policy.min_detectable_lift) >= policy.futility_threshold)
    return np.where(promote, 0, np.where(archive, 1, np.where(close, 2, UNKNOWN))).astype(np.int64)


def check_unit_twin(rng: np.random.Generator, policy: policies.SequentialPolicy) -> int:
    """Compare the unit twin with decide_units on random clustered states (verdict and evidence)."""
    states = []
    for _ in range(TWIN_SAMPLES):
        arms = []
        for _arm in range(2):
            units = int(rng.integers(0, 120))
            trials = rng.integers(1, 1 + int(rng.integers(1, 15)), size=units)
            rate = rng.beta(0.7, 0.3, size=units) if rng.random() < 0.5 else np.full(units, rng.random())
            successes = rng.binomial(trials, rate)
            arms.append(ArmUnits.from_units(zip(successes.tolist(), trials.tolist(), strict=True)))
        states.append((arms[0], arms[1]))
    fields = ("units", "trials", "successes", "sum_trials_sq", "sum_successes_sq", "sum_cross")
    agg = Aggregates(
        tuple(np.array([getattr(c, f) for c, _ in states], dtype=np.int64) for f in fields),
        tuple(np.array([getattr(t, f) for _, t in states], dtype=np.int64) for f in fields),
    )
    small = policies.SequentialPolicy(min_trials_per_arm=5, max_trials_per_arm=100)
    ours_t, ours_c = unit_evidence(agg, small.mixing_sd)
    kinds = unit_verdicts(agg, small)
    names = {0: "treatment", 1: "control", 2: "inconclusive", UNKNOWN: None}
    for i, (control, treatment) in enumerate(states):
        decision = small.decide_units(control, treatment)
        pairs = ((ours_t[i], decision.evidence_treatment), (ours_c[i], decision.evidence_control))
        for mine, theirs in pairs:
            if theirs is None or not math.isclose(
                mine, theirs, rel_tol=TWIN_TOLERANCE, abs_tol=TWIN_TOLERANCE
            ):
                raise RuntimeError(f"unit twin drifted at state {i}: {mine} vs {theirs}")
        if names[int(kinds[i])] != decision.winner:
            raise RuntimeError(f"unit twin verdict {names[int(kinds[i])]} vs {decision.winner} at state {i}")
    return len(states)


# --- the guard twin: scheduler.guard.guard_decide over arrays --------------------------------------


def guard_verdicts(
    production: tuple[IntArray, IntArray], holdout: tuple[IntArray, IntArray], policy: guards.GuardPolicy
) -> IntArray:
    """guard_decide for single-trial units over arrays: 0 rollback, 1 confirm, -1 none."""
    (sp, np_), (sh, nh) = production, holdout

    present = (np_ > 0) & (nh > 0)
    total = np.maximum(np_ + nh, 1).astype(np.float64)
    pooled = (sp + sh) / total
    safe_p, safe_h = np.maximum(np_, 1).astype(np.float64), np.maximum(nh, 1).astype(np.float64)

    def deviations(s: IntArray, n: IntArray) -> FloatArray:
        return np.maximum(0.0, s - 2.0 * pooled * s + pooled * pooled * n)

    delta = deviations(sp, np_) / safe_p**2 + deviations(sh, nh) / safe_h**2
    smoothed = (sp + sh + 0.5) / (total + 1.0)
    floor = smoothed * (1.0 - smoothed) * (1.0 / safe_p + 1.0 / safe_h)
    variance = np.where(present, np.maximum(delta, floor), 0.0)
    difference = np.where(present, sp / safe_p - sh / safe_h, 0.0)
    regression = pq.one_sided_log_evidence(-difference, variance, policy.mixing_sd, policy.threshold)
    can = (nh >= policy.min_units) & (np_ >= policy.min_units)
    rollback = can & (regression >= policy.threshold)
    units = np_ + nh
    confirm = can & (units >= policy.guard_units)
    if policy.max_regression > 0.0:
        eps = policy.max_regression
        clean = eps * (difference + eps / 2.0) / np.where(present, variance, 1.0)
        confirm |= can & present & (units >= policy.min_confirm_units) & (clean >= policy.confirm_threshold)
    return np.where(rollback, 0, np.where(confirm, 1, UNKNOWN)).astype(np.int64)


def check_guard_twin(rng: np.random.Generator, policy: guards.GuardPolicy) -> int:
    names = {0: "rollback", 1: "confirm", UNKNOWN: None}
    for _ in range(TWIN_SAMPLES):
        nh = int(rng.integers(0, 500))
        np_ = int(rng.integers(0, 4500))
        sh = int(rng.binomial(nh, rng.random()))
        sp = int(rng.binomial(np_, rng.random()))
        kind = guard_verdicts((np.array([sp]), np.array([np_])), (np.array([sh]), np.array([nh])), policy)[0]
        verdict = guards.guard_decide(
            ArmUnits.from_counts(sp, np_), ArmUnits.from_counts(sh, nh), **guard_params(policy)
        )
        if names[int(kind)] != verdict.verdict:
            raise RuntimeError(f"guard twin {names[int(kind)]} vs {verdict.verdict} at {(sp, np_, sh, nh)}")
    return TWIN_SAMPLES


def guard_params(policy: guards.GuardPolicy) -> dict[str, float | int]:
    return {k: v for k, v in policy.params.items() if k != "holdout_share"}


# --- simulation pieces ------------------------------------------------------------------------------


def arrivals(rng: np.random.Generator, replicates: int, runs: int) -> FloatArray:
    return np.cumsum(rng.exponential(1.0 / RUNS_PER_SECOND, size=(replicates, runs)), axis=1)


def paths_in_order(to_treatment: BoolArray, success: BoolArray, order: IntArray | None = None) -> pq.Paths:
    """Cumulative single-trial counts, in the given order of runs (assignment order by default)."""
    if order is not None:
        to_treatment = np.take_along_axis(to_treatment, order, axis=1)
        success = np.take_along_axis(success, order, axis=1)
    return pq.paths(to_treatment, success)


def kinds_of(paths: pq.Paths, policy: policies.SequentialPolicy) -> IntArray:
    promote, archive, close = pq.sequential_verdicts(paths, policy)
    return np.where(promote, 0, np.where(archive, 1, np.where(close, 2, UNKNOWN))).astype(np.int64)


def first_kind(kinds: IntArray) -> tuple[IntArray, IntArray]:
    """Per replicate: the first verdict (-1 if none) and the index of the step it came at (0 if none)."""
    decided = kinds != UNKNOWN
    step = np.argmax(decided, axis=1)
    kind = np.where(decided.any(axis=1), kinds[np.arange(kinds.shape[0]), step], UNKNOWN)
    return kind.astype(np.int64), step


def first_at_looks(kinds: IntArray, known: FloatArray, looks: FloatArray) -> tuple[IntArray, IntArray]:
    """The first look with a verdict: (kind, prefix length) per replicate (-1, -1 if none).

    ``known[r, k]`` is the time from which prefix ``k + 1`` is what the look sees (non-decreasing in
    ``k``); at look ``T`` the policy reads the longest such prefix.
    """
    replicates = kinds.shape[0]
    kind = np.full(replicates, UNKNOWN, dtype=np.int64)
    length = np.full(replicates, UNKNOWN, dtype=np.int64)
    for row in range(replicates):
        seen = np.searchsorted(known[row], looks, side="right")  # prefix length at each look
        visible = seen > 0
        verdicts = np.full(looks.size, UNKNOWN)
        verdicts[visible] = kinds[row, seen[visible] - 1]
        hits = np.flatnonzero(verdicts != UNKNOWN)
        if hits.size:
            kind[row], length[row] = verdicts[hits[0]], seen[hits[0]]
    return kind, length


# --- rows -------------------------------------------------------------------------------------------


def delay_row(
    rng: np.random.Generator,
    replicates: int,
    control_rate: float,
    treatment_rate: float,
    slow_failure_seconds: float,
    lost_share: float,
    replay: int,
) -> dict[str, float]:
    """Treatment failures arrive late; some runs are lost (never recorded)."""
    policy = policies.SequentialPolicy()
    naive = policies.SequentialPolicy(min_detectable_lift=0.0)
    runs = pq.steps_for(policy.max_trials_per_arm)
    promoted = {"mechanism": 0, "naive": 0}
    medians = []
    for size in pq.chunks(replicates):
        assigned = arrivals(rng, size, runs)
        to_treatment = rng.random((size, runs)) < 0.5
        success = rng.random((size, runs)) < np.where(to_treatment, treatment_rate, control_rate)
        delay = rng.exponential(OUTCOME_SECONDS, size=(size, runs))
        delay = np.where(to_treatment & ~success, delay + slow_failure_seconds, delay)
        lost = rng.random((size, runs)) < lost_share
        done = np.where(lost, np.inf, assigned + delay)
        deadline = assigned + DEADLINE_SECONDS
        # A lost run resolves at its deadline, as a failure.
        resolved = np.minimum(done, deadline)
        counted_success = success & ~lost
        looks = np.arange(LOOK_SECONDS, float(np.max(deadline)) + 2 * LOOK_SECONDS, LOOK_SECONDS)
        mech_kinds = kinds_of(paths_in_order(to_treatment, counted_success), policy)
        kind, length = first_at_looks(mech_kinds, np.maximum.accumulate(resolved, axis=1), looks)
        promoted["mechanism"] += int(np.sum(kind == 0))
        medians.append(length)
        order = np.argsort(done, axis=1, kind="stable")
        naive_paths = paths_in_order(to_treatment, success, order)
        naive_kinds = kinds_of(naive_paths, naive)
        naive_kind, _ = first_at_looks(naive_kinds, np.take_along_axis(done, order, axis=1), looks)
        promoted["naive"] += int(np.sum(naive_kind == 0))
        # The replicates that closed soonest (pure Python walks every look: cheap ones first).
        for row in np.argsort(length, kind="stable")[:replay]:
            replay_cohorts(
                assigned[row],
                to_treatment[row],
                success[row],
                done[row],
                deadline[row],
                looks,
                policy,
                (int(kind[row]), int(length[row])),
            )
        replay = 0  # only from the first chunk
    lengths = np.concatenate(medians)
    return {
        "mechanism promoted": promoted["mechanism"] / replicates,
        "naive promoted": promoted["naive"] / replicates,
        "mechanism median runs": float(np.median(lengths)),
    }


def replay_cohorts(
    assigned: FloatArray,
    to_treatment: BoolArray,
    success: BoolArray,
    done: FloatArray,
    deadline: FloatArray,
    looks: FloatArray,
    policy: policies.SequentialPolicy,
    expected: tuple[int, int],
) -> None:
    """Walk the pure mechanism (complete_prefix + decide_units at every look) and demand the twin's verdict."""
    names = {"treatment": 0, "control": 1, "inconclusive": 2}
    params = dict(policy.params)
    # Each run (its own unit) as the ledger holds it while pending and once its outcome is recorded; a look
    # picks one of the two.
    arms = np.where(to_treatment, "treatment", "control")
    rows = [
        tuple(Trial(f"u{i}", arms[i], float(assigned[i]), float(deadline[i]), outcome) for outcome in (None, bool(success[i])))
        for i in range(assigned.size)
    ]
    for look in looks:
        arrived = int(np.searchsorted(assigned, look, side="right"))
        trials = [rows[i][1] if done[i] <= look else rows[i][0] for i in range(arrived)]
        cohort = complete_prefix(trials, float(look))
        decision = policies.decide_units(cohort.control, cohort.treatment, **params)
        if decision.winner is not None:
            got = (names[decision.winner], cohort.control.trials + cohort.treatment.trials)
            if got != expected:
                raise RuntimeError(
                    f"mechanism replay: complete_prefix + decide_units gave {got}, the twin {expected}"
                )
            return
    raise RuntimeError(f"mechanism replay: no verdict, the twin {expected}")


def clustered_row(
    rng: np.random.Generator, replicates: int, users: int, runs: int, concentration: float, replay: int
) -> dict[str, float]:
    """Equal arms; users pinned to arms; each user's success rate drawn from a wide Beta around 0.7."""
    policy = policies.SequentialPolicy()
    naive = policies.SequentialPolicy(min_detectable_lift=0.0)
    counts = {"mechanism treatment": 0, "mechanism control": 0, "naive treatment": 0, "naive control": 0}
    open_at_end = 0
    for size in pq.chunks(replicates, CLUSTER_CHUNK):
        user_arm = rng.random((size, users)) < 0.5
        user_rate = rng.beta(0.7 * concentration, 0.3 * concentration, size=(size, users))
        who = rng.integers(0, users, size=(size, runs))
        rows = np.arange(size)[:, None]
        to_treatment = user_arm[rows, who]
        success = rng.random((size, runs)) < user_rate[rows, who]
        first, _ = first_kind(kinds_of(paths_in_order(to_treatment, success), naive))
        counts["naive treatment"] += int(np.sum(first == 0))
        counts["naive control"] += int(np.sum(first == 1))
        kind = walk_units(who, to_treatment, success, users, policy)
        counts["mechanism treatment"] += int(np.sum(kind == 0))
        counts["mechanism control"] += int(np.sum(kind == 1))
        open_at_end += int(np.sum(kind == UNKNOWN))
        for row in range(min(replay, size)):
            replay_units(who[row], to_treatment[row], success[row], policy, int(kind[row]))
        replay = 0
    return {
        "mechanism promoted": counts["mechanism treatment"] / replicates,
        "mechanism archived": counts["mechanism control"] / replicates,
        "naive promoted": counts["naive treatment"] / replicates,
        "naive archived": counts["naive control"] / replicates,
        "mechanism open at horizon": open_at_end / replicates,
    }


def walk_units(
    who: IntArray, to_treatment: BoolArray, success: BoolArray, users: int, policy: policies.SequentialPolicy
) -> IntArray:
    """decide_units after every run (instant outcomes): the first verdict per replicate (-1: none)."""
    size, runs = who.shape
    rows = np.arange(size)
    y = np.zeros((size, users), dtype=np.int64)
    m = np.zeros((size, users), dtype=np.int64)
    sums = {arm: [np.zeros(size, dtype=np.int64) for _ in range(6)] for arm in (False, True)}
    kind = np.full(size, UNKNOWN, dtype=np.int64)
    for step in range(runs):
        u, arm, hit = who[:, step], to_treatment[:, step], success[:, step].astype(np.int64)
        y0, m0 = y[rows, u], m[rows, u]
        y1, m1 = y0 + hit, m0 + 1
        y[rows, u], m[rows, u] = y1, m1
        deltas = (
            (m0 == 0).astype(np.int64),
            np.ones(size, np.int64),
            hit,
            m1 * m1 - m0 * m0,
            y1 * y1 - y0 * y0,
            y1 * m1 - y0 * m0,
        )
        for side in (False, True):
            mask = arm == side
            for index, delta in enumerate(deltas):
                sums[side][index] += np.where(mask, delta, 0)
        agg = Aggregates(tuple(sums[False]), tuple(sums[True]))
        now = unit_verdicts(agg, policy)
        fresh = (kind == UNKNOWN) & (now != UNKNOWN)
        kind[fresh] = now[fresh]
        if (kind != UNKNOWN).all():
            break
    return kind


def replay_units(
    who: IntArray,
    to_treatment: BoolArray,
    success: BoolArray,
    policy: policies.SequentialPolicy,
    expected: int,
) -> None:
    """decide_units on ArmUnits.from_units after every run of one replicate: the same first verdict."""
    names = {"treatment": 0, "control": 1, "inconclusive": 2}
    tallies: dict[bool, dict[int, list[int]]] = {False: {}, True: {}}
    params = dict(policy.params)
    for step in range(who.size):
        tally = tallies[bool(to_treatment[step])].setdefault(int(who[step]), [0, 0])
        tally[0] += int(success[step])
        tally[1] += 1
        arms = [ArmUnits.from_units((y, m) for y, m in tallies[side].values()) for side in (False, True)]
        decision = policies.decide_units(arms[0], arms[1], **params)
        if decision.winner is not None:
            if names[decision.winner] != expected:
                raise RuntimeError(f"unit replay: decide_units gave {decision.winner}, the twin {expected}")
            return
    if expected != UNKNOWN:
        raise RuntimeError(f"unit replay: no verdict, the twin {expected}")


def guard_walk(
    rng: np.random.Generator,
    replicates: int,
    holdout_rate: float,
    production_rate: Callable[[IntArray], FloatArray],
    served_before: IntArray,
    policy: guards.GuardPolicy,
    horizon: int = GUARD_HORIZON,
) -> tuple[IntArray, IntArray]:
    """Guard runs after a promotion: (verdict kind, runs at the verdict) per replicate.

    ``production_rate(k)`` is the promoted version's success rate on its k-th run overall (novelty);
    ``served_before`` is how many runs it served during its test.
    """
    to_holdout = rng.random((replicates, horizon)) < policy.holdout_share
    served = served_before[:, None] + np.cumsum(~to_holdout, axis=1)
    rate = np.where(to_holdout, holdout_rate, production_rate(served))
    success = rng.random((replicates, horizon)) < rate
    nh = np.cumsum(to_holdout, axis=1, dtype=np.int64)
    np_ = np.arange(1, horizon + 1, dtype=np.int64)[None, :] - nh
    sh = np.cumsum(success & to_holdout, axis=1, dtype=np.int64)
    sp = np.cumsum(success & ~to_holdout, axis=1, dtype=np.int64)
    kind, step = first_kind(guard_verdicts((sp, np_), (sh, nh), policy))
    return kind, np.where(kind != UNKNOWN, step + 1, horizon).astype(np.int64)


def guard_row(rng: np.random.Generator, replicates: int, base: float, change: float) -> dict[str, float]:
    policy = guards.GuardPolicy()
    kinds, lengths = [], []
    for size in pq.chunks(replicates, GUARD_CHUNK):
        kind, length = guard_walk(
            rng, size, base, lambda k: np.full(k.shape, base + change), np.zeros(size, np.int64), policy
        )
        kinds.append(kind)
        lengths.append(length)
    kind, length = np.concatenate(kinds), np.concatenate(lengths)
    return {
        "rolled back": float(np.mean(kind == 0)),
        "confirmed": float(np.mean(kind == 1)),
        "median guard runs": float(np.median(length)),
        "mean guard runs": float(np.mean(length)),
    }


def novelty_row(
    rng: np.random.Generator,
    replicates: int,
    early: float,
    late: float,
    novelty_runs: int,
    control_rate: float,
) -> dict[str, float]:
    """The treatment is better for its first ``novelty_runs`` runs, worse after; the guard follows."""
    policy = policies.SequentialPolicy()
    naive = policies.SequentialPolicy(min_detectable_lift=0.0)
    guard = guards.GuardPolicy()
    runs = pq.steps_for(policy.max_trials_per_arm)
    totals = {"naive promoted": 0, "mechanism promoted": 0, "kept": 0}
    for size in pq.chunks(replicates):
        to_treatment = rng.random((size, runs)) < 0.5
        served = np.cumsum(to_treatment, axis=1)
        rate = np.where(to_treatment, np.where(served <= novelty_runs, early, late), control_rate)
        success = rng.random((size, runs)) < rate
        paths = paths_in_order(to_treatment, success)
        for name, chosen in (("naive promoted", naive), ("mechanism promoted", policy)):
            kind, step = first_kind(kinds_of(paths, chosen))
            totals[name] += int(np.sum(kind == 0))
            if chosen is policy:
                winners = np.flatnonzero(kind == 0)
                served_before = paths.treatment_trials[winners, step[winners]]
                for start in range(0, winners.size, GUARD_CHUNK):
                    part = served_before[start : start + GUARD_CHUNK]
                    verdict, _ = guard_walk(
                        rng,
                        part.size,
                        control_rate,
                        lambda k: np.where(k <= novelty_runs, early, late),
                        part,
                        guard,
                    )
                    totals["kept"] += int(np.sum(verdict != 0))
    return {
        "naive promoted": totals["naive promoted"] / replicates,
        "naive kept": totals["naive promoted"] / replicates,
        "mechanism promoted (test)": totals["mechanism promoted"] / replicates,
        "mechanism promoted": totals["kept"] / replicates,
    }


def drift_row(rng: np.random.Generator, replicates: int, amplitude: float, period: float) -> dict[str, float]:
    """Equal arms whose common success rate swings around 0.7 over time."""
    policy = policies.SequentialPolicy()
    naive = policies.SequentialPolicy(min_detectable_lift=0.0)
    runs = pq.steps_for(policy.max_trials_per_arm)
    totals = {"mechanism": 0, "naive": 0}
    for size in pq.chunks(replicates):
        assigned = arrivals(rng, size, runs)
        to_treatment = rng.random((size, runs)) < 0.5
        rate = 0.7 + amplitude * np.sin(2.0 * math.pi * assigned / period)
        success = rng.random((size, runs)) < rate
        # Failures are slower than successes on both arms (timeouts): drift and delay together.
        done = assigned + rng.exponential(OUTCOME_SECONDS, size=(size, runs)) + np.where(success, 0.0, 30.0)
        looks = np.arange(LOOK_SECONDS, float(np.max(done)) + 2 * LOOK_SECONDS, LOOK_SECONDS)
        kinds = kinds_of(paths_in_order(to_treatment, success), policy)
        kind, _ = first_at_looks(kinds, np.maximum.accumulate(done, axis=1), looks)
        totals["mechanism"] += int(np.sum(kind == 0))
        order = np.argsort(done, axis=1, kind="stable")
        naive_kinds = kinds_of(paths_in_order(to_treatment, success, order), naive)
        naive_kind, _ = first_at_looks(naive_kinds, np.take_along_axis(done, order, axis=1), looks)
        totals["naive"] += int(np.sum(naive_kind == 0))
    return {
        "mechanism promoted": totals["mechanism"] / replicates,
        "naive promoted": totals["naive"] / replicates,
    }


#: The candidates evolution proposes, as (true lift, share), from a control at 0.70: most are no
#: better, some worse, a few better. An assumption for the cost row only (figures, no bar).
CANDIDATE_LIFTS: tuple[tuple[float, float], ...] = ((-0.10, 0.2), (-0.05, 0.2), (0.0, 0.3), (0.05, 0.2), (0.10, 0.1))
COST_CONTROL_RATE = 0.70


def cost_rows(
    rng: np.random.Generator, replicates: int, variants: dict[str, policies.SequentialPolicy]
) -> dict[str, dict[str, float]]:
    """Per policy variant: median trials per arm at close of a null test, power, lift gained per 10k runs.

    Every variant sees the same simulated runs. Lift per 10k runs = the true lifts of the promoted
    candidates (negative ones included) over the runs all tests spent, for the CANDIDATE_LIFTS mix.
    """
    figures: dict[str, dict[str, float]] = {name: {} for name in variants}
    for lift, _share in CANDIDATE_LIFTS:
        scenario = pq.Scenario(f"lift {lift:+.2f}", COST_CONTROL_RATE, COST_CONTROL_RATE + lift)
        ends: dict[str, list[tuple[IntArray, IntArray, IntArray]]] = {name: [] for name in variants}
        for size in pq.chunks(replicates):
            paths = pq.simulate(scenario, size, rng)
            for name, policy in variants.items():
                end = pq.first_verdicts(paths, policy)
                ends[name].append((end.kind, end.trials_per_arm, end.step + 1))
        for name in variants:
            kind = np.concatenate([e[0] for e in ends[name]])
            per_arm = np.concatenate([e[1] for e in ends[name]])
            runs = np.concatenate([e[2] for e in ends[name]])
            figures[name][f"promoted {lift:+.2f}"] = float(np.mean(kind == 0))
            figures[name][f"median trials/arm {lift:+.2f}"] = float(np.median(per_arm))
            figures[name][f"mean runs {lift:+.2f}"] = float(np.mean(runs))
    for name in variants:
        f = figures[name]
        gained = sum(share * lift * f[f"promoted {lift:+.2f}"] for lift, share in CANDIDATE_LIFTS)
        spent = sum(share * f[f"mean runs {lift:+.2f}"] for lift, share in CANDIDATE_LIFTS)
        f["lift per 10k runs"] = 10000.0 * gained / spent
    return figures


def coverage_row(
    rng: np.random.Generator, replicates: int, control_rate: float, treatment_rate: float
) -> float:
    """Share of tests whose confidence sequence ever excludes the true lift (nominal: alpha), to the maximum.

    lift - critical_lift > true  <=>  the one-sided evidence at balance * (lift - true) reaches the
    threshold (the evidence grows with the estimate), so no bisection is needed.
    """
    policy = policies.SequentialPolicy(min_detectable_lift=0.0)
    true = treatment_rate - control_rate
    scenario = pq.Scenario("coverage", control_rate, treatment_rate)
    missed = 0
    for size in pq.chunks(replicates):
        paths = pq.simulate(scenario, size, rng)
        estimate, variance, _ = pq.lift_estimate_and_variance(paths)
        trials = (paths.control_trials + paths.treatment_trials).astype(np.float64)
        balance = 4.0 * paths.control_trials * paths.treatment_trials / np.maximum(trials, 1.0) ** 2
        shifted = estimate - balance * true
        threshold = policy.threshold
        above = pq.one_sided_log_evidence(shifted, variance, policy.mixing_sd, threshold) >= threshold
        below = pq.one_sided_log_evidence(-shifted, variance, policy.mixing_sd, threshold) >= threshold
        looked = pq.reached(paths, policy.min_trials_per_arm) & ~_after_maximum(
            paths, policy.max_trials_per_arm
        )
        missed += int(np.sum(((above | below) & looked).any(axis=1)))
    return missed / replicates


def _after_maximum(paths: pq.Paths, maximum: int) -> BoolArray:
    reached = pq.reached(paths, maximum)
    # The step that reaches the maximum is still looked at; the ones after it are not.
    return np.concatenate([np.zeros_like(reached[:, :1]), reached[:, :-1]], axis=1)


# --- the report -------------------------------------------------------------------------------------

DEFAULT_REPLICATES = 2000
DEFAULT_REPLAY = 1
CLUSTER_RUNS = 7000  # enough for both arms of 200 pinned users to reach 3 x 1,000 runs, or a verdict
CLUSTER_CONCENTRATION = 2.0  # users' rates ~ Beta(1.4, 0.6): mean 0.7, sd 0.26 (easy and hard users)


def _line(name: str, bar: str, mechanism: str, naive: str, passed: bool | None) -> str:
    verdict = "" if passed is None else ("PASS" if passed else "FAIL")
    return f"{name:<52} {bar:<26} | {mechanism:<34} | {naive:<24} {verdict}"


def report(rng: np.random.Generator, replicates: int, replay: int) -> bool:
    """Print the mechanism rows with their bars; True when every bar passes."""
    policy = policies.SequentialPolicy()
    checked = check_unit_twin(rng, policy) + check_guard_twin(rng, guards.GuardPolicy())
    print(
        f"Mechanisms (issue 11): {replicates} replicates per row; runs arrive at {RUNS_PER_SECOND:g}/s, "
        f"the beat looks every {LOOK_SECONDS:g} s; deadline {DEADLINE_SECONDS:g} s; futility at "
        f"{policy.min_detectable_lift} (level {policy.futility_alpha}); guard: holdout "
        f"{guards.HOLDOUT_SHARE:.0%}, alpha {guards.GUARD_ALPHA}, {guards.GUARD_UNITS} units, confirm not "
        f"before {guards.GUARD_MIN_CONFIRM_UNITS}, no verdict before {guards.GUARD_MIN_UNITS} units per arm"
    )
    print(
        f"drift check: unit and guard twins = scheduler on {checked} states; {replay} replicate(s) of the "
        "delay rows replayed through complete_prefix + decide_units at every look, of the clustered rows "
        "through ArmUnits.from_units + decide_units after every run"
    )
    print(_line("row", "bar (mechanism)", "mechanism", "naive (before issue 11)", None))
    print("-" * 150)
    ok = True

    def check(name: str, bar: str, mechanism: str, naive: str, passed: bool | None) -> None:
        nonlocal ok
        ok &= passed is not False
        print(_line(name, bar, mechanism, naive, passed), flush=True)

    for label, control, treatment, slow, lost, bar in (
        ("delay: equal 0.70, treatment failures +60 s, 1% lost", 0.70, 0.70, 60.0, 0.01, 0.02),
        ("delay: worse 0.60 -> 0.50, treatment failures +6 s", 0.60, 0.50, 6.0, 0.0, 0.002),
    ):
        row = delay_row(rng, replicates, control, treatment, slow, lost, replay)
        check(
            label,
            f"promoted <= {bar:.1%}",
            f"promoted {row['mechanism promoted']:.2%}, median {row['mechanism median runs']:.0f} runs",
            f"promoted {row['naive promoted']:.2%}",
            row["mechanism promoted"] <= bar,
        )
    for users in (200, 1000):
        row = clustered_row(rng, replicates, users, CLUSTER_RUNS, CLUSTER_CONCENTRATION, replay)
        worst = max(row["mechanism promoted"], row["mechanism archived"])
        check(
            f"clustered: {users} users pinned, equal arms",
            "<= 2.0% per side",
            f"promoted {row['mechanism promoted']:.2%}, archived {row['mechanism archived']:.2%}",
            f"{row['naive promoted']:.2%} / {row['naive archived']:.2%}",
            worst <= 0.02,
        )
    for early, late, novelty_runs, bar in ((0.85, 0.55, 150, 0.02), (0.95, 0.25, 300, 0.02), (0.80, 0.60, 400, None)):
        row = novelty_row(rng, replicates, early, late, novelty_runs, 0.70)
        check(
            f"novelty: 0.70 vs {early:.2f} for {novelty_runs} runs, then {late:.2f}",
            "kept <= 2.0%" if bar else "(figures: guard's -10 power)",
            f"promoted {row['mechanism promoted (test)']:.2%}, kept {row['mechanism promoted']:.2%}",
            f"kept {row['naive kept']:.2%}",
            None if bar is None else row["mechanism promoted"] <= bar,
        )
    row = drift_row(rng, replicates, 0.2, 600.0)
    check(
        "drift: equal, 0.70 +/- 0.20 (period 600 s), slow fails",
        "promoted <= 2.0%",
        f"promoted {row['mechanism promoted']:.2%}",
        f"promoted {row['naive promoted']:.2%}",
        row["mechanism promoted"] <= 0.02,
    )
    for base, change in ((0.70, -0.10), (0.50, -0.10), (0.70, -0.05), (0.70, 0.0), (0.50, 0.0), (0.90, 0.0), (0.70, 0.05)):
        row = guard_row(rng, replicates, base, change)
        if change <= -0.10:
            bar, passed = "rolled back >= 80%", row["rolled back"] >= 0.80
        elif change >= 0.0:
            bar, passed = "rolled back <= 1.0%", row["rolled back"] <= 0.01
        else:
            bar, passed = "(figures)", None
        check(
            f"guard: holdout {base:.2f}, production {change:+.2f}",
            bar,
            f"rolled back {row['rolled back']:.2%}, median {row['median guard runs']:.0f} runs",
            "(no guard)",
            passed,
        )
    misses = [
        f"{control:.2f}->{treatment:.2f}: {coverage_row(rng, replicates, control, treatment):.2%}"
        for control, treatment in ((0.70, 0.80), (0.90, 0.97), (0.95, 0.99), (0.05, 0.10))
    ]
    print(
        f"confidence sequence (normal approximation), tests whose interval ever excludes the true lift "
        f"(nominal {policy.alpha:.0%}): " + ", ".join(misses)
    )
    variants = {
        "futility off": policies.SequentialPolicy(min_detectable_lift=0.0),
        "futility on": policies.SequentialPolicy(),
    }
    costs = cost_rows(rng, replicates, variants)
    off, on = costs["futility off"], costs["futility on"]
    mix = ", ".join(f"{lift:+.2f}: {share:.0%}" for lift, share in CANDIDATE_LIFTS)
    print(f"null-test cost and lift per 10k runs (control {COST_CONTROL_RATE}; candidate lifts {mix}):")
    for name, figures in costs.items():
        print(
            f"  {name:<13} equal arms: median {figures['median trials/arm +0.00']:.0f} trials/arm at close, "
            f"promoted {figures['promoted +0.00']:.2%}; +0.05 promoted {figures['promoted +0.05']:.2%}; "
            f"+0.10 promoted {figures['promoted +0.10']:.2%}; lift per 10k runs {figures['lift per 10k runs']:.4f}"
        )
    ratio = on["lift per 10k runs"] / off["lift per 10k runs"] if off["lift per 10k runs"] else math.nan
    check(
        "futility: equal arms promoted, lift per 10k runs ratio",
        "promoted <= off's",
        f"{on['promoted +0.00']:.2%} vs {off['promoted +0.00']:.2%}; x{ratio:.2f}",
        "",
        on["promoted +0.00"] <= off["promoted +0.00"],
    )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES, help="replicates per row")
    parser.add_argument("--seed", type=int, default=pq.DEFAULT_SEED, help="random seed")
    parser.add_argument(
        "--replay", type=int, default=DEFAULT_REPLAY, help="replicates of the delay and clustered rows replayed"
    )
    args = parser.parse_args(argv)
    if args.replicates < 1 or args.replay < 0:
        parser.error("--replicates must be >= 1, --replay >= 0")
    started = time.perf_counter()
    ok = report(np.random.default_rng(args.seed), args.replicates, args.replay)
    verdict = "PASS on every bar" if ok else "FAIL on at least one bar"
    print(f"\nmechanisms at wre's defaults: {verdict} ({time.perf_counter() - started:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
