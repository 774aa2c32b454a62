"""Properties over arbitrary input (hypothesis): the skill parser, the promotion policies, the ReAct rules.

What is already covered elsewhere, and not repeated here:
- tests/unit/test_react.py::test_any_run_obeys_the_rules — for any sequence of attempt results: iterations
  <= max, exit on the first success, at most one evolution per run, and only when exhausted.
- tests/unit/test_skills.py — every malformed file names its line and field (examples, not properties).
This module adds: the parser on arbitrary text, on arbitrary front matter and on mutations of a valid file;
the ReAct rules with fatal failures and redelivered attempts; the policies on impossible counts.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from db.catalog import variation_id_for
from scheduler.policies import decide
from worker.react import AttemptSummary, next_step, start
from worker.skills import KNOWN_FIELDS, Skill, SkillFileError, parse_skill

VALID = """\
---
name: demo
description: a demo
agent: python
entrypoint: skills.examples:extract_contact
threshold: 0.8
time_limit: 2.5
evolver: hints
steps:
  - id: first
    description: the first step
    expect: {key: answer}
  - id: second
    expect: {regex: '\\d+'}
  - id: third
    expect: {json_schema: {type: object}}
---

Do the thing.
"""
ALLOWED = ["skills"]
EXAMPLES = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_refuse(text: str) -> Skill | None:
    """Parse ``text``; a refusal must be a SkillFileError that names a line within the text."""
    try:
        skill = parse_skill(text, "x.md", allowed_modules=ALLOWED)
    except SkillFileError as error:
        assert 1 <= error.line <= text.count("\n") + 1, error
        assert str(error).startswith(f"x.md:{error.line}: {error.field}: ")
        return None
    # What parses can be stored: the content is the variation, its digest the id (UTF-8, no NUL for Postgres).
    assert skill.content == text
    assert "\x00" not in text
    variation_id_for(skill.content)
    return skill


# -- the skill parser


@EXAMPLES
@given(st.text(max_size=2000))
def test_arbitrary_text_is_parsed_or_refused_with_a_skill_file_error(text: str) -> None:
    parse_or_refuse(text)


@EXAMPLES
@given(st.text(max_size=300), st.text(max_size=300))
# YAML counts \r and NEL as line breaks; the error's line must still be one of the file's \n lines.
@example("\r{\x85", "")
def test_arbitrary_front_matter_text_is_parsed_or_refused(header: str, body: str) -> None:
    parse_or_refuse(f"---\n{header}\n---\n{body}")


yaml_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
)
front_matter = st.dictionaries(
    st.sampled_from([*KNOWN_FIELDS, "extra", "simulation"]), yaml_values, max_size=8
)


@EXAMPLES
@given(front_matter, st.text(max_size=100))
def test_arbitrary_front_matter_values_are_parsed_or_refused(fields: dict[str, Any], body: str) -> None:
    parse_or_refuse(f"---\n{yaml.safe_dump(fields, allow_unicode=True)}---\n{body}")


@EXAMPLES
@given(st.data())
def test_mutations_of_a_valid_file_are_parsed_or_refused(data: st.DataObject) -> None:
    text = VALID
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 12))
        insert = data.draw(
            st.text(max_size=12) | st.sampled_from(["\n", "  ", "- ", ": ", "{", "[", "'", "&a", "*a"])
        )
        text = text[:position] + insert + text[position + cut :]
    parse_or_refuse(text)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (VALID.replace("Do the thing.", "Do \x00 the thing."), "x.md:19: instructions: character U+0000"),
        (VALID.replace("Do the thing.", "Do \ud800 the thing."), "x.md:19: instructions: character U+D800"),
        (VALID.replace("a demo", "a \x00 demo"), "x.md:3: front matter: character U+0000"),
        (
            VALID.replace("a demo", "a \x07 demo"),
            "x.md:3: front matter: invalid YAML: unacceptable character #x0007",
        ),
    ],
)
def test_characters_postgres_cannot_store_are_refused(text: str, where: str) -> None:
    with pytest.raises(SkillFileError) as refused:
        parse_skill(text, "x.md", allowed_modules=ALLOWED)
    assert str(refused.value).startswith(where)


# -- the ReAct rules: fatal failures, redelivered attempts

attempt_results = st.lists(
    st.tuples(st.floats(0.0, 1.0), st.booleans(), st.booleans()),  # fidelity, success, fatal
    min_size=10,
    max_size=10,
)


@EXAMPLES
@given(st.integers(-3, 15), attempt_results, st.lists(st.booleans(), min_size=10, max_size=10))
def test_a_run_evolves_at_most_once_even_when_attempts_are_delivered_twice(
    max_iterations: int, results: list[tuple[float, bool, bool]], redelivered: list[bool]
) -> None:
    """The task asks for evolution only when the policy says so *and* the attempt's outcome was newly
    recorded; a redelivered attempt (same run, same attempt number) records nothing. Modelled here with the
    (run, attempt) key the database enforces."""
    state = start(max_iterations, 0.9, True, variation_id="v")
    recorded: set[int] = set()
    evolutions = attempts = 0
    for (fidelity, success, fatal), twice in zip(results, redelivered, strict=True):
        summary = AttemptSummary(state.attempt, fidelity, success, None, None)
        for _ in range(2 if twice else 1):
            decision = next_step(state, summary, fatal=fatal)
            newly = state.attempt not in recorded
            recorded.add(state.attempt)
            evolutions += int(decision.evolve and newly)
        attempts += 1
        if decision.next_state is None:
            break
        state = decision.next_state
    assert decision.next_state is None, "ten results always finish a run"
    assert evolutions <= 1
    assert attempts <= state.max_iterations
    first_stop = next(
        i
        for i, (_, success, fatal) in enumerate(results)
        if success or fatal or i + 1 == state.max_iterations
    )
    assert attempts == first_stop + 1
    stopped_by = results[first_stop]
    if stopped_by[1]:
        assert decision.action == "finish_success" and evolutions == 0
    elif stopped_by[2]:
        # A fatal failure (the agent's setup is broken) ends the run at once, without evolving.
        assert decision.action == "finish_exhausted" and evolutions == 0
    else:
        assert decision.action == "finish_exhausted" and evolutions == 1


# -- the policies on impossible counts
# tests/unit/test_policies.py::test_impossible_counts_raise_instead_of_deciding draws one arm impossible under
# the default policy, ::test_bad_counts_are_refused lists non-counts for both policies; here all four counts
# are drawn at once, under both policies.

counts = st.integers(-5, 60)


@EXAMPLES
@given(counts, counts, counts, counts, st.sampled_from(["sequential", "margin"]))
def test_no_verdict_from_impossible_counts(cs: int, ct: int, ts: int, tt: int, policy: str) -> None:
    possible = 0 <= cs <= ct and 0 <= ts <= tt
    try:
        decision = decide(cs, ct, ts, tt, policy=policy)
    except ValueError:
        assert not possible, (cs, ct, ts, tt)
        return
    assert possible, f"a decision from impossible counts {(cs, ct, ts, tt)}: {decision}"
