"""Screening: an evolution's candidates are replayed on recorded inputs before any of them gets live traffic.

An evolution asks its evolver for ``WRE_EVOLVE_CANDIDATES`` candidates, replays each of them and the parent
on the inputs of the skill's recent failed runs and a few recent passes (the passes catch regressions), and
scores every replay with the skill's own checks. The candidate with the best mean replay fidelity enters the
live A/B test only if it beats its parent on the same inputs by a one-sided exact sign test (inputs where it
scored higher against inputs where it scored lower, ties dropped) at ``WRE_SCREEN_ALPHA``. Screening is a
filter, as offline minibatch evaluation is: the live test stays the only thing that promotes, and keeps its
error guarantee whatever screening let through.

Replays run in the evolve task (the maintenance queue), through the same agents and the same scoring as live
runs, under run ids of their own. They write no outcome row, no counter and no A/B trial: one learning event
per screening (:data:`db.screening.SCREENING_EVENT`) records the candidates, their replay scores, the chosen
one and the calls and tokens spent. Calls are capped per screening (``WRE_SCREEN_MAX_CALLS``) and per skill
(``WRE_SCREEN_BUDGET_SHARE`` of its live runs): an evolution that the budget cannot pay for waits for more
live traffic.
"""

from __future__ import annotations

import hashlib
import math
import statistics
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from db.memory import PatternMemory
from db.screening import SCREENING_EVENT, ReplayInput, replay_inputs, screening_spent
from worker.agents import AgentResult, AttemptInfo, get_agent, run_attempt
from worker.evolvers import EvolutionRefused, Evolver, Failure, validate_proposal
from worker.evolvers.base import evolution_blocker
from worker.scoring import score
from worker.settings import Settings
from worker.skills import Skill

# Fewer inputs than this cannot show a difference: six wins out of six is p = 1/64 one-sided.
MIN_REPLAY_INPUTS = 6
# Replays of one screening in parallel (an llm agent waits on its server; the others are quick anyway).
REPLAY_THREADS = 4
TOKEN_KEYS = ("prompt_tokens", "completion_tokens")


def sign_test_p_value(wins: int, losses: int) -> float:
    """One-sided exact sign test: the chance of ``wins`` or more out of ``wins + losses`` fair coin tosses.

    :param wins: paired inputs where the candidate scored higher than its parent.
    :param losses: paired inputs where it scored lower (ties are left out before).
    """
    trials = wins + losses
    if trials == 0:
        return 1.0
    return float(sum(math.comb(trials, k) for k in range(wins, trials + 1)) / 2**trials)


@dataclass(frozen=True)
class ReplayScore:
    """One variation's replays: mean fidelity, passes, and (for a candidate) how it did against its parent.

    :param variation_id: the variation replayed.
    :param fidelity: mean fidelity over the replays.
    :param successes: replays that passed (fidelity at the threshold, no error).
    :param wins: inputs where it scored higher than the parent (0 for the parent itself).
    :param losses: inputs where it scored lower.
    :param p_value: the sign test's p-value against the parent (1 for the parent).
    """

    variation_id: str
    fidelity: float
    successes: int
    wins: int = 0
    losses: int = 0
    p_value: float = 1.0


@dataclass(frozen=True)
class _Replayed:
    fidelities: list[float]
    successes: int
    tokens: int | None


def replay_ids(seed: str, inputs: list[ReplayInput]) -> list[str]:
    """Run ids of the replays: one per input, shared by every variation replayed on it (paired draws)."""
    return [
        "replay-" + hashlib.sha256(f"{seed}\x1f{item.run_id}".encode()).hexdigest()[:24] for item in inputs
    ]


def _budget(memory: PatternMemory, settings: Settings, skill_name: str) -> int:
    spent, live_runs = screening_spent(memory, skill_name)
    return min(settings.screen_max_calls, int(settings.screen_budget_share * live_runs) - spent)


def screening_wait(memory: PatternMemory, settings: Settings, parent: Skill) -> str | None:
    """Why the skill cannot be screened now (so not evolved), or None when it can.

    Checked before an evolution is claimed, so that waiting costs no claim and no cooldown: nothing an evolver
    can change; a budget that cannot pay for the smallest screening yet; too few recorded inputs yet.

    :param memory: the store.
    :param settings: candidates and budget.
    :param parent: the production variation.
    """
    blocker = evolution_blocker(parent)
    if blocker is not None:
        return f"{parent.name!r} is not evolved: {blocker}"
    smallest = (settings.evolve_candidates + 1) * MIN_REPLAY_INPUTS
    if _budget(memory, settings, parent.name) < smallest:
        spent, live_runs = screening_spent(memory, parent.name)
        return (
            f"screening budget: {spent} replay calls spent for {live_runs} live runs "
            f"(WRE_SCREEN_BUDGET_SHARE={settings.screen_budget_share:g}); waiting for more live runs"
        )
    found = len(replay_inputs(memory, parent.name, settings.screen_failures, settings.screen_passes))
    if found < MIN_REPLAY_INPUTS:
        return f"only {found} recorded input(s) of {parent.name!r} to replay; waiting for {MIN_REPLAY_INPUTS}"
    return None


def screen_candidates(
    memory: PatternMemory,
    settings: Settings,
    parent: Skill,
    production_id: str,
    evolver: Evolver,
    failures: list[Failure],
    seed: str,
) -> str:
    """Propose candidates, replay them with their parent, and return the content of the one that beat it.

    :param memory: the store (recorded inputs, the screening budget, the learning event).
    :param settings: candidates, budget and test level.
    :param parent: the production variation.
    :param production_id: its id.
    :param evolver: the skill's evolver.
    :param failures: recent failed runs, newest first.
    :param seed: the evolution's seed; each candidate draws from it and its index.
    :raises EvolutionRefused: nothing an evolver can change, no budget, no recorded inputs, no candidate, or
        no candidate beat the parent (a learning event records that screening).
    """
    waiting = screening_wait(memory, settings, parent)
    if waiting is not None:
        raise EvolutionRefused(waiting)
    budget = _budget(memory, settings, parent.name)
    inputs = replay_inputs(memory, parent.name, settings.screen_failures, settings.screen_passes)
    candidates, refusals = _propose(memory, parent, evolver, failures, seed, settings.evolve_candidates)
    # Cut the replay set to the budget, keeping failed and passed inputs in proportion.
    size = min(len(inputs), budget // (len(candidates) + 1))
    if size < MIN_REPLAY_INPUTS:
        raise EvolutionRefused(f"only {len(inputs)} recorded input(s) of {parent.name!r} to replay")
    inputs = _cut(inputs, size)
    run_ids = replay_ids(seed, inputs)
    threshold = parent.threshold if parent.threshold is not None else settings.react_fidelity
    base = _replay(settings, parent, production_id, inputs, run_ids, threshold)
    parent_score = ReplayScore(production_id, statistics.fmean(base.fidelities), base.successes)
    scores: list[ReplayScore] = []
    tokens = base.tokens
    for variation_id, skill in candidates:
        replayed = _replay(settings, skill, variation_id, inputs, run_ids, threshold)
        wins = sum(c > p for c, p in zip(replayed.fidelities, base.fidelities, strict=True))
        losses = sum(c < p for c, p in zip(replayed.fidelities, base.fidelities, strict=True))
        scores.append(
            ReplayScore(
                variation_id,
                statistics.fmean(replayed.fidelities),
                replayed.successes,
                wins,
                losses,
                sign_test_p_value(wins, losses),
            )
        )
        if replayed.tokens is not None:
            tokens = (tokens or 0) + replayed.tokens
    # The best by mean replay fidelity (then passes, then proposal order) is the only one tested.
    best = max(scores, key=lambda s: (s.fidelity, s.successes, -scores.index(s)))
    chosen = best if best.wins > best.losses and best.p_value <= settings.screen_alpha else None
    calls = len(inputs) * (len(candidates) + 1)
    failed_inputs = sum(item.failed for item in inputs)
    verdict = (
        f"{chosen.variation_id} beat its parent ({chosen.wins} wins, {chosen.losses} losses, p={chosen.p_value:.3f})"
        if chosen
        else f"none beat the parent (best {best.variation_id}: {best.wins} wins, {best.losses} losses, "
        f"p={best.p_value:.3f} > {settings.screen_alpha:g})"
    )
    description = (
        f"{len(candidates)} candidate(s) replayed on {len(inputs)} recorded input(s) "
        f"({failed_inputs} failed, {len(inputs) - failed_inputs} passed), {calls} agent calls: {verdict}"
    )
    memory.record_learning_event(
        parent.name,
        SCREENING_EVENT,
        chosen.variation_id if chosen else None,
        fidelity_before=parent_score.fidelity,
        fidelity_after=best.fidelity,
        description=description,
        details={
            "calls": calls,
            "tokens": tokens,
            "inputs": {"failed": failed_inputs, "passed": len(inputs) - failed_inputs},
            "parent": asdict(parent_score),
            "candidates": [asdict(item) for item in scores],
            "chosen": chosen.variation_id if chosen else None,
            "alpha": settings.screen_alpha,
            "refused": refusals,
        },
    )
    if chosen is None:
        raise EvolutionRefused(f"screening: {verdict}")
    return next(skill.content for variation_id, skill in candidates if variation_id == chosen.variation_id)


def _propose(
    memory: PatternMemory, parent: Skill, evolver: Evolver, failures: list[Failure], seed: str, count: int
) -> tuple[list[tuple[str, Skill]], list[str]]:
    """Up to ``count`` distinct new candidates, and why the others were dropped."""
    candidates: dict[str, Skill] = {}
    refusals: list[str] = []
    for index in range(count):
        try:
            proposal = validate_proposal(
                parent, evolver.propose(parent, failures, seed=seed, candidate=index)
            )
        except (EvolutionRefused, ValueError) as error:
            refusals.append(str(error)[:200])
            continue
        variation_id = proposal.variation_id
        if variation_id in candidates:
            continue  # a deterministic evolver proposes the same thing every time
        known = memory.get_variation(variation_id)
        if known is not None:
            refusals.append(f"{variation_id} is known ({known.test_status})")
            continue
        candidates[variation_id] = proposal
    if not candidates:
        raise EvolutionRefused(
            "no new candidate to screen" + (f": {'; '.join(refusals[:3])}" if refusals else "")
        )
    return list(candidates.items()), refusals


def _cut(inputs: list[ReplayInput], size: int) -> list[ReplayInput]:
    failed = [item for item in inputs if item.failed]
    passed = [item for item in inputs if not item.failed]
    keep_passed = min(len(passed), round(size * len(passed) / len(inputs)))
    return failed[: size - keep_passed] + passed[:keep_passed]


def _replay(
    settings: Settings,
    skill: Skill,
    variation_id: str,
    inputs: list[ReplayInput],
    run_ids: list[str],
    threshold: float,
) -> _Replayed:
    """Run ``skill`` on every input and score it; infrastructure errors propagate (the task retries)."""
    agent = get_agent(skill.agent)
    time_limit = skill.time_limit or settings.default_time_limit_seconds

    def one(pair: tuple[ReplayInput, str]) -> AgentResult:
        item, run_id = pair
        return run_attempt(agent, skill, item.input_context, AttemptInfo(run_id, 1, variation_id), time_limit)

    with ThreadPoolExecutor(max_workers=REPLAY_THREADS) as pool:
        results = list(pool.map(one, zip(inputs, run_ids, strict=True)))
    fatal = next((result for result in results if result.fatal), None)
    if fatal is not None:
        raise EvolutionRefused(f"replays of {variation_id} cannot run: {fatal.error}")
    scored = [score(skill, result.output, result.error, threshold) for result in results]
    return _Replayed(
        [item.pattern_fidelity for item in scored],
        sum(item.success for item in scored),
        _tokens(results),
    )


def _tokens(results: list[AgentResult]) -> int | None:
    """Tokens the agent reported (prompt + completion), or None when it reported none."""
    reported = [result.usage for result in results if isinstance(result.usage, dict)]
    if not reported:
        return None
    total = 0
    for usage in reported:
        figures: dict[str, Any] = usage
        total += sum(int(figures.get(key) or 0) for key in TOKEN_KEYS)
    return total
