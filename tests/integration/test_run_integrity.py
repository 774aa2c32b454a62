"""What a run refuses and what it keeps, in-process against real Postgres (the runner the task drives)."""

from __future__ import annotations

import json

import pytest

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from worker import react
from worker.registry import register_skill_text
from worker.runner import InvalidRunError, SkillRunner, choose_arm
from worker.settings import Settings


@pytest.fixture
def runner(memory: PatternMemory) -> SkillRunner:
    return SkillRunner(memory, Settings(production_cache_seconds=0))


@pytest.mark.parametrize(
    ("context", "message"),
    [({"x": float("nan")}, "not JSON"), ({"x": "a\x00b"}, "NUL"), ({"x": {1, 2}}, "not JSON")],
)
def test_contexts_the_store_cannot_hold_are_refused(
    runner: SkillRunner, memory: PatternMemory, context: dict[str, object], message: str
) -> None:
    register_skill_text(memory, python_skill("echo", "echo"))
    with pytest.raises(InvalidRunError, match=message):
        runner.validate({"skill_name": "echo", "input_context": context})


def test_an_output_with_nul_is_a_scored_and_stored_attempt(runner: SkillRunner, memory: PatternMemory) -> None:
    register_skill_text(memory, python_skill("nul", "nul_output"))
    request = runner.validate({"skill_name": "nul", "input_context": {}})
    version = runner.resolve(request, "run-nul")
    outcome = runner.attempt(request, version, runner.start_state(request, version), "run-nul")
    assert outcome.recorded and outcome.score.success
    [row] = memory.run_outcomes("run-nul")
    assert json.loads(row["output"]) == {"answer": "a\x00b"}  # JSON text escapes it: stored as given


def test_a_redelivered_attempt_goes_on_from_what_was_recorded(runner: SkillRunner, memory: PatternMemory) -> None:
    register_skill_text(memory, python_skill("flaky", "flip_flop"))
    request = runner.validate({"skill_name": "flaky", "input_context": {"key": "redelivery"}})
    version = runner.resolve(request, "run-1")
    state = runner.start_state(request, version)
    first = runner.attempt(request, version, state, "run-1")
    assert first.recorded and first.decision.action == "retry"
    again = runner.attempt(request, version, state, "run-1")  # the agent now passes
    assert again.recorded is False
    assert again.decision.action == "retry" and again.score.success is False
    rows = memory.run_outcomes("run-1")
    assert len(rows) == 1 and rows[0]["success"] is False and rows[0]["final"] is False


def _with_test(memory: PatternMemory) -> tuple[str, str, int]:
    register_skill_text(memory, python_skill("ab", "echo"))
    control, _ = memory.get_production("ab")
    treatment = memory.store_variation("ab", python_skill("ab", "echo", body="Other."))
    return control, treatment, memory.schedule_ab_test("ab", control, treatment)


def test_a_forged_react_state_is_refused(runner: SkillRunner, memory: PatternMemory) -> None:
    control, treatment, test_id = _with_test(memory)
    register_skill_text(memory, python_skill("other", "echo"))
    foreign, _ = memory.get_production("other")
    request = runner.validate({"skill_name": "ab", "input_context": {}})
    arm = choose_arm(test_id, "run-x")
    wrong_arm = "control" if arm == "treatment" else "treatment"
    wrong_version = control if wrong_arm == "control" else treatment
    forged = [
        react.start(3, 0.9, True, variation_id=foreign),
        react.start(3, 0.9, True, variation_id=wrong_version, arm=wrong_arm, test_id=test_id),
        react.start(3, 0.9, True, variation_id=control, arm="control", test_id=test_id + 99),
    ]
    for state in forged:
        with pytest.raises(InvalidRunError):
            runner.version_from_state(request, state, "run-x")
    honest_version = treatment if arm == "treatment" else control
    honest = react.start(3, 0.9, True, variation_id=honest_version, arm=arm, test_id=test_id)
    assert runner.version_from_state(request, honest, "run-x").variation_id == honest_version


def test_replacing_production_during_a_test_is_refused(memory: PatternMemory) -> None:
    _with_test(memory)
    with pytest.raises(ValueError, match="stop it first"):
        memory.register_skill("ab", python_skill("ab", "echo", body="New."), default_agent="python", replace=True)
