"""Skill files: the examples parse, every malformed file names its line and field, every check kind."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from worker.skills import (
    CHECK_KINDS,
    EntrypointError,
    ForbiddenEntrypointError,
    Skill,
    SkillFileError,
    check_entrypoint,
    content_digest,
    is_module_allowed,
    load_skill_file,
    parse_skill,
    render_skill,
)

SKILLS_DIR = Path(__file__).resolve().parents[2] / "skills"
ALLOWED = ["skills"]

VALID = """\
---
name: demo
description: a demo
agent: simulated
threshold: 0.8
time_limit: 2.5
evolver: simulated
steps:
  - id: first
    description: the first step
    expect: {key: answer}
  - id: second
    expect: {regex: '\\d+'}
simulation:
  pass_probability: 0.5
---

Do the thing.
"""


def parse(text: str) -> Skill:
    return parse_skill(text, "skills/x.md", allowed_modules=ALLOWED)


def error_of(text: str) -> SkillFileError:
    with pytest.raises(SkillFileError) as caught:
        parse(text)
    return caught.value


@pytest.mark.parametrize("name", ["extract_contact", "summarize_ticket", "classify_intent"])
def test_example_skills_parse(name: str) -> None:
    skill = load_skill_file(SKILLS_DIR / f"{name}.md", allowed_modules=ALLOWED)
    assert skill.name == name
    assert skill.steps
    assert skill.instructions.startswith("#")
    assert skill.content == (SKILLS_DIR / f"{name}.md").read_text()


def test_examples_cover_every_check_kind_but_equals() -> None:
    kinds = {
        step.kind
        for name in ("extract_contact", "summarize_ticket", "classify_intent")
        for step in load_skill_file(SKILLS_DIR / f"{name}.md", allowed_modules=ALLOWED).steps
    }
    assert kinds == set(CHECK_KINDS) - {"equals"}


def test_valid_file_fields() -> None:
    skill = parse_skill(VALID, allowed_modules=ALLOWED)
    assert skill.name == "demo"
    assert skill.description == "a demo"
    assert skill.agent == "simulated"
    assert skill.threshold == 0.8
    assert skill.time_limit == 2.5
    assert skill.entrypoint is None
    assert skill.evolver == "simulated"
    assert [(step.id, step.kind, step.argument) for step in skill.steps] == [
        ("first", "key", "answer"),
        ("second", "regex", "\\d+"),
    ]
    assert skill.steps[0].description == "the first step"
    assert skill.steps[1].description == ""
    assert skill.instructions == "Do the thing."
    assert skill.extra == {"simulation": {"pass_probability": 0.5}}
    assert skill.content == VALID


def test_defaults() -> None:
    text = "---\nname: d\nagent: simulated\nsteps: [{id: a, expect: {key: a}}]\n---\n"
    skill = parse_skill(text)
    assert (skill.threshold, skill.time_limit, skill.evolver, skill.description) == (None, None, "hints", "")
    assert skill.instructions == ""
    assert skill.extra == {}


def test_variation_id_is_the_content_digest() -> None:
    skill = parse_skill(VALID)
    assert skill.variation_id == content_digest(VALID)
    assert len(skill.variation_id) == 16
    assert int(skill.variation_id, 16) >= 0
    assert content_digest(VALID + " ") != skill.variation_id


def test_render_reads_back_the_same_skill() -> None:
    skill = parse_skill(VALID)
    text = render_skill(skill.front_matter(), skill.instructions)
    again = parse_skill(text)
    for field in ("name", "description", "agent", "threshold", "time_limit", "entrypoint", "evolver"):
        assert getattr(again, field) == getattr(skill, field)
    assert again.steps == skill.steps
    assert again.extra == skill.extra
    assert again.instructions == skill.instructions
    assert render_skill(again.front_matter(), again.instructions) == text


def test_front_matter_is_a_fresh_copy() -> None:
    skill = parse_skill(VALID)
    skill.front_matter()["simulation"]["pass_probability"] = 1.0
    assert skill.front_matter()["simulation"] == {"pass_probability": 0.5}


def test_every_check_kind_parses() -> None:
    text = VALID.replace(
        "  - id: second\n    expect: {regex: '\\d+'}\n",
        "  - id: s2\n    expect: {regex: 'a+'}\n"
        "  - id: s3\n    expect: {json_schema: {type: object, required: [a]}}\n"
        "  - id: s4\n    expect: {equals: [1, two, null]}\n"
        "  - id: s5\n    expect: {python: 'skills.examples:has_valid_email'}\n"
        "  - id: s6\n    expect: {equals: null}\n",
    )
    skill = parse(text)
    assert [step.kind for step in skill.steps] == [
        "key",
        "regex",
        "json_schema",
        "equals",
        "python",
        "equals",
    ]
    assert skill.steps[3].argument == [1, "two", None]
    assert skill.steps[5].argument is None


# (text transformation, line, field, words in the message)
MALFORMED: list[tuple[Callable[[str], str], int, str, str]] = [
    (
        lambda t: t.replace("    expect: {key: answer}", "    expect: {foo: 1}"),
        11,
        "steps[0].expect",
        "unknown check 'foo' (expected one of key, regex, json_schema, equals, python)",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{regex: '(unclosed'}"),
        13,
        "steps[1].expect.regex",
        "does not compile",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{json_schema: {type: 12}}"),
        13,
        "steps[1].expect.json_schema",
        "invalid JSON Schema",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{python: 'os:system'}"),
        13,
        "steps[1].expect.python",
        "module 'os' is not allowed",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{python: 'builtins:eval'}"),
        13,
        "steps[1].expect.python",
        "not allowed",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{python: 'not a reference'}"),
        13,
        "steps[1].expect.python",
        "expected 'module:function'",
    ),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{key: a, regex: b}"),
        13,
        "steps[1].expect",
        "exactly one check",
    ),
    (lambda t: t.replace("{regex: '\\d+'}", "{key: ''}"), 13, "steps[1].expect.key", "non-empty key"),
    (
        lambda t: t.replace("{regex: '\\d+'}", "{equals: 2024-01-01}"),
        13,
        "steps[1].expect.equals",
        "date value is not supported",
    ),
    (lambda t: t.replace("{regex: '\\d+'}", "{equals: .nan}"), 13, "steps[1].expect.equals", "finite"),
    (
        lambda t: t.replace("    expect: {regex: '\\d+'}\n", ""),
        12,
        "steps[1].expect",
        "missing required field",
    ),
    (
        lambda t: t.replace("  - id: second\n", "  - id: first\n"),
        12,
        "steps[1].id",
        "duplicate step id 'first'",
    ),
    (lambda t: t.replace("  - id: second\n", "  - id: 7\n"), 12, "steps[1].id", "expected a name"),
    (lambda t: t.replace("  - id: second\n", f"  - id: {'s' * 129}\n"), 12, "steps[1].id", "at most 128"),
    (
        lambda t: t.replace("  - id: second\n", "  - id: second\n    expct: 1\n"),
        13,
        "steps[1].expct",
        "unknown field",
    ),
    (
        lambda t: t.replace("  - id: second\n", "  - second\n").replace("    expect: {regex: '\\d+'}\n", ""),
        12,
        "steps[1]",
        "expected a mapping",
    ),
    (lambda t: t.replace("name: demo", "name: Demo Skill"), 2, "name", "lower-case"),
    (lambda t: t.replace("name: demo\n", ""), 2, "name", "missing required field"),
    (lambda t: t.replace("agent: simulated\n", ""), 2, "agent", "missing required field"),
    (lambda t: t.replace("threshold: 0.8", "threshold: 1.5"), 5, "threshold", "between 0 and 1"),
    (lambda t: t.replace("threshold: 0.8", "threshold: yes"), 5, "threshold", "expected a number"),
    (lambda t: t.replace("time_limit: 2.5", "time_limit: 0"), 6, "time_limit", "positive"),
    (
        lambda t: t.replace("evolver: simulated", "evolver: genetic"),
        7,
        "evolver",
        "unknown evolver 'genetic'",
    ),
    (lambda t: t.replace("description: a demo", "description: [a]"), 3, "description", "expected a string"),
    (lambda t: t.replace("agent: simulated", "agent: python"), 2, "entrypoint", "needs an entrypoint"),
    (
        lambda t: t.replace("agent: simulated", "agent: simulated\nentrypoint: os:system"),
        5,
        "entrypoint",
        "not allowed",
    ),
    (lambda t: t.replace("steps:\n", "steps: []\nold_steps:\n"), 8, "steps", "non-empty list"),
    (lambda t: t.replace("name: demo", "name: demo\nname: other"), 3, "name", "duplicate key"),
    (lambda t: t.replace("threshold: 0.8", "threshold: [0.8"), 6, "front matter", "invalid YAML"),
    (lambda t: t.replace("---\nname", "name", 1), 1, "front matter", "missing front matter"),
    (
        lambda t: t.replace("simulation:", "input:\n  type: object\n  required: 5\nsimulation:"),
        16,
        "input.required",
        "invalid JSON Schema at required",
    ),
    (lambda t: t.replace("simulation:", "input: [text]\nsimulation:"), 14, "input", "expected a JSON Schema"),
    (lambda t: t.replace("---\n\nDo", "\nDo"), 1, "front matter", "not closed"),
    (lambda t: "---\n---\nbody\n", 1, "front matter", "empty"),
    (lambda t: "---\n- a\n- b\n---\n", 2, "front matter", "must be a mapping"),
]


@pytest.mark.parametrize(("change", "line", "field", "words"), MALFORMED)
def test_malformed_files_name_line_and_field(
    change: Callable[[str], str], line: int, field: str, words: str
) -> None:
    text = change(VALID)
    error = error_of(text)
    assert (error.source, error.line, error.field) == ("skills/x.md", line, field), str(error)
    assert words in error.message
    assert str(error) == f"skills/x.md:{line}: {field}: {error.message}"
    assert isinstance(error, ValueError)


def test_yaml_syntax_error_points_at_the_opening_line() -> None:
    error = error_of(VALID.replace("    expect: {key: answer}", "    expect: {key: [answer}"))
    assert "line 11" in error.message


def test_load_skill_file_reports_the_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.md"
    path.write_text(VALID.replace("evolver: simulated", "evolver: genetic"))
    with pytest.raises(SkillFileError, match=rf"^{path}:7: evolver: unknown evolver"):
        load_skill_file(path)


def test_load_skill_file_refuses_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.md"
    path.write_bytes(VALID.replace("a demo", "caf\xe9").encode("latin-1"))
    with pytest.raises(SkillFileError, match="3: front matter: not UTF-8"):
        load_skill_file(path)


def test_the_allow_list_is_checked_at_parse_time() -> None:
    text = VALID.replace("{regex: '\\d+'}", "{python: 'tests.unit.helpers:check'}")
    with pytest.raises(SkillFileError, match="not allowed"):
        parse_skill(text, allowed_modules=["skills"])
    assert parse_skill(text, allowed_modules=["skills", "tests"]).steps[1].kind == "python"


@pytest.mark.parametrize(
    ("module", "allowed"),
    [("skills", True), ("skills.examples", True), ("skills_evil", False), ("os", False), ("skill", False)],
)
def test_is_module_allowed(module: str, allowed: bool) -> None:
    assert is_module_allowed(module, ["skills"]) is allowed


def test_check_entrypoint() -> None:
    assert check_entrypoint("skills.examples:extract_contact", ["skills"]) == (
        "skills.examples",
        "extract_contact",
    )
    with pytest.raises(ForbiddenEntrypointError):
        check_entrypoint("os:system", ["skills"])
    with pytest.raises(ForbiddenEntrypointError):
        check_entrypoint("skills.examples:__import__", ["skills"])
    with pytest.raises(EntrypointError):
        check_entrypoint("skills.examples", ["skills"])
    with pytest.raises(EntrypointError):
        check_entrypoint(".relative:f", ["skills"])


def test_an_alias_bomb_parses_in_linear_time() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 20)]
    bomb = "\n".join(f"  {line}" for line in levels)
    skill = parse(
        f"---\nname: b\nagent: simulated\nsteps: [{{id: a, expect: {{key: a}}}}]\nbomb:\n{bomb}\n---\n"
    )
    assert "bomb" in skill.extra


def test_oversized_files_are_refused() -> None:
    with pytest.raises(SkillFileError, match="longer than"):
        parse("---\n" + "x: y\n" * 50_000 + "---\n")


def test_with_instructions_keeps_the_front_matter_text() -> None:
    text = VALID.replace("name: demo", "name: demo  # a comment")
    skill = parse(text)
    new = skill.with_instructions("  New body.\n")
    assert new == text.replace("\nDo the thing.\n", "\nNew body.\n")
    assert parse(new).instructions == "New body."


def test_input_schema_refuses_a_bad_context_with_where_and_why() -> None:
    skill = parse(VALID.replace(
        "simulation:", "input:\n  type: object\n  required: [text]\n"
        "  properties: {text: {type: string}}\nsimulation:"))
    assert skill.input_schema == {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
    assert skill.input_error({"text": "hello"}) is None
    assert "'text' is a required property" in (skill.input_error({}) or "")
    assert (skill.input_error({"text": 5}) or "").startswith("input_context at text fails skill 'demo'")
    assert parse(VALID).input_error({}) is None  # no schema: any JSON object
