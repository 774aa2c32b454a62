"""Screening's pure parts and what evolvers may change: the sign test, params, candidates, the blocker."""

from __future__ import annotations

import pytest

from worker.evolvers import EvolutionRefused, Failure, get_evolver, validate_proposal
from worker.evolvers.base import evolution_blocker, tuned_params
from worker.evolvers.llm import CANDIDATE_TEMPERATURES, candidate_temperature, evolution_prompt
from worker.screening import sign_test_p_value
from worker.skills import SkillFileError, parse_skill

PYTHON = """---
name: tunable
agent: python
entrypoint: tests.fixtures.entrypoints:tunable
steps:
  - id: answer
    expect: {{key: answer}}
{params}---
Answer.
"""
PARAMS = """params:
  mode: {value: strict, choices: [strict, lenient, loose]}
  window: {value: 3, min: 1, max: 9}
  cutoff: {value: 0.5, min: 0.0, max: 1.0}
"""
SIMULATED = """---
name: sim
agent: simulated
evolver: simulated
steps:
  - id: answer
    expect: {key: answer}
simulation:
  pass_probability: 0.5
---
Answer.
"""
FAILURES = [Failure("r1", 0.0, "answer", None, '{"answer": ""}')]


def test_sign_test_p_values_are_exact_binomial_tails() -> None:
    assert sign_test_p_value(6, 0) == 1 / 64
    assert sign_test_p_value(5, 1) == 7 / 64
    assert sign_test_p_value(0, 0) == 1.0
    assert sign_test_p_value(0, 4) == 1.0
    assert sign_test_p_value(10, 10) == pytest.approx(0.5881, abs=1e-4)


def test_params_are_parsed_and_passed_by_value() -> None:
    skill = parse_skill(PYTHON.format(params=PARAMS))
    assert skill.param_values() == {"mode": "strict", "window": 3, "cutoff": 0.5}
    assert skill.params["window"].integral and not skill.params["cutoff"].integral


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("params:\n  mode: {value: odd, choices: [strict, lenient]}\n", "not one of the choices"),
        ("params:\n  window: {value: 12, min: 1, max: 9}\n", "within 1..9"),
        ("params:\n  _hidden: {value: 1, choices: [1, 2]}\n", "identifier"),
        ("params:\n  mode: {value: a, choices: [a]}\n", "at least two"),
        ("params:\n  w: {value: 1, min: 3, max: 2}\n", "min must be below max"),
        ("params:\n  w: {value: 1, step: 2}\n", "unknown field"),
    ],
)
def test_malformed_params_are_one_clear_error(params: str, message: str) -> None:
    with pytest.raises(SkillFileError, match=message) as caught:
        parse_skill(PYTHON.format(params=params), source="t.md")
    assert str(caught.value).startswith("t.md:") and "params" in caught.value.field


def test_tuned_params_move_one_value_within_its_domain_and_differ_per_candidate() -> None:
    parent = parse_skill(PYTHON.format(params=PARAMS))
    proposals = {tuned_params(parent, "seed", candidate) for candidate in range(8)}
    assert len(proposals) >= 4
    for content in proposals:
        proposal = validate_proposal(parent, content)
        moved = {
            name for name, value in proposal.param_values().items() if value != parent.params[name].value
        }
        assert len(moved) == 1
        assert proposal.params["mode"].value in ("strict", "lenient", "loose")
        assert 1 <= proposal.params["window"].value <= 9 and isinstance(proposal.params["window"].value, int)
    assert tuned_params(parent, "seed", 2) == tuned_params(parent, "seed", 2)


def test_a_proposal_may_not_change_what_a_param_may_take() -> None:
    parent = parse_skill(PYTHON.format(params=PARAMS))
    widened = PYTHON.format(params=PARAMS.replace("max: 9", "max: 99").replace("value: 3", "value: 50"))
    with pytest.raises(EvolutionRefused, match="only values may evolve"):
        validate_proposal(parent, widened)


def test_the_hints_evolver_tunes_a_python_skill_and_varies_with_the_candidate() -> None:
    parent = parse_skill(PYTHON.format(params=PARAMS))
    hints = get_evolver("hints")
    proposals = {hints.propose(parent, FAILURES, seed="s", candidate=k) for k in range(4)}
    assert len(proposals) > 1
    assert all(parse_skill(p).param_values() != parent.param_values() for p in proposals)


def test_the_simulated_evolver_draws_one_candidate_per_index() -> None:
    parent = parse_skill(SIMULATED)
    simulated = get_evolver("simulated")
    assert len({simulated.propose(parent, [], seed="s", candidate=k) for k in range(4)}) == 4


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (PYTHON.format(params=""), "declares no params"),
        (PYTHON.format(params="evolver: simulated\n" + PARAMS), "simulated evolver changes only"),
        (SIMULATED.replace("evolver: simulated", "evolver: hints"), "reads only simulation"),
        (SIMULATED.replace("agent: simulated", "agent: llm"), "llm agent does not read"),
    ],
)
def test_a_skill_with_nothing_an_evolver_can_change_says_why(text: str, reason: str) -> None:
    blocker = evolution_blocker(parse_skill(text))
    assert blocker is not None and reason in blocker


def test_evolvable_skills_have_no_blocker() -> None:
    assert evolution_blocker(parse_skill(PYTHON.format(params=PARAMS))) is None
    assert evolution_blocker(parse_skill(SIMULATED)) is None
    llm = SIMULATED.replace("agent: simulated", "agent: llm").replace("evolver: simulated", "evolver: llm")
    assert evolution_blocker(parse_skill(llm)) is None


def test_llm_candidates_sample_at_different_temperatures_and_ask_for_another_angle() -> None:
    assert candidate_temperature(0.3, 0) == 0.3
    assert candidate_temperature(None, 0) == CANDIDATE_TEMPERATURES[0]
    assert len({candidate_temperature(0.3, k) for k in range(4)}) == 4
    skill = parse_skill(
        SIMULATED.replace("agent: simulated", "agent: llm").replace("evolver: simulated", "evolver: llm")
    )
    failure = Failure("r1", 0.0, "answer", "KeyError: answer", "the output was empty")
    first, second = evolution_prompt(skill, [failure], 0), evolution_prompt(skill, [failure], 1)
    for prompt in (first, second):
        assert (
            "failed at step answer" in prompt
            and "KeyError: answer" in prompt
            and "the output was empty" in prompt
        )
    assert "different angle" in second and "different angle" not in first
