"""Screening against the real store: candidates are replayed on recorded inputs before any live traffic.

A candidate that beats its parent on the replays enters the A/B test; worse ones never do; replays write no
outcome row and no counter; the calls are capped by the budget and recorded in one learning event.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select

from db.memory import OutcomeRecord, PatternMemory
from db.models import OUTCOMES
from db.screening import SCREENING_EVENT, screening_spent
from tests.integration.test_cli import wre
from tests.processes import service_env
from worker.evolution import evolve_skill
from worker.settings import Settings
from worker.skills import parse_skill
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
    for _ in range(count):
        memory.record_attempt(
            OutcomeRecord(
                run_id=uuid.uuid4().hex,
                attempt=1,
                skill_name=skill,
                variation_id=variation_id,
                agent="simulated",
                success=success,
                execution_success=True,
                pattern_fidelity=1.0 if success else 0.0,
                failed_at_step=None if success else "answer",
                input_context={"n": uuid.uuid4().hex},
                final=True,
            ),
            counters={"total_executions": 1},
        )


def _outcomes(memory: PatternMemory) -> int:
    with memory.transaction() as conn:
        return int(conn.execute(select(func.count()).select_from(OUTCOMES)).scalar_one())


def _screenings(memory: PatternMemory, skill: str) -> list[dict]:
    return [e.details for e in memory.get_evolution_history(skill) if e.event_type == SCREENING_EVENT]


def test_a_better_candidate_enters_the_test_and_replays_write_no_runs(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
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
    assert 2 <= screened <= settings.evolve_candidates
    inputs = details["inputs"]["failed"] + details["inputs"]["passed"]
    assert inputs * 2 <= details["calls"] <= settings.screen_max_calls
    # Successive halving: the survivor, the chosen one, was replayed on every input, the others on fewer.
    replays = sorted(c["replays"] for c in details["candidates"])
    assert replays[-1] == inputs == details["parent"]["replays"] and replays[0] < inputs
    assert details["inputs"]["passed"] >= 1  # passes join the replay set, to catch regressions
    chosen = next(c for c in details["candidates"] if c["variation_id"] == result["variation_id"])
    assert chosen["fidelity"] > details["parent"]["fidelity"] and chosen["p_value"] <= settings.screen_alpha
    assert screening_spent(memory, "sim") == (details["calls"], 500)


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


def test_screening_waits_for_its_budget(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("sim", simulated_skill(0.3, 0.6), default_agent="simulated")
    _runs(memory, "sim", production, 20, success=False)  # 0.2 x 20 runs = 4 calls: not one screening
    result = evolve_skill(memory, settings, "sim")
    assert result["status"] == "skipped" and "screening budget" in result["reason"], result
    assert [e.event_type for e in memory.get_evolution_history("sim")] == []  # no claim, no cooldown
    assert _screenings(memory, "sim") == []


def test_a_python_skill_evolves_through_its_params(memory: PatternMemory) -> None:
    settings = Settings(evolve_cooldown_seconds=0)
    production = memory.register_skill("tunable", TUNABLE, default_agent="python")
    _runs(memory, "tunable", production, 200, success=False)
    result = evolve_skill(memory, settings, "tunable")
    assert result["status"] == "testing", result
    variation = memory.get_variation(result["variation_id"])
    assert variation is not None
    assert parse_skill(variation.variation_content).params["mode"].value == "lenient"
    (details,) = _screenings(memory, "tunable")
    # Two choices: every candidate is the same move, screened once; it passes every replay, the parent none.
    assert len(details["candidates"]) == 1 and details["candidates"][0]["losses"] == 0


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
    env = service_env(database_url, broker_url, COLUMNS="250")
    shown = wre(env, "skill", "show", "sim")
    assert shown.returncode == 0, shown.stderr
    assert "evolution: on" in shown.stdout
    assert f"screening: {details['calls']} replay calls for 500 live runs" in shown.stdout
    assert result["variation_id"] in shown.stdout.split("screened")[1]
    blocked = wre(env, "skill", "show", "untunable")
    assert "evolution: not evolved: the python agent does not read instructions" in blocked.stdout
