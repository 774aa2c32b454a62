"""Evolvers: the registry, the contract every proposal keeps, the simulated and the hints evolver."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.evolvers import (
    EVOLVER_NAMES,
    EvolutionRefused,
    Failure,
    UnknownEvolverError,
    get_evolver,
    validate_proposal,
)
from worker.evolvers.hints import HINTS_HEADING
from worker.evolvers.simulated import MEAN_SHIFT, PROBABILITY_CEILING, PROBABILITY_FLOOR
from worker.skills import Skill, load_skill_file, parse_skill

SKILLS_DIR = Path(__file__).resolve().parents[2] / "skills"


def example(name: str) -> Skill:
    return load_skill_file(SKILLS_DIR / f"{name}.md")


def failure(step: str | None, error: str | None = None, output: str = "", run: str = "r") -> Failure:
    return Failure(run_id=run, pattern_fidelity=0.5, failed_at_step=step, error=error, output=output)


# -- registry and Failure


def test_registry() -> None:
    assert EVOLVER_NAMES == ("hints", "llm", "simulated")
    for name in EVOLVER_NAMES:
        assert get_evolver(name).name == name
    with pytest.raises(
        UnknownEvolverError, match="unknown evolver 'gpt' \\(known evolvers: hints, llm, simulated\\)"
    ):
        get_evolver("gpt")
    assert issubclass(UnknownEvolverError, ValueError)
    assert issubclass(EvolutionRefused, ValueError)


def test_failure_output_is_trimmed() -> None:
    assert len(failure("a", output="x" * 10_000).output) == 2000


# -- validate_proposal


def test_validate_accepts_new_instructions() -> None:
    parent = example("extract_contact")
    proposal = validate_proposal(parent, parent.with_instructions("Better instructions."))
    assert proposal.instructions == "Better instructions."
    assert proposal.steps == parent.steps


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda text: "", "empty"),
        (lambda text: "   \n", "empty"),
        (lambda text: text, "unchanged"),
        (lambda text: text.replace("---\n", "", 1), "malformed"),
        (lambda text: text.replace("name: extract_contact", "name: other"), "for 'other'"),
        (lambda text: text.replace("expect: {key: email}", "expect: {key: mail}"), "changes the steps"),
        (lambda text: text.replace("  - id: phone", "  - id: phone2"), "changes the steps"),
        (lambda text: text.replace("time_limit: 5", "time_limit: 50"), "changes time_limit"),
        (lambda text: text.replace("agent: python", "agent: simulated"), "changes agent"),
        (
            lambda text: text.replace("evolver: hints", "evolver: simulated\nthreshold: 0.1"),
            "evolver, threshold",
        ),
    ],
)
def test_validate_refuses(change: object, message: str) -> None:
    parent = example("extract_contact")
    with pytest.raises(EvolutionRefused, match=message):
        validate_proposal(parent, change(parent.content))  # type: ignore[operator]


# -- simulated evolver


def test_simulated_evolver_is_reproducible_and_only_changes_the_declared_quality() -> None:
    parent = example("summarize_ticket")
    evolver = get_evolver("simulated")
    content = evolver.propose(parent, [], seed="s1")
    assert content == evolver.propose(parent, [], seed="s1")
    assert content != evolver.propose(parent, [], seed="s2")
    child = parse_skill(content)
    assert child.steps == parent.steps
    assert child.extra["simulation"]["generation"] == 1
    assert child.extra["simulation"]["pass_probability"] != parent.extra["simulation"]["pass_probability"]
    assert "Simulated evolution, generation 1" in child.instructions
    assert "simulation" in child.instructions.lower()


def test_simulated_evolver_keeps_one_note_across_generations() -> None:
    skill = example("summarize_ticket")
    for generation in range(1, 4):
        skill = parse_skill(get_evolver("simulated").propose(skill, [], seed=f"g{generation}"))
        assert skill.extra["simulation"]["generation"] == generation
    assert skill.instructions.count("Simulated evolution") == 1
    assert "generation 3" in skill.instructions


def test_simulated_evolver_makes_some_variations_better_and_some_worse() -> None:
    parent = example("classify_intent")  # declares no evolution of its own: the evolver's defaults apply
    p = parent.extra["simulation"]["pass_probability"]
    drawn = [
        parse_skill(get_evolver("simulated").propose(parent, [], seed=f"s{i}")).extra["simulation"][
            "pass_probability"
        ]
        for i in range(200)
    ]
    better = sum(value > p for value in drawn) / len(drawn)
    assert 0.45 < better < 0.75
    assert abs(sum(drawn) / len(drawn) - (p + MEAN_SHIFT)) < 0.02
    assert all(PROBABILITY_FLOOR <= value <= PROBABILITY_CEILING for value in drawn)


def test_simulated_evolver_per_step_probabilities() -> None:
    parent = parse_skill(
        "---\nname: s\nagent: simulated\nevolver: simulated\n"
        "steps: [{id: a, expect: {key: a}}, {id: b, expect: {key: b}}]\n"
        "simulation: {pass_probabilities: {a: 0.5, b: 0.99}}\n---\nbody\n"
    )
    child = parse_skill(get_evolver("simulated").propose(parent, [], seed="x"))
    drawn = child.extra["simulation"]["pass_probabilities"]
    assert set(drawn) == {"a", "b"}
    assert drawn["b"] <= PROBABILITY_CEILING


def test_simulated_evolver_refuses_a_skill_without_simulation() -> None:
    with pytest.raises(EvolutionRefused, match="cannot simulate"):
        get_evolver("simulated").propose(example("extract_contact"), [], seed="x")


# -- hints evolver


FAILURES = [
    failure("phone", None, '{"email": "a@b.io", "name": null, "phone": null}', run="r1"),
    failure("phone", None, '{"email": "c@d.io", "name": null, "phone": null}', run="r2"),
    failure("shape", "ValueError: context['text'] must be the message", run="r3"),
    failure("email", "KeyError: `x`\nwith a second line", run="r4"),
    failure("email", "KeyError: `x`\nwith a second line", run="r5"),
    failure("email", "TypeError: y", run="r6"),
    failure(None, "TimeoutError: outside any step", run="r7"),
]


def test_hints_evolver_names_the_most_failed_steps_checks_and_errors() -> None:
    parent = example("extract_contact")
    content = get_evolver("hints").propose(parent, FAILURES, seed="ignored")
    child = parse_skill(content)
    assert child.steps == parent.steps
    # the front matter is kept byte for byte
    assert content.startswith(parent.content[: parent.content.index("\n---\n") + 5])
    section = child.instructions[child.instructions.index(HINTS_HEADING) :]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert lines[0].startswith("- Step `email` failed first in 3 of 7 runs")
    assert "non-empty `email`" in lines[0]
    assert "Most common error (2x): `KeyError: 'x' with a second line`" in lines[0]
    assert lines[1].startswith("- Step `phone` failed first in 2 of 7 runs")
    assert "regular expression" in lines[1] and 'e.g. `{"email": "a@b.io"' in lines[1]
    assert lines[2].startswith("- Step `shape`") and "JSON Schema" in lines[2]
    assert (
        lines[3] == "- Runs failed before any step could be checked (1x): `TimeoutError: outside any step`."
    )


def test_hints_are_deterministic_and_replace_the_previous_section() -> None:
    parent = example("extract_contact")
    evolver = get_evolver("hints")
    first = evolver.propose(parent, FAILURES, seed="a")
    assert first == evolver.propose(parent, FAILURES, seed="b")
    second = parse_skill(evolver.propose(parse_skill(first), FAILURES[:2], seed="a"))
    assert second.instructions.count(HINTS_HEADING) == 1
    assert "Step `email`" not in second.instructions
    assert "Step `phone` failed first in 2 of 2 runs" in second.instructions
    assert second.instructions.startswith(parent.instructions)


def test_hints_keep_sections_after_them() -> None:
    parent = example("extract_contact")
    with_later_section = parse_skill(
        parent.with_instructions(
            f"{parent.instructions}\n\n{HINTS_HEADING}\n\nold hints\n\n## Examples\n\nkeep me"
        )
    )
    child = parse_skill(get_evolver("hints").propose(with_later_section, FAILURES[:1], seed="x"))
    assert "old hints" not in child.instructions
    assert "## Examples\n\nkeep me" in child.instructions


def test_hints_evolver_refuses_without_failures_or_news() -> None:
    parent = example("extract_contact")
    evolver = get_evolver("hints")
    with pytest.raises(EvolutionRefused, match="no failed runs"):
        evolver.propose(parent, [], seed="x")
    child = parse_skill(evolver.propose(parent, FAILURES, seed="x"))
    with pytest.raises(EvolutionRefused, match="unchanged"):
        evolver.propose(child, FAILURES, seed="x")


@pytest.mark.parametrize("check", ["{equals: {a: 1}}", "{python: 'skills.examples:has_valid_email'}"])
def test_hints_describe_every_check_kind(check: str) -> None:
    parent = parse_skill(
        f"---\nname: s\nagent: simulated\nsteps: [{{id: a, expect: {check}}}]\n---\nDo it.\n"
    )
    child = parse_skill(get_evolver("hints").propose(parent, [failure("a", output="nope")], seed="x"))
    assert ("must equal" if "equals" in check else "custom check") in child.instructions


def test_simulated_evolver_uses_the_declared_evolution() -> None:
    from worker.agents.simulated import simulation_spec
    from worker.evolvers import get_evolver
    from worker.skills import parse_skill

    text = """---
name: declared
agent: simulated
evolver: simulated
steps:
  - {id: a, description: a, expect: {key: a}}
simulation: {pass_probability: 0.3, evolution: {mean_shift: 0.4, spread: 0.0}}
---
Do it.
"""
    parent = parse_skill(text)
    child = parse_skill(get_evolver("simulated").propose(parent, [], seed="s"))
    spec = simulation_spec(child)
    assert spec.pass_probability == pytest.approx(0.7)
    assert spec.evolution == {"mean_shift": 0.4, "spread": 0.0}


def test_simulated_evolution_declaration_is_checked() -> None:
    from worker.agents.simulated import SimulationSpecError, simulation_spec
    from worker.skills import parse_skill

    text = """---
name: declared
agent: simulated
steps:
  - {id: a, description: a, expect: {key: a}}
simulation: {pass_probability: 0.3, evolution: {mean_shift: 0.4}}
---
Do it.
"""
    with pytest.raises(SimulationSpecError, match="evolution"):
        simulation_spec(parse_skill(text))
