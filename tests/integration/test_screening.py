"""Screening against the real store: candidates are replayed on recorded inputs before any live traffic.

A candidate that beats its parent on the replays enters the A/B test; worse ones never do; replays write no
outcome row and no counter; the calls are capped by the budget and recorded in one learning event.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import func, select

from db import screening as stored
from db.abtests import EVOLUTION_LEASE_SECONDS
from db.memory import OutcomeRecord, PatternMemory
from db.models import COUNTERS, OUTCOMES
from db.screening import SCREENING_EVENT, ReplayInput, fleet_screening_spent, screening_spent
from tests.integration.test_cli import wre
from tests.processes import REPO, service_env
from worker import screening
from worker.agents.simulated import simulation_spec
from worker.evolution import evolve_skill
from worker.evolvers import EvolutionRefused, Failure
from worker.evolvers.simulated import SimulatedEvolver
from worker.screening import SKILL_CAP_SHARES, screen_candidates, screening_budget, screening_wait
from worker.settings import SCREEN_CANDIDATES, SCREEN_GENERATIONS, SMALLEST_SCREENING, Settings
from worker.skills import Skill, parse_skill
from worker.tasks import evolve_skill_task
from wre.report import build_report


def simulated_skill(probability: float, mean_shift: float) -> str:
    return f"""---
name: sim
agent: simulated
evolver: simulated
steps:
  - id: answer
    description: an answer
    expect: {{key: answer}}
simulation:
  pass_probability: {probability}
  evolution: {{mean_shift: {mean_shift}, spread: 0.02}}
---
Answer.
"""


TUNABLE = """---
name: tunable
agent: python
entrypoint: tests.fixtures.entrypoints:tunable
steps:
  - id: answer
    description: an answer
    expect: {key: answer}
params:
  mode: {value: strict, choices: [strict, lenient]}
---
Answer.
"""

UNTUNABLE = TUNABLE.replace("name: tunable", "name: untunable").split("params:")[0] + "---\nAnswer.\n"


def _runs(memory: PatternMemory, skill: str, variation_id: str, count: int, success: bool) -> None:
    # Run ids numbered from the rows already there (tables are emptied per test): replays draw from them, so
    # every test sees the same draws on every run.
    first = _outcomes(memory)
    for index in range(first, first + count):
        memory.record_attempt(
            OutcomeRecord(
                run_id=f"{skill}-run-{index}",
                attempt=1,
                skill_name=skill,
                variation_id=variation_id,
                agent="simulated",
                success=success,
                execution_success=True,
                pattern_fidelity=1.0 if success else 0.0,
                failed_at_step=None if success else "answer",
                input_context={"n": index},
                final=True,
            ),
            counters={"total_executions": 1},
        )


def _outcomes(memory: PatternMemory) -> int:
    with memory.transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one())


def _screenings(memory: PatternMemory, skill: str) -> list[dict[str, Any]]:
    return [e.details for e in memory.get_evolution_history(skill) if e.event_type == SCREENING_EVENT]


def test_a_better_candidate_enters_the_test_and_replays_write_no_runs(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    monkeypatch.setattr(screening, "SCREEN_GENERATIONS", 1)  # one round: the halving alone
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 400, success=False)
    _runs(memory, "sim", production, 100, success=True)
    outcomes, executions = _outcomes(memory), memory.get_telemetry_dashboard()["total_executions"]
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "testing", result
    # Replays are not live traffic: no outcome row, no counter moved.
    assert _outcomes(memory) == outcomes
    assert memory.get_telemetry_dashboard()["total_executions"] == executions
    (details,) = _screenings(memory, "sim")
    assert details["chosen"] == result["variation_id"]
    # Up to WRE_EVOLVE_CANDIDATES distinct draws (two may round to the same declared probability).
    screened = len(details["candidates"])
    assert 2 <= screened <= SCREEN_CANDIDATES
    inputs = details["inputs"]["failed"] + details["inputs"]["passed"]
    assert inputs * 2 <= details["calls"] <= settings.screen_max_calls
    # Successive halving: the survivor, the chosen one, was replayed on every input, the others on fewer.
    replays = sorted(c["replays"] for c in details["candidates"])
    assert replays[-1] == inputs == details["parent"]["replays"] and replays[0] < inputs
    assert details["inputs"]["passed"] >= 1  # passes join the replay set, to catch regressions
    chosen = next(c for c in details["candidates"] if c["variation_id"] == result["variation_id"])
    assert chosen["fidelity"] > details["parent"]["fidelity"] and chosen["p_value"] <= screening.SCREEN_ALPHA
    assert screening_spent(memory, "sim") == (details["calls"], 500)
    assert [item["survivor"] for item in details["rounds"]] == [result["variation_id"]]


def _declared(memory: PatternMemory, variation_id: str) -> float:
    variation = memory.get_variation(variation_id)
    assert variation is not None
    probability = simulation_spec(parse_skill(variation.variation_content)).pass_probability
    assert probability is not None
    return probability


def test_later_rounds_search_from_the_survivor_and_keep_it(memory: PatternMemory) -> None:
    # Every draw adds about 0.3 to its parent's pass probability: one round can reach about 0.6 from 0.3,
    # three rounds that each start from the previous survivor reach 0.9 and more.
    settings = Settings(evolve_cooldown_seconds=0)
    assert SCREEN_GENERATIONS == 3
    production = memory.register_skill("sim", simulated_skill(0.3, 0.3), default_agent="simulated")
    _runs(memory, "sim", production, 400, success=False)
    _runs(memory, "sim", production, 100, success=True)
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "testing", result
    (details,) = _screenings(memory, "sim")
    rounds = details["rounds"]
    assert len(rounds) == SCREEN_GENERATIONS
    assert rounds[0]["from"] == production
    chained = 0
    for before, after in zip(rounds, rounds[1:], strict=False):
        # A survivor that scored above the parent is where the next round evolves from, and is kept, last;
        # one that did not (replays are draws) sends the next round back to production.
        survivor = next(item for item in before["candidates"] if item["variation_id"] == before["survivor"])
        if survivor["fidelity"] > before["parent"]["fidelity"]:
            assert after["from"] == before["survivor"] == after["candidates"][-1]["variation_id"]
            chained += 1
        else:
            assert after["from"] == production and before["survivor"] not in str(after["candidates"])
    assert chained >= 1
    assert details["chosen"] == result["variation_id"] == rounds[-1]["survivor"]
    assert _declared(memory, result["variation_id"]) >= 0.85
    # Each round has its share of the budget (what one leaves goes to the next); the sign test judged the
    # last round's replays.
    assert sum(item["calls"] for item in rounds) == details["calls"] <= settings.screen_max_calls
    assert rounds[0]["calls"] <= settings.screen_max_calls // 3
    assert rounds[1]["calls"] <= (settings.screen_max_calls - rounds[0]["calls"]) // 2
    assert details["parent"]["replays"] == rounds[-1]["inputs"] and details["candidates"] == rounds[-1]["candidates"]
    # Rounds take the inputs after the previous round's: all 25 recorded inputs were replayed.
    assert details["inputs"] == {"failed": 20, "passed": 5}


def test_worse_candidates_get_no_live_traffic(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("sim", simulated_skill(0.9, -0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "refused" and "none beat the parent" in result["reason"], result
    assert memory.get_active_ab_test("sim") is None
    assert [v.variation_id for v in memory.list_variations("sim")] == [production]
    (details,) = _screenings(memory, "sim")
    assert details["chosen"] is None and details["calls"] > 0
    # No survivor scored above production: every round searched from production again.
    assert [item["from"] for item in details["rounds"]] == [production] * SCREEN_GENERATIONS


def test_a_share_of_zero_turns_screening_off_and_says_so(memory: PatternMemory) -> None:
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    result = evolve_skill(memory, Settings(evolve_cooldown_seconds=0, screen_budget_share=0), "sim")
    assert result["status"] == "skipped" and "screening is off" in result["reason"], result
    assert fleet_screening_spent(memory) == (0, 500)


def test_screening_waits_for_its_budget(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    # 0.2 x 449 runs = 89 calls: one short of the smallest screening (3 rounds x 5 variations x 6 inputs).
    _runs(memory, "sim", production, 449, success=False)
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "skipped" and "screening budget" in result["reason"], result
    assert [e.event_type for e in memory.get_evolution_history("sim")] == []  # no claim, no cooldown
    assert _screenings(memory, "sim") == []
    _runs(memory, "sim", production, 1, success=False)  # 90 calls: the smallest screening
    assert evolve_skill(memory, settings, "sim")["status"] == "testing"


def test_the_fleet_pays_for_failing_skills_up_to_each_ones_cap(memory: PatternMemory) -> None:
    # One replay call per live run (share 1.0), 100 per screening, 90 for the smallest; one skill at most
    # twice its own share plus one screening.
    settings = Settings(evolve_cooldown_seconds=0, screen_budget_share=1.0)
    assert (settings.screen_max_calls, SMALLEST_SCREENING) == (100, 90)
    assert SKILL_CAP_SHARES == 2
    sim = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    other = memory.register_skill("other", simulated_skill(0.3, 0.6).replace("name: sim", "name: other"),
                                  default_agent="simulated")
    steady = memory.register_skill("steady", simulated_skill(0.9, 0.0).replace("name: sim", "name: steady"),
                                   default_agent="simulated")
    _runs(memory, "sim", sim, 30, success=False)
    _runs(memory, "other", other, 30, success=False)
    # The fleet's 60 runs pay for 60 calls: the skill waits.
    assert screening_budget(memory, settings, "sim").calls == 60
    assert evolve_skill(memory, settings, "sim")["status"] == "skipped"
    # A skill that needs no screening runs 100 times: the fleet's 160 runs pay for sim's screening.
    _runs(memory, "steady", steady, 100, success=True)
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "testing", result
    (details,) = _screenings(memory, "sim")
    spent = details["calls"]
    assert 90 <= spent <= 100
    assert fleet_screening_spent(memory) == (spent, 160)  # written with the event
    # What sim spent is gone from other's budget: 160 - spent, below the smallest screening.
    budget = screening_budget(memory, settings, "other")
    assert (budget.calls, budget.fleet_spent, budget.fleet_runs) == (160 - spent, spent, 160)
    assert budget.bound_by == "the fleet's share"
    assert evolve_skill(memory, settings, "other")["status"] == "skipped"
    # 200 more live runs: other screens; sim, whose test is open, would not, the fleet notwithstanding: it
    # spent its cap, 2 x 30 + 100 calls.
    _runs(memory, "steady", steady, 200, success=True)
    assert evolve_skill(memory, settings, "other")["status"] == "testing"
    (other_details,) = _screenings(memory, "other")
    assert fleet_screening_spent(memory) == (spent + other_details["calls"], 360)
    budget = screening_budget(memory, settings, "sim")
    assert budget.calls == 160 - spent < 90 < 360 - spent - other_details["calls"]
    waiting = screening_wait(memory, settings, parse_skill(simulated_skill(0.3, 0.6)))
    assert waiting is not None and f"the fleet {spent + other_details['calls']} for 360" in waiting
    assert waiting.endswith("bound by the skill's cap; waiting for more live runs"), waiting


def test_screenings_at_once_reserve_from_the_fleet_one_after_the_other(memory: PatternMemory) -> None:
    # The fleet's 160 runs pay for one screening, and two failing skills pass the check before the claim at
    # once: the first to reserve takes up to 100 calls, the second then finds at most 60 and refuses.
    settings = Settings(evolve_cooldown_seconds=0, screen_budget_share=1.0)
    names = ("sim", "other")
    for name in names:
        variation = memory.register_skill(
            name, simulated_skill(0.3, 0.6).replace("name: sim", f"name: {name}"), default_agent="simulated"
        )
        _runs(memory, name, variation, 30, success=False)
    _runs(memory, "steady", memory.register_skill("steady", simulated_skill(0.9, 0.0).replace("name: sim", "name: steady"),
                                                  default_agent="simulated"), 100, success=True)
    assert all(screening_wait(memory, settings, parse_skill(simulated_skill(0.3, 0.6))) is None for _ in names)
    start = threading.Barrier(len(names))

    def evolve(name: str) -> dict[str, Any]:
        start.wait()
        return evolve_skill(memory, settings, name)

    with ThreadPoolExecutor(len(names)) as pool:
        results = list(pool.map(evolve, names))
    # The second is refused after its claim, or skipped before it if the first had reserved by then.
    statuses = sorted(result["status"] for result in results)
    assert statuses in (["refused", "testing"], ["skipped", "testing"]), results
    refused = next(result for result in results if result["status"] != "testing")
    assert "screening budget" in refused["reason"], refused
    (details,) = [event for name in names for event in _screenings(memory, name)]
    # Only what the one screening spent is spent: the refused one's check found it reserved, and nothing
    # reserved is left over.
    assert fleet_screening_spent(memory) == (details["calls"], 160)


def test_a_screening_that_fails_gives_its_reservation_back(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)

    class Broken(SimulatedEvolver):
        def propose(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the evolver's server is down")

    with pytest.raises(RuntimeError):
        screen_candidates(memory, settings, parse_skill(simulated_skill(0.3, 0.6)), production, Broken(), [], "seed")
    assert fleet_screening_spent(memory) == (0, 500)
    assert _screenings(memory, "sim") == []


class _MeteredAgent:
    """The agent calls screening makes, counted here too; the ``fail_at``-th raises as a dropped connection."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | None = None) -> None:
        self.made, self.fail_at, self.real = 0, fail_at, screening.run_attempt
        self.lock = threading.Lock()  # replays run in threads
        monkeypatch.setattr(screening, "run_attempt", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.made += 1
            failing = self.made == self.fail_at
        if failing:
            raise ConnectionError("the agent's server reset the connection")
        return self.real(*args, **kwargs)


def _screen_failing_skill(memory: PatternMemory, error: type[BaseException]) -> None:
    """Screen a skill with 500 failed runs (a reservation of 0.2 x 500 = 100 calls) and expect ``error``."""
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    parent = parse_skill(simulated_skill(0.3, 0.6))
    with pytest.raises(error):
        screen_candidates(memory, Settings(), parent, production, SimulatedEvolver(), [], "seed")


def test_a_screening_cut_short_counts_the_calls_it_made(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agent's server drops the 40th replay (the task would retry the evolution): the calls made stay spent
    # (the 40 and those of its batch already under way in other threads), the rest of the reservation goes back.
    agent = _MeteredAgent(monkeypatch, fail_at=40)
    _screen_failing_skill(memory, ConnectionError)
    assert 40 <= agent.made < 90  # cut short: fewer than the smallest screening
    assert fleet_screening_spent(memory) == (agent.made, 500)
    assert screening_spent(memory, "sim") == (agent.made, 500)  # the skill's own too: its cap counts them
    assert _screenings(memory, "sim") == []


def test_a_screening_whose_event_is_not_written_counts_its_calls(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("could not extend file")

    agent = _MeteredAgent(monkeypatch)
    monkeypatch.setattr(memory, "record_learning_event", disk_full)
    _screen_failing_skill(memory, RuntimeError)
    assert 90 <= agent.made < 100  # less than the 100 reserved: what is settled is seen
    assert fleet_screening_spent(memory) == (agent.made, 500)  # what was made, not the whole reservation
    assert screening_spent(memory, "sim") == (agent.made, 500)  # the skill's own, towards its cap


# A screening whose replays hang, in a process of its own (killed by the test).
HANGING_SCREENING = """
import sys, time
from db.memory import PatternMemory
from worker import screening
from worker.evolution import evolve_skill
from worker.settings import Settings

screening.run_attempt = lambda *args, **kwargs: time.sleep(3600)
evolve_skill(PatternMemory(sys.argv[1]), Settings(evolve_cooldown_seconds=0), "sim")
"""


def _reservations(memory: PatternMemory) -> dict[str, int]:
    query = (
        select(COUNTERS.c.name, func.sum(COUNTERS.c.value))
        .where(COUNTERS.c.name.startswith(stored.RESERVED_CALLS))
        .group_by(COUNTERS.c.name)
    )
    with memory.transaction() as conn:
        return {name: int(total) for name, total in conn.execute(query)}


def test_a_reservation_lost_to_a_killed_worker_stops_counting_when_its_task_would_be_over(
    memory: PatternMemory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    child = subprocess.Popen([sys.executable, "-c", HANGING_SCREENING, database_url], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while fleet_screening_spent(memory) != (100, 500):  # 0.2 x 500 runs reserved, replays under way
            assert time.monotonic() < deadline and child.poll() is None, "the screening never reserved"
            time.sleep(0.1)
    finally:
        child.kill()
        child.wait()
    # Killed: nothing settled, and its reservation holds the fleet's whole budget for now.
    assert fleet_screening_spent(memory) == (100, 500)
    parent = parse_skill(simulated_skill(0.3, 0.6))
    waiting = screening_wait(memory, Settings(), parent)
    assert waiting is not None and waiting.startswith("screening budget: 0 calls available"), waiting
    # As long as its claim holds, which the evolve task's hard time limit ends: then it no longer counts.
    assert stored.RESERVATION_SECONDS == EVOLUTION_LEASE_SECONDS == evolve_skill_task.time_limit
    later = time.time() + stored.RESERVATION_SECONDS + 1
    monkeypatch.setattr(stored, "time", SimpleNamespace(time=lambda: later))
    assert fleet_screening_spent(memory) == (0, 500)
    assert screening_wait(memory, Settings(), parent) is None
    screen_candidates(memory, Settings(), parent, production, SimulatedEvolver(), [], "seed")
    (details,) = _screenings(memory, "sim")
    assert fleet_screening_spent(memory) == (details["calls"], 500)
    # The lost reservation was deleted by the next one; that one was settled with its event.
    assert list(_reservations(memory).values()) == [0]


def test_a_screening_out_of_time_starts_no_replay(memory: PatternMemory, monkeypatch: pytest.MonkeyPatch) -> None:
    assert (screening.SCREEN_SECONDS, evolve_skill_task.soft_time_limit) == (600, 720)
    monkeypatch.setattr(screening, "SCREEN_SECONDS", 0)  # as if it had replayed for ten minutes
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    result = evolve_skill(memory, Settings(evolve_cooldown_seconds=0), "sim")
    assert result["status"] == "refused" and "screening out of time after 0 s" in result["reason"], result
    assert fleet_screening_spent(memory) == (0, 500)
    assert set(_reservations(memory).values()) <= {0}  # settled


def test_a_screening_that_chose_nothing_is_resumed_by_the_next(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At a level no replay set can reach, nothing is chosen; the last survivor, ahead of production, is kept.
    # Every draw adds about 0.15: three rounds reach about 0.75, three more from there 0.9 and beyond.
    strict = Settings(evolve_cooldown_seconds=0)
    monkeypatch.setattr(screening, "SCREEN_ALPHA", 1e-9)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.15), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    refused = evolve_skill(memory, strict, "sim")
    assert refused["status"] == "refused" and "none beat the parent" in refused["reason"], refused
    (first,) = _screenings(memory, "sim")
    assert first["production"] == production and first["resumed_from"] is None
    kept = first["resume"]["variation_id"]
    assert kept == first["rounds"][-1]["survivor"]
    assert parse_skill(first["resume"]["content"]).variation_id == kept
    found = simulation_spec(parse_skill(first["resume"]["content"])).pass_probability
    assert found is not None and 0.5 < found < 0.85
    # The next screening of the same production starts from it, as a later round would.
    _runs(memory, "sim", production, 500, success=False)
    monkeypatch.undo()  # the usual level again
    result = evolve_skill(memory, Settings(evolve_cooldown_seconds=0), "sim")
    assert result["status"] == "testing", result
    second = _screenings(memory, "sim")[-1]
    assert second["resumed_from"] == kept and second["resume"] is None  # chosen: nothing to resume
    assert second["rounds"][0]["from"] == kept and second["rounds"][0]["candidates"][-1]["variation_id"] == kept
    # The search went on from there: the chosen one is further up than one screening's three rounds reach.
    assert _declared(memory, result["variation_id"]) > found + 0.1


def test_a_kept_survivor_of_another_production_is_not_resumed(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = Settings(evolve_cooldown_seconds=0)
    monkeypatch.setattr(screening, "SCREEN_ALPHA", 1e-9)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.3), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    assert evolve_skill(memory, strict, "sim")["status"] == "refused"
    assert _screenings(memory, "sim")[-1]["resume"] is not None
    # An operator replaces the skill: the survivor was searched from the old production, not this one.
    replaced = memory.register_skill("sim", simulated_skill(0.31, 0.3), default_agent="simulated", replace=True)
    _runs(memory, "sim", replaced, 500, success=False)
    assert evolve_skill(memory, strict, "sim")["status"] == "refused"
    latest = _screenings(memory, "sim")[-1]
    assert latest["production"] == replaced and latest["resumed_from"] is None
    assert latest["rounds"][0]["from"] == replaced


class _FirstRoundOnly:
    """The simulated evolver, refusing to evolve anything but production (later rounds get nothing new)."""

    name = "first-round-only"

    def __init__(self, production: str) -> None:
        self.production = production

    def propose(self, skill: Skill, failures: list[Failure], seed: str, candidate: int = 0) -> str:
        if skill.variation_id != self.production:
            raise EvolutionRefused("nothing to propose from a candidate")
        return SimulatedEvolver().propose(skill, failures, seed, candidate)


def test_a_resumed_survivor_with_nothing_new_starts_again_from_production(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An evolver that proposes nothing from a candidate: resuming from the kept survivor has nothing to replay.
    # The screening starts from production again, and its own event replaces the resume (else it would stick).
    strict = Settings(evolve_cooldown_seconds=0)
    monkeypatch.setattr(screening, "SCREEN_ALPHA", 1e-9)
    content = simulated_skill(0.3, 0.3)
    production = memory.register_skill("sim", content, default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    evolver, parent = _FirstRoundOnly(production), parse_skill(content)
    with pytest.raises(EvolutionRefused, match="none beat the parent"):
        screen_candidates(memory, strict, parent, production, evolver, [], "first")
    kept = _screenings(memory, "sim")[-1]["resume"]["variation_id"]
    _runs(memory, "sim", production, 500, success=False)
    with pytest.raises(EvolutionRefused, match="none beat the parent"):
        screen_candidates(memory, strict, parent, production, evolver, [], "second")
    second = _screenings(memory, "sim")[-1]
    assert second["resumed_from"] is None and second["rounds"][0]["from"] == production
    assert second["refused"][0].startswith(f"resuming {kept}: no new candidate to screen")


def test_a_kept_survivor_tested_since_is_not_resumed(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = Settings(evolve_cooldown_seconds=0)
    monkeypatch.setattr(screening, "SCREEN_ALPHA", 1e-9)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.3), default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    assert evolve_skill(memory, strict, "sim")["status"] == "refused"
    resume = _screenings(memory, "sim")[-1]["resume"]
    # It reached a test by another route (an operator's) and was archived: it is not searched from again.
    stored = memory.store_variation("sim", resume["content"], parent_version=production, test_status="archived")
    assert stored == resume["variation_id"]
    _runs(memory, "sim", production, 500, success=False)
    assert evolve_skill(memory, strict, "sim")["status"] == "refused"
    latest = _screenings(memory, "sim")[-1]
    assert latest["resumed_from"] is None and latest["rounds"][0]["from"] == production


def test_a_round_with_nothing_new_ends_the_search(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    content = simulated_skill(0.3, 0.6)
    production = memory.register_skill("sim", content, default_agent="simulated")
    _runs(memory, "sim", production, 500, success=False)
    parent = parse_skill(content)
    chosen = screen_candidates(memory, settings, parent, production, _FirstRoundOnly(production), [], "seed")
    (details,) = _screenings(memory, "sim")
    # Round 2 had nothing new to replay: the search ended and round 1's survivor was judged.
    assert [item["survivor"] for item in details["rounds"]] == [details["chosen"]]
    assert parse_skill(chosen).variation_id == details["chosen"]
    (refused,) = details["refused"]
    assert refused.startswith("round 2: no new candidate to screen: nothing to propose from a candidate")
    assert details["calls"] == details["rounds"][0]["calls"] <= settings.screen_max_calls // 3 + 1


def _children_and_files() -> tuple[list[str], int]:
    """This process's child processes (of every thread) and how many files it holds open."""
    tasks = Path("/proc/self/task").glob("*/children")
    return sorted(pid for path in tasks for pid in path.read_text().split()), len(os.listdir("/proc/self/fd"))


def test_a_python_skill_evolves_through_its_params(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("tunable", TUNABLE, default_agent="python")
    _runs(memory, "tunable", production, 500, success=False)
    before = _children_and_files()
    result = evolve_skill(memory, settings, "tunable")
    assert result["status"] == "testing", result
    # Every replay ran in a child process of its thread: each was closed with its thread's share.
    assert _children_and_files() == before
    variation = memory.get_variation(result["variation_id"])
    assert variation is not None
    assert parse_skill(variation.variation_content).params["mode"].value == "lenient"
    (details,) = _screenings(memory, "tunable")
    # Two choices: every first-round candidate is the same move, screened once; it passes every replay, the
    # parent none. (Later rounds move it back to strict: the parent's behaviour under new hints, no better.)
    assert len(details["rounds"][0]["candidates"]) == 1
    chosen = next(item for item in details["candidates"] if item["variation_id"] == result["variation_id"])
    assert chosen["losses"] == 0 and chosen["wins"] == chosen["replays"]


SLOW_CHECK = """---
name: slow
agent: python
entrypoint: tests.fixtures.entrypoints:echo
time_limit: 0.5
steps:
  - id: answer
    expect: {regex: '(a+)+b'}
---
Answer.
"""


def test_replays_are_scored_within_the_time_limit_of_a_live_attempt() -> None:
    # The check backtracks for ever on thirty a's: each replay's scoring is stopped at the skill's time limit.
    inputs = [ReplayInput(f"run-{index}", {"text": "a" * 30}, True) for index in range(8)]
    before, started = _children_and_files(), time.monotonic()
    replayed = screening._replay(
        Settings(), parse_skill(SLOW_CHECK), "slow", inputs, [f"replay-{item.run_id}" for item in inputs], 0.9,
        screening.CallMeter(),
    )
    assert time.monotonic() - started < 10  # two waves on four threads of at most 0.5 s + 0.5 s
    assert replayed.fidelities == [0.0] * 8
    assert _children_and_files() == before


def test_a_python_skill_without_params_is_not_evolved(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("untunable", UNTUNABLE, default_agent="python")
    _runs(memory, "untunable", production, 200, success=False)
    result = evolve_skill(memory, settings, "untunable")
    assert result["status"] == "skipped" and "declares no params" in result["reason"], result
    assert memory.get_evolution_history("untunable") == []


def test_screenings_are_shown_by_skill_show_and_the_report(
    memory: PatternMemory, database_url: str, broker_url: str
) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    memory.register_skill("untunable", UNTUNABLE, default_agent="python")
    _runs(memory, "sim", production, 500, success=False)
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "testing", result
    (details,) = _screenings(memory, "sim")
    html = build_report(memory).html
    assert "<h2>Screening</h2>" in html and f"1 screenings, {details['calls']} agent calls" in html
    assert f"<td>{result['variation_id']}</td>" in html
    rounds, candidates = len(details["rounds"]), len({c["variation_id"] for r in details["rounds"] for c in r["candidates"]})
    assert rounds == 3 and candidates > 4  # every round proposed new candidates
    assert f"<td>{candidates} in {rounds}</td>" in html
    env = service_env(database_url, broker_url, COLUMNS="250")
    shown = wre(env, "skill", "show", "sim")
    assert shown.returncode == 0, shown.stderr
    assert "evolution: on" in shown.stdout
    # The fleet is this one skill: 0.2 x 500 runs less what it spent, under its cap.
    available = min(100, 100 - details["calls"], 2 * 100 - details["calls"] + 100)
    assert (
        f"screening: {details['calls']} replay calls for 500 live runs; the fleet {details['calls']} for 500 "
        f"(next screening may spend {available})"
    ) in shown.stdout
    assert f"waits: screening budget: {available} calls available, the smallest screening takes 90" in shown.stdout
    assert result["variation_id"] in shown.stdout.split("screened")[1]
    assert f"{rounds} ({candidates} candidates)" in shown.stdout
    blocked = wre(env, "skill", "show", "untunable")
    assert "evolution: not evolved: the python agent does not read instructions" in blocked.stdout
