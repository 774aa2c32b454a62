"""Evolving the same production version again, after its first proposal lost, tests a NEW proposal.

Found by bench/self_improvement.py: the evolver's seed was (production, number of recent failures), and that
number stops changing at worker.evolution.FAILURE_WINDOW, so every later evolution proposed the archived variation
again and was refused as known: the skill could never improve after its first losing variation.
"""

from __future__ import annotations

import uuid

import pytest

from db.memory import OutcomeRecord, PatternMemory
from worker import evolution, screening
from worker.evolution import evolve_skill
from worker.settings import Settings

SKILL = """---
name: sim
agent: simulated
evolver: simulated
steps:
  - id: answer
    description: an answer
    expect: {key: answer}
simulation:
  pass_probability: 0.5
  evolution: {mean_shift: 0.4, spread: 0.05}
---
Answer.
"""


def _failed_run(memory: PatternMemory, variation_id: str) -> None:
    memory.record_attempt(
        OutcomeRecord(
            run_id=uuid.uuid4().hex,
            attempt=1,
            skill_name="sim",
            variation_id=variation_id,
            agent="simulated",
            success=False,
            execution_success=True,
            pattern_fidelity=0.0,
            failed_at_step="answer",
            input_context={"n": uuid.uuid4().hex},
            final=True,
        )
    )


def test_each_evolution_of_one_production_version_proposes_something_new(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Proposals far better than the parent, a screening budget that allows them, a lenient filter: this test
    # is about the seed, screening has its own tests.
    settings = Settings(evolve_cooldown_seconds=0, screen_budget_share=10)
    monkeypatch.setattr(evolution, "FAILURE_WINDOW", 3)
    monkeypatch.setattr(screening, "SCREEN_ALPHA", 0.5)
    production = memory.register_skill("sim", SKILL, default_agent="simulated")
    proposed = []
    for _ in range(3):
        for _ in range(10):  # more failures than the window: the count of failures no longer changes
            _failed_run(memory, production)
        result = evolve_skill(memory, settings, "sim")
        assert result["status"] == "testing", result
        proposed.append(result["variation_id"])
        memory.stop_ab_test(result["test_id"])  # the proposal lost; production is unchanged
    assert len(set(proposed)) == 3
    assert memory.get_production("sim")[0] == production
