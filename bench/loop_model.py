"""A model of the self-improvement loop, in seconds: what the seed's gate can reach, and what a mechanism buys.

bench/self_improvement.py measures the gate through real processes; one fleet of three seeds takes some 20
minutes, and a seed's figure swings by ±5 points. This model replays the same loop in one process, for many
seeds, so that a proposed change to screening or testing can be judged before it is built, and so that the
gate's ceiling can be read off: ``--oracle L`` replaces screening by foresight (a candidate enters the live
test iff its true lift is at least L), which no screen can beat.

What is real and what is modelled:

- the live test's verdicts are ``scheduler.policies.decide`` at wre's defaults, asked every ``--look`` runs of
  a skill (the real bench's beat looks about every four);
- screening follows worker/screening.py: ``evolve_candidates`` candidates, the parent replayed beside them,
  successive halving over the budget in ``screen_generations`` rounds (a later round evolves from the
  previous survivor when it scored above the parent, and keeps it), the last survivor's exact sign test
  (``sign_test_p_value``) on paired fidelities at ``screen_alpha``; the budget is ``screen_budget_share`` of
  the fleet's live runs less the fleet's screening calls, one skill at most ``SKILL_CAP_SHARES`` times its own
  share plus one screening (``--budget-scope skill``: the skill's own runs), at most ``screen_max_calls`` per
  screening; a screening waits until the budget pays
  for the smallest one and for ``MIN_REPLAY_INPUTS`` recorded inputs; a screening that chose nothing is
  resumed by the next from its last survivor;
- skills, the evolver's draw and the gate's windows are the fleets of bench/self_improvement.py;
- modelled: an attempt passes with its variation's probability, a failed one stops at a uniform step (the
  simulated agent); an evolution follows a run that failed every attempt, after a cooldown of 8 runs; a
  guard's 10% holdout serves the last confirmed version for 1,100 runs after a promotion, then confirms
  (it never rolls back: the simulated evolver's promotions are not regressions); the test beside it splits
  the rest.

The model's distance from the real bench moves with the mechanism (one round of search: main +17% against a
real +23%, held-out +9% against +16%; rounds and resumed screenings: main +27.0% against +25.8%, held-out
+17.7% against +21.7%, medians of three real seeds): read its figures as comparisons between variants, not as
the gate. A fleet's skills run interleaved, one run of each in turn, as the bench's producers send them.

    python -m bench.loop_model                                # both fleets, wre's defaults, 42 seeds each
    python -m bench.loop_model --oracle 0.05 --oracle 0.10    # the ceiling: screening by foresight
    python -m bench.loop_model --setting screen_alpha=0.3     # a screening setting off its default
    python -m bench.loop_model --setting screen_generations=1     # one round of search per screening
    python -m bench.loop_model --budget-scope skill           # screening paid by the skill's own live runs
    python -m bench.loop_model --budget-cap inf               # a fleet budget with no bound per skill
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import ValidationError

from bench.common import Report
from bench.self_improvement import BAR_FIDELITY, BAR_RETRIES, FLEETS, WINDOW, Fleet
from scheduler.policies import decide
from worker.screening import SKILL_CAP_SHARES, sign_test_p_value
from worker.settings import MIN_REPLAY_INPUTS, Settings, smallest_screening

ATTEMPTS = 3
THRESHOLD = 0.9
COOLDOWN_RUNS = 8
GUARD_HOLDOUT = 0.1
GUARD_RUNS = 1100
SCREEN_SETTINGS = (
    "evolve_candidates",
    "screen_max_calls",
    "screen_generations",
    "screen_budget_share",
    "screen_alpha",
    "screen_failures",
    "screen_passes",
)


@dataclass(frozen=True)
class Loop:
    """The loop's knobs: screening at wre's defaults unless changed, or an oracle in its place."""

    candidates: int
    max_calls: int
    budget_share: float
    alpha: float
    failures: int
    passes: int
    look: int = 4
    oracle: float | None = None
    generations: int = 1
    wait_for_calls: int | None = None  # a screening waits for this much budget (None: the smallest, as wre)

    @classmethod
    def defaults(
        cls,
        changes: dict[str, float],
        look: int,
        oracle: float | None,
        wait_for_calls: int | None = None,
    ) -> Loop:
        # Validated as a worker would: a setting wre refuses at start is refused here too.
        settings = Settings.model_validate({**Settings().model_dump(), **changes})
        return cls(
            settings.evolve_candidates,
            settings.screen_max_calls,
            settings.screen_budget_share,
            settings.screen_alpha,
            settings.screen_failures,
            settings.screen_passes,
            look,
            oracle,
            settings.screen_generations,
            wait_for_calls,
        )


def _fidelity(rng: random.Random, probability: float, steps: int) -> float:
    return 1.0 if rng.random() < probability else rng.randrange(steps) / steps


def _halve(
    rng: random.Random, fleet: Fleet, parent: float, candidates: list[float], budget: int, inputs: int
) -> tuple[int, dict[int, list[float]], int]:
    """Successive halving of ``candidates`` beside the parent (index -1): the survivor, every score, the calls."""
    scores: dict[int, list[float]] = {index: [] for index in range(-1, len(candidates))}
    alive = list(range(len(candidates)))
    per_round = budget / (math.ceil(math.log2(len(alive))) + 1) if len(alive) > 1 else budget
    used = calls = 0
    while used < inputs:
        size = min(
            inputs - used, max(1, int(per_round // (len(alive) + 1))), (budget - calls) // (len(alive) + 1)
        )
        if size <= 0:
            break
        for index in (-1, *alive):
            probability = parent if index < 0 else candidates[index]
            scores[index] += [_fidelity(rng, probability, fleet.steps) for _ in range(size)]
        used += size
        calls += size * (len(alive) + 1)
        if len(alive) > 1:
            alive = sorted(alive, key=lambda index: -statistics.fmean(scores[index]))[: len(alive) // 2]
    return alive[0], scores, calls


def _screen(
    rng: random.Random,
    loop: Loop,
    fleet: Fleet,
    parent: float,
    budget: int,
    inputs: int,
    resume: float | None = None,
) -> tuple[float | None, int, float | None]:
    """One screening: the chosen candidate's pass probability (None: none beat the parent), the calls spent, and
    where the next screening of the same parent resumes (the last survivor if it scored above the parent and
    was not chosen; else None).

    As worker/screening.py: the budget is split between ``loop.generations`` rounds of search (what one round
    leaves goes to the next); each later round evolves its candidates from the previous round's survivor when
    that survivor scored above the parent (from the parent again otherwise), and keeps that survivor among
    them. Only the last round's survivor faces the sign test against the parent. With ``resume`` (a previous
    screening's survivor, as wre keeps it in the screening's event) the first round starts from it, as a later
    round would.
    """
    base, kept = (parent, None) if resume is None else (resume, resume)
    calls = 0
    for generation in range(loop.generations):
        new = loop.candidates if loop.oracle is not None else max(1, loop.candidates - (kept is not None))
        candidates = [
            min(1.0, max(0.0, base + rng.gauss(fleet.mean_shift, fleet.spread))) for _ in range(new)
        ]
        if loop.oracle is not None:
            best = max(candidates)
            return (best if best - parent >= loop.oracle else None), 0, None
        if kept is not None:
            candidates.append(kept)  # last, as in wre: a tie goes to a new one
        round_budget = (budget - calls) // (loop.generations - generation)
        survivor, scores, spent = _halve(rng, fleet, parent, candidates, round_budget, inputs)
        calls += spent
        if scores[survivor]:
            ahead = statistics.fmean(scores[survivor]) > statistics.fmean(scores[-1])
            base, kept = (candidates[survivor], candidates[survivor]) if ahead else (parent, None)
    pairs = list(zip(scores[survivor], scores[-1], strict=False))
    wins = sum(mine > theirs for mine, theirs in pairs)
    losses = sum(mine < theirs for mine, theirs in pairs)
    chosen = wins > losses and sign_test_p_value(wins, losses) <= loop.alpha
    return (candidates[survivor] if chosen else None), calls, (None if chosen else kept)


@dataclass
class _Skill:
    production: float
    confirmed: float
    guard_left: int = 0
    test: float | None = None  # the treatment's pass probability while a test runs
    counts: list[int] = field(
        default_factory=lambda: [0, 0, 0, 0]
    )  # passes and trials, control then treatment
    spent: int = 0
    failed_runs: int = 0
    passed_runs: int = 0
    cool_until: int = 0
    resume: float | None = None  # where the next screening starts (a survivor of the last one)
    first: list[float] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    tests: int = 0
    promoted: int = 0


@dataclass(frozen=True)
class SkillResult:
    fidelity: float  # first-attempt fidelity, last window against first, relative
    retries: float  # retries / executions, last window against first, relative
    screening_share: float
    tests: int
    promoted: int


@dataclass(frozen=True)
class BudgetScope:
    """Whose live runs pay for a skill's screening.

    ``fleet`` (wre's default, worker.screening.screening_budget): the share of every skill's live runs, less
    every skill's spending, so that a skill that is failing can spend what skills that need no screening
    leave; ``cap`` bounds one skill's spending at ``cap`` times its own share plus one screening (None: no
    bound). ``skill``: the skill's own, ``screen_budget_share`` of its live runs.
    """

    scope: str = "fleet"
    cap: float | None = SKILL_CAP_SHARES

    def budget(self, loop: Loop, skills: list[_Skill], skill: _Skill, index: int, live_runs: int) -> int:
        own = int(loop.budget_share * (index + 1)) - skill.spent
        if self.scope == "skill":
            return min(loop.max_calls, own)
        budget = min(loop.max_calls, int(loop.budget_share * live_runs) - sum(item.spent for item in skills))
        if self.cap is not None:
            budget = min(budget, int(self.cap * loop.budget_share * (index + 1)) - skill.spent + loop.max_calls)
        return budget


def _step(
    rng: random.Random, loop: Loop, fleet: Fleet, skill: _Skill, index: int, budget_now: Callable[[_Skill, int], int]
) -> None:
    """Run ``index`` of one skill: serve, score, maybe screen (paid by ``budget_now``), maybe decide its test."""
    arm, serves = None, skill.production
    if skill.guard_left > 0 and rng.random() < GUARD_HOLDOUT:
        serves = skill.confirmed
    elif skill.test is not None:
        arm = "treatment" if rng.random() < 0.5 else "control"
        serves = skill.test if arm == "treatment" else serves
    fidelities = []
    for _ in range(ATTEMPTS):
        fidelities.append(_fidelity(rng, serves, fleet.steps))
        if fidelities[-1] >= THRESHOLD:
            break
    passed_first, passed = fidelities[0] >= THRESHOLD, fidelities[-1] >= THRESHOLD
    skill.first.append(fidelities[0])
    skill.attempts.append(len(fidelities))
    skill.passed_runs += passed_first
    skill.failed_runs += not passed
    if skill.test is not None and arm is not None:
        offset = 2 if arm == "treatment" else 0
        skill.counts[offset] += passed_first
        skill.counts[offset + 1] += 1
    if skill.guard_left > 0:
        skill.guard_left -= 1
        skill.confirmed = skill.production if skill.guard_left == 0 else skill.confirmed
    if not passed and skill.test is None and index >= skill.cool_until:
        budget = budget_now(skill, index)
        inputs = min(loop.failures, skill.failed_runs) + min(loop.passes, skill.passed_runs)
        smallest = smallest_screening(loop.candidates, loop.generations)
        if budget >= (loop.wait_for_calls or smallest) and inputs >= MIN_REPLAY_INPUTS:
            skill.cool_until = index + COOLDOWN_RUNS
            chosen, calls, skill.resume = _screen(
                rng, loop, fleet, skill.production, budget, inputs, skill.resume
            )
            skill.spent += calls
            if chosen is not None:
                skill.test, skill.counts, skill.tests = chosen, [0, 0, 0, 0], skill.tests + 1
    if skill.test is not None and index % loop.look == 0:
        treatment = skill.test
        control_passes, control_trials, treatment_passes, treatment_trials = skill.counts
        winner = decide(control_passes, control_trials, treatment_passes, treatment_trials).winner
        if winner == "treatment":
            skill.confirmed = skill.confirmed if skill.guard_left > 0 else skill.production
            skill.production, skill.guard_left, skill.promoted = treatment, GUARD_RUNS, skill.promoted + 1
            skill.resume = None  # a survivor of the old production's screenings
        if winner is not None:
            skill.test = None


def _result(skill: _Skill, runs: int) -> SkillResult:
    size = max(1, int(runs * WINDOW))
    before, after = statistics.fmean(skill.first[:size]), statistics.fmean(skill.first[-size:])
    retry_before = sum(n - 1 for n in skill.attempts[:size]) / sum(skill.attempts[:size])
    retry_after = sum(n - 1 for n in skill.attempts[-size:]) / sum(skill.attempts[-size:])
    return SkillResult(
        (after - before) / before,
        (retry_after - retry_before) / retry_before if retry_before else 0.0,
        skill.spent / runs,
        skill.tests,
        skill.promoted,
    )




def run_skills(
    rng: random.Random, loop: Loop, fleet: Fleet, baselines: list[float], runs: int, scope: BudgetScope
) -> list[SkillResult]:
    """The skills of a fleet, their runs interleaved (one run of each skill in turn), as producers send them."""
    skills = [_Skill(baseline, baseline) for baseline in baselines]
    live_runs = 0

    def budget_now(skill: _Skill, index: int) -> int:
        return scope.budget(loop, skills, skill, index, live_runs)

    for index in range(runs):
        for skill in skills:
            live_runs += 1
            _step(rng, loop, fleet, skill, index, budget_now)
    return [_result(skill, runs) for skill in skills]


@dataclass(frozen=True)
class FleetResult:
    """One seed of a fleet, as bench/self_improvement.py reports it: medians over its skills; screening, the
    fleet's calls over its live runs (what the budget bounds)."""

    fidelity: float
    retries: float
    screening_share: float
    tests: int
    promoted: int


def run_fleet(
    loop: Loop,
    fleet: Fleet,
    seed: int,
    skills: int | None = None,
    runs: int | None = None,
    scope: BudgetScope | None = None,
) -> FleetResult:
    rng = random.Random(seed)
    count = skills or fleet.skills
    baselines = [fleet.low + (fleet.high - fleet.low) * index / max(1, count - 1) for index in range(count)]
    results = run_skills(rng, loop, fleet, baselines, runs or fleet.runs_per_skill, scope or BudgetScope())
    return FleetResult(
        statistics.median(result.fidelity for result in results),
        statistics.median(result.retries for result in results),
        statistics.fmean(result.screening_share for result in results),  # every skill has as many runs
        sum(result.tests for result in results),
        sum(result.promoted for result in results),
    )


def summary(results: list[FleetResult]) -> str:
    """Medians over seeds, and how many consecutive triples of seeds (the real bench's median of 3) meet both bars."""
    triples = [results[start : start + 3] for start in range(0, len(results) - 2, 3)]
    met = sum(
        statistics.median(item.fidelity for item in triple) >= BAR_FIDELITY
        and statistics.median(item.retries for item in triple) <= BAR_RETRIES
        for triple in triples
    )
    return (
        f"fidelity {statistics.median(item.fidelity for item in results):+.1%}, "
        f"retries/executions {statistics.median(item.retries for item in results):+.1%}, "
        f"screening {statistics.median(item.screening_share for item in results):.1%} of live runs, "
        f"tests {statistics.fmean(item.tests for item in results):.1f} "
        f"(promoted {statistics.fmean(item.promoted for item in results):.1f}) per seed; "
        f"triples of seeds meeting both bars {met}/{len(triples)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--fleet", choices=sorted(FLEETS), action="append", help="fleets (both)")
    parser.add_argument("--seeds", type=int, default=42, help="seeds per fleet and variant (42)")
    parser.add_argument("--skills", type=int, default=None, help="skills per fleet (the fleet's)")
    parser.add_argument("--runs", type=int, default=None, help="runs per skill (the fleet's)")
    parser.add_argument(
        "--look", type=int, default=4, help="the beat looks every this many runs of a skill (4)"
    )
    parser.add_argument(
        "--oracle", type=float, action="append", default=[], help="a variant screening by foresight"
    )
    parser.add_argument(
        "--setting", action="append", default=[], metavar="NAME=VALUE", help="a screening setting"
    )
    parser.add_argument(
        "--wait-for-calls", type=int, default=None, help="a screening waits for this much budget (wre: the smallest)"
    )
    parser.add_argument(
        "--budget-scope",
        choices=("skill", "fleet"),
        default=Settings.model_fields["screen_budget_scope"].default,
        help="whose live runs pay for screening: the fleet's (wre's default) or the skill's own",
    )
    parser.add_argument(
        "--budget-cap",
        type=float,
        default=None,
        help=f"a fleet budget: one skill spends at most this many times its own share, plus one screening "
        f"(wre: {SKILL_CAP_SHARES}; inf: no bound)",
    )
    args = parser.parse_args(argv)
    if args.budget_cap is not None and args.budget_scope != "fleet":
        parser.error("--budget-cap bounds a fleet budget: give --budget-scope fleet")
    cap = SKILL_CAP_SHARES if args.budget_cap is None else args.budget_cap
    scope = BudgetScope(args.budget_scope, None if math.isinf(cap) else cap)
    changes: dict[str, float] = {}
    for item in args.setting:
        name, _, value = item.partition("=")
        if name not in SCREEN_SETTINGS:
            parser.error(f"--setting {name!r}: one of {', '.join(SCREEN_SETTINGS)}")
        changes[name] = float(value) if "." in value else int(value)
    changed = [
        *args.setting,
        *([f"wait for {args.wait_for_calls} calls"] if args.wait_for_calls else []),
        *([f"fleet budget, cap {args.budget_cap:g}"] if args.budget_cap is not None else []),
        *(["the skill's own budget"] if scope.scope == "skill" else []),
    ]
    variants = {"wre's screening" + (f" ({', '.join(changed)})" if changed else ""): None}
    variants.update({f"oracle: lift >= {lift:g}": lift for lift in args.oracle})
    report = Report("loop_model: the self-improvement loop, modelled (verdicts by scheduler.policies.decide)")
    started = time.monotonic()
    for name in args.fleet or sorted(FLEETS, reverse=True):
        fleet = FLEETS[name]
        for label, oracle in variants.items():
            try:
                loop = Loop.defaults(changes, args.look, oracle, args.wait_for_calls if oracle is None else None)
            except ValidationError as error:
                parser.error(f"--setting: {error.errors()[0]['msg']}")
            results = [
                run_fleet(loop, fleet, seed, args.skills, args.runs, scope) for seed in range(1, args.seeds + 1)
            ]
            report.line(f"{fleet.name:<8} {label:<28} {summary(results)}")
    report.line(f"== {args.seeds} seeds per row; took {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
