"""Screening: an evolution's candidates are replayed on recorded inputs before any of them gets live traffic.

An evolution searches in ``SCREEN_GENERATIONS`` rounds. Each round asks the evolver for
``SCREEN_CANDIDATES`` candidates, replays each of them and the parent on inputs of the skill's recent
failed runs and a few recent passes (the passes catch regressions), scores every replay with the skill's own
checks, and keeps the best by successive halving. A later round proposes from the previous round's survivor
when that survivor scored above the parent (from the parent again otherwise) and keeps it among its
candidates. The last round's survivor enters the live A/B test only if it beats the parent on that round's
inputs by a one-sided exact sign test (inputs where it scored higher against inputs where it scored lower,
ties dropped) at :data:`SCREEN_ALPHA`. A screening that chose nothing keeps its last survivor (when it scored
above the parent) in its event, and the next screening of the same production starts from it. Screening is a
filter, as offline minibatch evaluation is: the live test stays the only thing that promotes, and keeps its
error guarantee whatever screening let through.

Replays run in the evolve task (the maintenance queue), through the same agents and the same scoring as live
runs, under run ids of their own. They write no outcome row, no run counter and no A/B trial: one learning event
per screening (:data:`db.screening.SCREENING_EVENT`) records every round's candidates and replay scores, the
chosen one and the calls and tokens spent, and settles the calls it reserved before it started. Calls are
capped per screening (``WRE_SCREEN_MAX_CALLS``) and by the fleet's budget, ``WRE_SCREEN_BUDGET_SHARE`` of every
skill's finished runs less every skill's screening calls, one skill at most :data:`SKILL_CAP_SHARES` times its
own share plus one screening. An evolution that the budget cannot pay for waits for more live traffic.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from typing import Any

from db.memory import PatternMemory
from db.screening import (
    RESERVATION_SECONDS,
    SCREENING_EVENT,
    ReplayInput,
    fleet_screening_spent,
    last_screening,
    replay_inputs,
    reserve_fleet_calls,
    screening_deltas,
    screening_spent,
)
from worker.agents import AgentResult, AttemptInfo, get_agent, run_attempt
from worker.agents.isolation import close_child
from worker.evolvers import EvolutionRefused, Evolver, Failure, validate_proposal
from worker.evolvers.base import evolution_blocker
from worker.scoring import Score, score_within
from worker.settings import (
    MIN_REPLAY_INPUTS,
    SCREEN_CANDIDATES,
    SCREEN_GENERATIONS,
    SMALLEST_SCREENING,
    Settings,
)
from worker.skills import Skill

log = logging.getLogger(__name__)

# How long a screening and its task may take. WRE_SCREEN_MAX_CALLS calls of up to a skill's time limit bound
# nothing a setting cannot stretch; at the defaults a screening is 25 waves of REPLAY_THREADS calls: minutes.
# After SCREEN_SECONDS no replay starts (on any pool: a threads pool gets no Celery limit), and the rounds
# finished are judged. The evolve task's soft limit leaves the replays under way an attempt and its scoring at
# the default time limit; at its hard limit a prefork worker kills it, its claim lapses and its reservation
# stops counting (db/screening.py).
SCREEN_SECONDS = 10 * 60
EVOLVE_SOFT_TIME_LIMIT = SCREEN_SECONDS + 2 * 60
EVOLVE_TIME_LIMIT = RESERVATION_SECONDS
# Replays of one screening in parallel (an llm agent waits on its server; the others are quick anyway).
REPLAY_THREADS = 4
TOKEN_KEYS = ("prompt_tokens", "completion_tokens")
# The fleet's budget lets a failing skill spend what the skills that need no screening leave, but one skill spends
# at most this many times its own share of its live runs, plus one screening: a skill whose screenings never
# find anything must not take every other skill's share.
SKILL_CAP_SHARES = 2
# The replay set: inputs of this many recent failed runs, and of a few recent passing ones (to catch regressions).
SCREEN_FAILURES = 20
SCREEN_PASSES = 5
# The sign test's level: a candidate enters the live test only if it beats its parent on the replay set at this
# level (a filter; the live test keeps the error guarantee).
SCREEN_ALPHA = 0.2


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
    :param replays: how many inputs it was replayed on (successive halving drops the weaker early).
    """

    variation_id: str
    fidelity: float
    successes: int
    wins: int = 0
    losses: int = 0
    p_value: float = 1.0
    replays: int = 0


@dataclass(frozen=True)
class _Replayed:
    fidelities: list[float]
    successes: int
    tokens: int | None

    def plus(self, more: _Replayed) -> _Replayed:
        tokens = _sum_tokens([self.tokens, more.tokens])
        return _Replayed(self.fidelities + more.fidelities, self.successes + more.successes, tokens)


def _sum_tokens(figures: Iterable[int | None]) -> int | None:
    known = [figure for figure in figures if figure is not None]
    return sum(known) if known else None


def _score(variation_id: str, replayed: _Replayed, base: _Replayed) -> ReplayScore:
    """A candidate's replays against the parent's on the same inputs (the first ones, if it was dropped early)."""
    pairs = list(zip(replayed.fidelities, base.fidelities, strict=False))
    wins = sum(mine > theirs for mine, theirs in pairs)
    losses = sum(mine < theirs for mine, theirs in pairs)
    return ReplayScore(
        variation_id, statistics.fmean(replayed.fidelities), replayed.successes, wins, losses,
        sign_test_p_value(wins, losses), len(replayed.fidelities),
    )


def replay_ids(seed: str, inputs: list[ReplayInput]) -> list[str]:
    """Run ids of the replays: one per input, shared by every variation replayed on it (paired draws)."""
    return [
        "replay-" + hashlib.sha256(f"{seed}\x1f{item.run_id}".encode()).hexdigest()[:24] for item in inputs
    ]


@dataclass(frozen=True)
class ScreeningBudget:
    """What a skill's next screening may spend, and the figures that say so.

    :param calls: agent calls the next screening may spend (at most ``WRE_SCREEN_MAX_CALLS``).
    :param skill_spent: the skill's screening calls so far.
    :param skill_runs: its finished live runs.
    :param bound_by: which limit ``calls`` is: ``WRE_SCREEN_MAX_CALLS``, the fleet's share or the skill's cap.
    :param fleet_spent: every skill's screening calls, those reserved by screenings under way included.
    :param fleet_runs: every skill's finished live runs.
    """

    calls: int
    skill_spent: int
    skill_runs: int
    bound_by: str
    fleet_spent: int
    fleet_runs: int

    def describe(self, settings: Settings) -> str:
        """The figures in one line, for a screening that waits and for ``wre skill show``."""
        return (
            f"{self.skill_spent} replay calls spent for {self.skill_runs} live runs; the fleet "
            f"{self.fleet_spent} for {self.fleet_runs} (WRE_SCREEN_BUDGET_SHARE={settings.screen_budget_share:g} "
            f"of the fleet's runs, one skill at most {SKILL_CAP_SHARES}x its own share plus "
            f"{settings.screen_max_calls}); bound by {self.bound_by}"
        )


def screening_budget(memory: PatternMemory, settings: Settings, skill_name: str) -> ScreeningBudget:
    """The calls the skill's next screening may spend.

    :param memory: the store (the skill's and the fleet's counters of screening calls and finished runs).
    :param settings: share and the cap per screening.
    :param skill_name: the skill.
    """
    return _budget(settings, *screening_spent(memory, skill_name), *fleet_screening_spent(memory))


def _budget(settings: Settings, spent: int, runs: int, fleet_spent: int, fleet_runs: int) -> ScreeningBudget:
    share = settings.screen_budget_share
    limits = {
        "WRE_SCREEN_MAX_CALLS": settings.screen_max_calls,
        "the fleet's share": int(share * fleet_runs) - fleet_spent,
        "the skill's cap": int(SKILL_CAP_SHARES * share * runs) - spent + settings.screen_max_calls,
    }
    bound_by = min(limits, key=limits.__getitem__)  # the first of equals: the cap per screening
    return ScreeningBudget(limits[bound_by], spent, runs, bound_by, fleet_spent, fleet_runs)


def _reserve(
    memory: PatternMemory, settings: Settings, skill_name: str
) -> tuple[ScreeningBudget, tuple[str, int]]:
    """The skill's budget, and its reservation from the fleet's (when it pays for the smallest screening)."""
    spent, runs = screening_spent(memory, skill_name)
    found: list[ScreeningBudget] = []

    def reserve(fleet_spent: int, fleet_runs: int) -> int:
        found.append(_budget(settings, spent, runs, fleet_spent, fleet_runs))
        return found[-1].calls if found[-1].calls >= SMALLEST_SCREENING else 0

    reservation = reserve_fleet_calls(memory, reserve)
    return found[-1], reservation


def screening_wait(
    memory: PatternMemory, settings: Settings, parent: Skill, budget: ScreeningBudget | None = None
) -> str | None:
    """Why the skill cannot be screened now (so not evolved), or None when it can.

    Checked before an evolution is claimed, so that waiting costs no claim and no cooldown: nothing an evolver
    can change; a budget that cannot pay for the smallest screening yet; too few recorded inputs yet. Checked
    again by the screening, on the budget it will spend: other skills' screenings may have spent the fleet's
    since the first check.

    :param memory: the store.
    :param settings: candidates and budget.
    :param parent: the production variation.
    :param budget: the budget to check (None: read it now).
    """
    blocker = evolution_blocker(parent)
    if blocker is not None:
        return f"{parent.name!r} is not evolved: {blocker}"
    if settings.screen_budget_share == 0:
        return "screening is off (WRE_SCREEN_BUDGET_SHARE=0): no skill is evolved"
    budget = budget or screening_budget(memory, settings, parent.name)
    if budget.calls < SMALLEST_SCREENING:
        return (
            f"screening budget: {max(budget.calls, 0)} calls available, the smallest screening takes "
            f"{SMALLEST_SCREENING}: {budget.describe(settings)}; waiting for more live runs"
        )
    found = len(replay_inputs(memory, parent.name, SCREEN_FAILURES, SCREEN_PASSES))
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
    """Search for a candidate that beats its parent on replays, in rounds; return its content.

    :param memory: the store (recorded inputs, the screening budget, the learning event).
    :param settings: candidates, rounds, budget and test level.
    :param parent: the production variation.
    :param production_id: its id.
    :param evolver: the skill's evolver.
    :param failures: recent failed runs, newest first.
    :param seed: the evolution's seed; each candidate draws from it, its round and its index.
    :raises EvolutionRefused: nothing an evolver can change, no budget, no recorded inputs, no candidate, or
        no candidate beat the parent (a learning event records that screening).
    """
    (budget, reservation), meter = _reserve(memory, settings, parent.name), CallMeter()
    try:
        # Checked again on the budget reserved: other skills' screenings may have spent the fleet's since the
        # check before the claim.
        waiting = screening_wait(memory, settings, parent, budget)
        if waiting is not None:
            raise EvolutionRefused(waiting)
        inputs = _interleaved(replay_inputs(memory, parent.name, SCREEN_FAILURES, SCREEN_PASSES))
        threshold = parent.threshold if parent.threshold is not None else settings.react_fidelity
        search = _Search(
            memory, settings, parent, production_id, evolver, failures, seed, inputs, budget.calls, threshold, meter
        )
        # A screening that chose nothing kept its last survivor if that one scored above production; the next
        # screening of the same production resumes from it, so what the last one found is not searched for again.
        resumed = _resumed(memory, parent, production_id)
        rounds, kept, refusals, resumed = search.run_resumed(resumed)
        # Every call made, a round cut short included (its rounds' own figures leave out what they did not finish).
        calls = meter.calls
        last = rounds[-1]
        parent_score = last.parent_score()
        scores = last.scores()
        # The last survivor is the only one tested, on every input it and the parent were replayed on.
        best = next(item for item in scores if item.variation_id == last.survivor)
        chosen = best if best.wins > best.losses and best.p_value <= SCREEN_ALPHA else None
        replayed_inputs = list({item.run_id: item for done in rounds for item in done.inputs}.values())
        failed_inputs = sum(item.failed for item in replayed_inputs)
        verdict = (
            f"{chosen.variation_id} beat its parent ({chosen.wins} wins, {chosen.losses} losses, p={chosen.p_value:.3f})"
            if chosen
            else f"none beat the parent (best {best.variation_id}: {best.wins} wins, {best.losses} losses, "
            f"p={best.p_value:.3f} > {SCREEN_ALPHA:g})"
        )
        screened = len({variation_id for done in rounds for variation_id, _ in done.candidates})
        description = (
            f"{screened} candidate(s) in {len(rounds)} round(s) replayed on {len(replayed_inputs)} recorded "
            f"input(s) ({failed_inputs} failed, {len(replayed_inputs) - failed_inputs} passed), {calls} agent "
            f"calls: {verdict}"
        )
        details = {
            "calls": calls,
            "tokens": _sum_tokens(done.tokens() for done in rounds),
            "inputs": {"failed": failed_inputs, "passed": len(replayed_inputs) - failed_inputs},
            # The last round's, which the sign test judged; every round's follow under "rounds".
            "parent": asdict(parent_score),
            "candidates": [asdict(item) for item in scores],
            "rounds": [done.summary() for done in rounds],
            "production": production_id,
            "resumed_from": resumed[0] if resumed else None,
            # Where the next screening of this production starts, when this one chose nothing.
            "resume": {"variation_id": kept[0], "content": kept[1].content} if kept and not chosen else None,
            "chosen": chosen.variation_id if chosen else None,
            "alpha": SCREEN_ALPHA,
            "refused": refusals,
        }
        memory.record_learning_event(
            parent.name, SCREENING_EVENT, chosen.variation_id if chosen else None,
            fidelity_before=parent_score.fidelity, fidelity_after=best.fidelity, description=description,
            details=details, counters=screening_deltas(parent.name, calls, reservation),
        )
    except BaseException:
        # No event (writing it is the last step here): the calls made are settled without one. (An error after
        # the event's commit reached the server would settle twice: a window of one round trip.)
        try:
            memory.add_to_counters(screening_deltas(parent.name, meter.calls, reservation))
        except Exception:  # the store is away: the screening's own error is the one to raise
            log.warning("screening: %d calls not settled; the reservation expires", meter.calls, exc_info=True)
        raise
    if chosen is None:
        raise EvolutionRefused(f"screening: {verdict}")
    return dict(last.candidates)[chosen.variation_id].content


class CallMeter:
    """The agent calls one screening has made, counted as each starts (replays run in threads).

    What settles the counters, whatever ends the screening: a replay that raised, or a round cut short by a
    candidate that cannot run, still made the calls before it. No call starts after :data:`SCREEN_SECONDS`.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0  # read once the replays are done
        self._deadline = time.monotonic() + SCREEN_SECONDS

    def add(self) -> None:
        with self._lock:
            if time.monotonic() > self._deadline:
                raise EvolutionRefused(f"screening out of time after {SCREEN_SECONDS} s")
            self.calls += 1


@dataclass(frozen=True)
class _Search:
    """What one screening searches with; :meth:`run` does the rounds."""

    memory: PatternMemory
    settings: Settings
    parent: Skill
    production_id: str
    evolver: Evolver
    failures: list[Failure]
    seed: str
    inputs: list[ReplayInput]
    budget: int
    threshold: float
    meter: CallMeter

    def run_resumed(
        self, resumed: tuple[str, Skill] | None
    ) -> tuple[list[_Round], tuple[str, Skill] | None, list[str], tuple[str, Skill] | None]:
        """:meth:`run` from ``resumed``, or from production when that survivor offers nothing; and where it began."""
        try:
            return (*self.run(resumed), resumed)
        except EvolutionRefused as error:
            if resumed is None:
                raise
            # The resumed survivor offers nothing new (a deterministic evolver) or cannot run: start from
            # production again, on what its replays left of the budget. This screening's event then ends the
            # resume; else every later one would stop here the same way.
            rounds, kept, refusals = replace(self, budget=self.budget - self.meter.calls).run(None)
            refusals.insert(0, f"resuming {resumed[0]}: {error}"[:200])
            return rounds, kept, refusals, None

    def run(self, start: tuple[str, Skill] | None) -> tuple[list[_Round], tuple[str, Skill] | None, list[str]]:
        """The rounds done, the survivor to keep (or None), and why proposals were dropped.

        :param start: a survivor to start from, as a later round would (a resumed screening), or None.
        :raises EvolutionRefused: the first round had no candidate, or one of them cannot run.
        """
        settings, production_id, parent, inputs = self.settings, self.production_id, self.parent, self.inputs
        rounds: list[_Round] = []
        refusals: list[str] = []
        # One round finds at best the best of a few draws around its parent, measured about as noisily as the
        # draws differ; later rounds start from what the previous one found (and replay it again beside their
        # new candidates), so the candidate the sign test judges can be several evolver steps from production.
        base_id, base = start or (production_id, parent)
        kept = start
        offset = calls = 0
        for generation in range(SCREEN_GENERATIONS):
            round_seed = self.seed if generation == 0 else f"{self.seed}\x1fround {generation + 1}"
            count = max(1, SCREEN_CANDIDATES - (kept is not None))
            seen = {variation_id for done in rounds for variation_id, _ in done.candidates}
            try:
                proposed, refused = _propose(self.memory, base, self.evolver, self.failures, round_seed, count, seen)
            except EvolutionRefused as error:
                if not rounds:
                    raise
                refusals.append(f"round {generation + 1}: {error}"[:200])
                break  # nothing new to search from the survivor: the last round's survivor is judged
            refusals += refused
            # The kept survivor goes last, so that a tie in the halving goes to a new candidate: those are drawn
            # around it, with the evolver's hoped-for step on top.
            candidates = [*proposed, *([kept] if kept is not None else [])]
            # Each round starts on the inputs after the previous round's, under run ids of its own. With fewer
            # recorded inputs than the rounds replay (25 against about 36 at the defaults) it wraps round: a
            # stochastic agent draws afresh on a repeated input, a deterministic one repeats itself.
            round_inputs = inputs[offset:] + inputs[:offset]
            try:
                skills, budget = {production_id: parent, **dict(candidates)}, self.budget - calls
                done = _halve(
                    settings, skills, production_id, candidates, base_id, round_inputs,
                    replay_ids(round_seed, round_inputs), budget // (SCREEN_GENERATIONS - generation),
                    self.threshold, self.meter,
                )
            except EvolutionRefused as error:
                if not rounds:
                    raise
                # A candidate of a later round cannot run, or time is up: the search ends there, and the rounds
                # done are judged and recorded (with their calls, which count against the budget).
                refusals.append(f"round {generation + 1}: {error}"[:200])
                break
            if not done.inputs:
                break  # the budget is spent: nothing replayed, nothing to record
            rounds.append(done)
            calls += done.calls
            offset = (offset + len(done.inputs)) % len(inputs)
            if statistics.fmean(done.replayed[done.survivor].fidelities) > done.parent_fidelity:
                base_id, base = done.survivor, dict(candidates)[done.survivor]
                kept = (base_id, base)
            else:
                base_id, base, kept = production_id, parent, None
        if not rounds:  # nothing replayed, nothing spent (the wait before makes this unreachable)
            raise EvolutionRefused(f"no recorded input of {parent.name!r} to replay")
        return rounds, kept, refusals


@dataclass(frozen=True)
class _Round:
    """One round of search: what was replayed on which inputs, and which candidate survived the halving."""

    base_id: str
    production_id: str
    candidates: list[tuple[str, Skill]]
    inputs: list[ReplayInput]
    replayed: dict[str, _Replayed]
    survivor: str
    calls: int

    @property
    def parent_fidelity(self) -> float:
        return statistics.fmean(self.replayed[self.production_id].fidelities)

    def parent_score(self) -> ReplayScore:
        base = self.replayed[self.production_id]
        return ReplayScore(
            self.production_id, self.parent_fidelity, base.successes, replays=len(base.fidelities)
        )

    def scores(self) -> list[ReplayScore]:
        base = self.replayed[self.production_id]
        return [_score(variation_id, self.replayed[variation_id], base) for variation_id, _ in self.candidates]

    def tokens(self) -> int | None:
        return _sum_tokens(item.tokens for item in self.replayed.values())

    def summary(self) -> dict[str, Any]:
        """The round as the learning event keeps it."""
        return {
            "from": self.base_id,
            "inputs": len(self.inputs),
            "calls": self.calls,
            "parent": asdict(self.parent_score()),
            "candidates": [asdict(item) for item in self.scores()],
            "survivor": self.survivor,
        }


def _halve(
    settings: Settings,
    skills: dict[str, Skill],
    production_id: str,
    candidates: list[tuple[str, Skill]],
    base_id: str,
    inputs: list[ReplayInput],
    run_ids: list[str],
    budget: int,
    threshold: float,
    meter: CallMeter,
) -> _Round:
    """One round: successive halving of ``candidates`` beside the parent within ``budget`` calls.

    Each step spends an equal share of the budget on fresh inputs for the parent and the candidates still in,
    then keeps the better half; the last one in gets the most inputs, which is where the test needs them.
    """
    replayed = {variation_id: _Replayed([], 0, None) for variation_id in skills}
    alive = [variation_id for variation_id, _ in candidates]
    per_step = budget / (math.ceil(math.log2(len(alive))) + 1)
    used = calls = 0
    while used < len(inputs):
        in_step = len(alive) + 1  # the parent and the candidates still in
        size = min(len(inputs) - used, max(1, int(per_step // in_step)), (budget - calls) // in_step)
        if size <= 0:
            break
        batch, batch_ids = inputs[used : used + size], run_ids[used : used + size]
        for variation_id in (production_id, *alive):
            replayed[variation_id] = replayed[variation_id].plus(
                _replay(settings, skills[variation_id], variation_id, batch, batch_ids, threshold, meter)
            )
        used += size
        calls += size * in_step
        if len(alive) > 1:
            alive = sorted(alive, key=lambda v: -statistics.fmean(replayed[v].fidelities))[: len(alive) // 2]
    return _Round(base_id, production_id, candidates, inputs[:used], replayed, alive[0], calls)


def _resumed(memory: PatternMemory, parent: Skill, production_id: str) -> tuple[str, Skill] | None:
    """The survivor the skill's last screening kept for the next one, if it still applies.

    It applies when that screening chose nothing, screened the production that is production now, and the
    survivor is still a valid, untested variation of it.
    """
    details = last_screening(memory, parent.name)
    if details is None or details.get("chosen") or details.get("production") != production_id:
        return None
    resume = details.get("resume")
    if not isinstance(resume, dict) or not isinstance(resume.get("content"), str):
        return None
    try:
        survivor = validate_proposal(parent, resume["content"])
    except (EvolutionRefused, ValueError):
        return None  # e.g. the rules a proposal must follow changed since
    if memory.get_variation(survivor.variation_id) is not None:
        return None  # tested since, by another route
    return survivor.variation_id, survivor


def _propose(
    memory: PatternMemory,
    parent: Skill,
    evolver: Evolver,
    failures: list[Failure],
    seed: str,
    count: int,
    seen: set[str],
) -> tuple[list[tuple[str, Skill]], list[str]]:
    """Up to ``count`` distinct new candidates (none of ``seen``), and why the others were dropped."""
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
        if variation_id in candidates or variation_id in seen:
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


def _interleaved(inputs: list[ReplayInput]) -> list[ReplayInput]:
    """Failed and passed inputs spread evenly, so that every round of replays holds both in proportion."""
    failed = [item for item in inputs if item.failed]
    passed = [item for item in inputs if not item.failed]
    position = {
        id(item): (index + 0.5) / len(group) for group in (failed, passed) for index, item in enumerate(group)
    }
    return sorted(inputs, key=lambda item: (position[id(item)], not item.failed))


def _replay(
    settings: Settings,
    skill: Skill,
    variation_id: str,
    inputs: list[ReplayInput],
    run_ids: list[str],
    threshold: float,
    meter: CallMeter,
) -> _Replayed:
    """Run ``skill`` on every input and score it, under the time limits of a live attempt; infrastructure errors
    propagate (the task retries)."""
    agent = get_agent(skill.agent)
    time_limit = skill.time_limit or settings.default_time_limit_seconds

    def share(pairs: list[tuple[ReplayInput, str]]) -> list[tuple[AgentResult, Score]]:
        # One thread's share of the replays. A python agent or a code check runs in the thread's child process,
        # which would outlive the pool's thread: it is closed when the share is done.
        done = []
        try:
            for item, run_id in pairs:
                meter.add()
                info = AttemptInfo(run_id, 1, variation_id)
                result = run_attempt(agent, skill, item.input_context, info, time_limit)
                done.append((result, score_within(skill, result.output, result.error, threshold, time_limit)))
        finally:
            close_child()
        return done

    pairs = list(zip(inputs, run_ids, strict=True))
    size = max(1, math.ceil(len(pairs) / REPLAY_THREADS))
    with ThreadPoolExecutor(max_workers=REPLAY_THREADS) as pool:
        shares = list(pool.map(share, [pairs[start : start + size] for start in range(0, len(pairs), size)]))
    results, scored = zip(*[replay for part in shares for replay in part], strict=True)
    fatal = next((result for result in results if result.fatal), None)
    if fatal is not None:
        raise EvolutionRefused(f"replays of {variation_id} cannot run: {fatal.error}")
    fidelities = [item.pattern_fidelity for item in scored]
    return _Replayed(fidelities, sum(item.success for item in scored), _tokens(results))


def _tokens(results: Iterable[AgentResult]) -> int | None:
    """Tokens the agent reported (prompt + completion), or None when it reported none."""
    reported: list[dict[str, Any]] = [result.usage for result in results if isinstance(result.usage, dict)]
    if not reported:
        return None
    return sum(int(usage.get(key) or 0) for usage in reported for key in TOKEN_KEYS)
