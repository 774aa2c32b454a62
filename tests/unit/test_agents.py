"""Agents: the registry, the python agent's allow-list, the simulated agent, and run_attempt's guarantees."""

from __future__ import annotations

import functools
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit import fixture_entrypoints
from worker.agents import (
    AGENT_NAMES,
    AgentInfrastructureError,
    AgentReply,
    AttemptInfo,
    ForbiddenEntrypointError,
    SimulationSpecError,
    UnknownAgentError,
    get_agent,
    isolation,
    load_entrypoint,
    run_attempt,
)
from worker.agents.isolation import close_child
from worker.agents.simulated import SIMULATED_MARKER, attempt_seed
from worker.scoring import score
from worker.settings import get_settings
from worker.skills import EntrypointError, Skill, load_skill_file, parse_skill

FIXTURES = "tests.unit.fixture_entrypoints"
SKILLS_DIR = Path(__file__).resolve().parents[2] / "skills"
TIME_LIMIT = 5.0


@pytest.fixture(autouse=True)
def allow_fixture_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(get_settings(), "python_skill_modules", ["skills", FIXTURES])
    # The skill's code runs in a child forked with the settings of its time: fork it with these.
    close_child()
    yield
    close_child()


@pytest.fixture
def released() -> Iterator[None]:
    fixture_entrypoints.RELEASE.clear()
    yield
    fixture_entrypoints.RELEASE.set()


def python_skill(function: str) -> Skill:
    text = (
        f"---\nname: p\nagent: python\nentrypoint: '{FIXTURES}:{function}'\n"
        "steps: [{id: a, expect: {key: a}}]\n---\n"
    )
    return parse_skill(text, allowed_modules=["skills", FIXTURES])


def simulated_skill(
    simulation: str, steps: str = "[{id: a, expect: {key: a}}, {id: b, expect: {key: b}}]"
) -> Skill:
    return parse_skill(f"---\nname: s\nagent: simulated\nsteps: {steps}\nsimulation: {simulation}\n---\n")


def attempt(number: int = 1, run_id: str = "run-1", variation_id: str = "v1") -> AttemptInfo:
    return AttemptInfo(run_id=run_id, attempt=number, variation_id=variation_id)


def run(skill: Skill, context: dict[str, Any] | None = None, time_limit: float = TIME_LIMIT) -> Any:
    return run_attempt(get_agent(skill.agent), skill, context or {}, attempt(), time_limit)


# -- registry


def test_registry_names() -> None:
    assert AGENT_NAMES == ("llm", "python", "simulated")
    for name in AGENT_NAMES:
        assert get_agent(name).name == name


def test_unknown_agent_lists_the_known_ones() -> None:
    with pytest.raises(
        UnknownAgentError, match="unknown agent 'gpt' \\(known agents: llm, python, simulated\\)"
    ):
        get_agent("gpt")
    assert issubclass(UnknownAgentError, ValueError)


def test_attempt_info_validates() -> None:
    with pytest.raises(ValueError, match="attempt"):
        AttemptInfo("r", 0, "v")


# -- python agent


def test_python_agent_calls_the_entrypoint_with_a_copy_of_the_context() -> None:
    context = {"output": {"a": 1}}
    result = run(python_skill("echo"), context)
    assert (result.output, result.error) == ({"a": 1}, None)
    assert "mutated" not in context


def test_python_agent_runs_the_example_skill() -> None:
    skill = load_skill_file(SKILLS_DIR / "extract_contact.md")
    result = run(skill, {"text": "Write to ada@example.com or call +44 20 7946 0958.\nRegards, Ada Lovelace"})
    assert result.output == {"name": "Ada Lovelace", "email": "ada@example.com", "phone": "+442079460958"}
    assert score(skill, result.output, result.error, 0.9).pattern_fidelity == 1.0


@pytest.mark.parametrize("reference", ["os:system", "builtins:eval", "subprocess:run", "skills_evil:f"])
def test_forbidden_entrypoints(reference: str) -> None:
    with pytest.raises(ForbiddenEntrypointError):
        load_entrypoint(reference)
    assert issubclass(ForbiddenEntrypointError, ValueError)


def test_a_function_re_exported_into_an_allowed_module_is_refused() -> None:
    with pytest.raises(ForbiddenEntrypointError, match="defined in"):
        load_entrypoint(f"{FIXTURES}:system")


def test_missing_modules_and_functions() -> None:
    with pytest.raises(EntrypointError, match="cannot import"):
        load_entrypoint("skills.nowhere:f")
    with pytest.raises(EntrypointError, match="no function"):
        load_entrypoint("skills.examples:nothing")
    with pytest.raises(EntrypointError, match="no function"):
        load_entrypoint("skills.examples:EMAIL")


def test_the_allow_list_is_checked_again_at_import_time(monkeypatch: pytest.MonkeyPatch) -> None:
    skill = python_skill("echo")
    monkeypatch.setattr(get_settings(), "python_skill_modules", ["skills"])
    result = run(skill)
    assert result.error is not None and result.error.startswith("ForbiddenEntrypointError:")


def test_a_python_retry_sees_the_previous_attempt() -> None:
    previous = {"fidelity": 0.5, "failed_at_step": "a", "error": None}
    result = run(python_skill("retry_aware"), {"_react_retry": True, "_previous_attempt": previous})
    assert result.output == {"retry": True, "previous": previous}


# -- run_attempt


def test_an_exception_becomes_the_error_trimmed() -> None:
    result = run(python_skill("crash"))
    assert result.output is None
    assert result.error is not None and result.error.startswith("RuntimeError: boom")
    assert len(result.error) <= 500
    assert result.elapsed_ms >= 0


def test_system_exit_is_an_error_too() -> None:
    assert run(python_skill("exit_now")).error == "SystemExit: 3"


def test_infrastructure_errors_are_re_raised() -> None:
    with pytest.raises(AgentInfrastructureError, match="503"):
        run(python_skill("unavailable"))


@pytest.mark.usefixtures("released")
def test_a_timed_out_python_agent_is_killed() -> None:
    close_child()
    assert isolation.call_in_child(functools.partial(int, "1"), 5) == 1  # this thread's child, started
    pid = isolation._local.child.pid
    threads = threading.active_count()
    result = run(python_skill("sleep"), time_limit=0.1)
    assert result.output is None
    assert result.error == "timed out after 0.1s"
    assert 100 <= result.elapsed_ms < 2000
    # Nothing left behind: no thread, and the child is killed and reaped (no longer a child of this process;
    # other tests' processes may be, so only this pid is asked about).
    assert threading.active_count() == threads
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    assert run(python_skill("echo")).error is None  # and the next attempt gets a fresh child


@pytest.mark.usefixtures("released")
def test_other_agents_time_out_in_an_abandoned_thread() -> None:
    class Waiting:
        name = "waiting"

        def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
            fixture_entrypoints.RELEASE.wait(5)
            return "late"

    result = run_attempt(Waiting(), python_skill("echo"), {}, attempt(), 0.1)
    assert result.error == "timed out after 0.1s"
    assert any(thread.name.startswith("wre-attempt-") and thread.daemon for thread in threading.enumerate())


def test_elapsed_time_is_measured() -> None:
    result = run(python_skill("slow"))
    assert result.output == "done"
    assert result.elapsed_ms >= 50


def test_outputs_must_be_json() -> None:
    result = run(python_skill("not_json"))
    assert result.error is not None and "not JSON-serializable" in result.error


@pytest.mark.parametrize("time_limit", [0, -1, float("inf"), float("nan")])
def test_time_limit_must_be_positive(time_limit: float) -> None:
    with pytest.raises(ValueError, match="time_limit"):
        run(python_skill("echo"), time_limit=time_limit)


def test_agent_reply_carries_usage() -> None:
    class Counting:
        name = "counting"

        def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
            return AgentReply({"a": 1}, {"tokens": 7})

    result = run_attempt(Counting(), python_skill("echo"), {}, attempt(), TIME_LIMIT)
    assert (result.output, result.usage) == ({"a": 1}, {"tokens": 7})


# -- simulated agent


def test_simulated_output_is_marked_and_reproducible() -> None:
    skill = simulated_skill("{pass_probability: 0.5}")
    agent = get_agent("simulated")
    outputs = [agent.run(skill, {}, attempt(1, f"r{index}")) for index in range(20)]
    again = [agent.run(skill, {}, attempt(1, f"r{index}")) for index in range(20)]
    assert outputs == again
    assert all(isinstance(output, dict) and output[SIMULATED_MARKER] is True for output in outputs)
    assert len({json.dumps(output, sort_keys=True) for output in outputs}) > 1


def test_the_seed_depends_on_variation_run_and_attempt() -> None:
    seeds = {
        attempt_seed("v", "r", 1),
        attempt_seed("v", "r", 2),
        attempt_seed("v", "s", 1),
        attempt_seed("w", "r", 1),
    }
    assert len(seeds) == 4
    assert attempt_seed("v", "r", 1) == attempt_seed("v", "r", 1)


@pytest.mark.parametrize("probability", [0.0, 0.3, 0.7, 1.0])
def test_simulated_success_rate_matches_the_declared_probability(probability: float) -> None:
    skill = simulated_skill(f"{{pass_probability: {probability}}}")
    agent = get_agent("simulated")
    trials = 2000
    successes = sum(
        score(skill, agent.run(skill, {}, attempt(1, f"r{index}")), None, 0.9).success
        for index in range(trials)
    )
    # 4.5 standard errors at p = 0.5: a false alarm about once in 300,000 runs (the draws are seeded anyway).
    assert abs(successes / trials - probability) <= 4.5 * (0.25 / trials) ** 0.5


def test_a_failing_simulated_attempt_breaks_at_a_step_and_fails_the_rest() -> None:
    skill = simulated_skill(
        "{pass_probability: 0.0}", "[{id: a, expect: {key: a}}, {id: b, expect: {key: b}}]"
    )
    agent = get_agent("simulated")
    seen = set()
    for index in range(50):
        result = score(skill, agent.run(skill, {}, attempt(1, f"r{index}")), None, 0.9)
        passes = tuple(step["passed"] for step in result.step_results)
        assert passes in {(False, False), (True, False)}
        seen.add(passes)
    assert len(seen) == 2


def test_per_step_probabilities() -> None:
    skill = simulated_skill("{pass_probabilities: {a: 0.9, b: 0.2}}")
    agent = get_agent("simulated")
    trials = 2000
    outputs = [agent.run(skill, {}, attempt(1, f"r{index}")) for index in range(trials)]
    rate_a = sum("a" in output for output in outputs) / trials  # type: ignore[operator]
    rate_b = sum("b" in output for output in outputs) / trials  # type: ignore[operator]
    assert abs(rate_a - 0.9) < 0.05 and abs(rate_b - 0.2) < 0.05


@pytest.mark.parametrize(
    ("simulation", "steps", "message"),
    [
        ("null", None, "needs 'simulation"),
        ("{}", None, "exactly one of"),
        ("{pass_probability: 0.5, pass_probabilities: {a: 1, b: 1}}", None, "exactly one of"),
        ("{pass_probability: 1.5}", None, "between 0 and 1"),
        ("{pass_probability: true}", None, "between 0 and 1"),
        ("{pass_probabilities: {a: 0.5}}", None, "every step exactly once"),
        ("{pass_probabilities: {a: 0.5, b: 0.5, c: 0.5}}", None, "every step exactly once"),
        ("{pass_probability: 0.5, generation: -1}", None, "generation"),
        ("{pass_probability: 0.5}", "[{id: a, expect: {regex: x}}]", "needs 'key' checks"),
        ("{pass_probability: 0.5}", "[{id: a, expect: {key: x}}, {id: b, expect: {key: x}}]", "same key"),
    ],
)
def test_bad_simulation_declarations(simulation: str, steps: str | None, message: str) -> None:
    skill = simulated_skill(simulation, steps) if steps else simulated_skill(simulation)
    with pytest.raises(SimulationSpecError, match=message):
        get_agent("simulated").run(skill, {}, attempt())
    result = run_attempt(get_agent("simulated"), skill, {}, attempt(), TIME_LIMIT)
    assert result.error is not None and result.error.startswith("SimulationSpecError:")


@pytest.mark.parametrize("name", ["summarize_ticket", "classify_intent"])
def test_example_simulated_skills_run(name: str) -> None:
    skill = load_skill_file(SKILLS_DIR / f"{name}.md")
    result = run_attempt(
        get_agent(skill.agent), skill, {}, attempt(variation_id=skill.variation_id), TIME_LIMIT
    )
    assert result.error is None
    assert isinstance(result.output, dict) and result.output[SIMULATED_MARKER] is True
