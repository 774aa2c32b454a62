"""Scoring: every check kind, fidelity, first failure, success vs execution success, crashing checks."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from worker.agents import isolation
from worker.agents.isolation import close_child
from worker.scoring import AGENT_FAILED_DETAIL, run_check, score, score_within
from worker.settings import get_settings
from worker.skills import Skill, StepCheck, parse_skill

FIXTURES = "tests.unit.fixture_entrypoints"


@pytest.fixture(autouse=True)
def allow_fixture_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(get_settings(), "python_skill_modules", ["skills", FIXTURES])
    # The skill's code runs in a child forked with the settings of its time: fork it with these.
    close_child()
    yield
    close_child()


def skill_with(*expects: str) -> Skill:
    steps = "".join(f"  - id: s{index}\n    expect: {expect}\n" for index, expect in enumerate(expects))
    text = f"---\nname: t\nagent: simulated\nsteps:\n{steps}---\nbody\n"
    return parse_skill(text, allowed_modules=["skills", FIXTURES])


def check(expect: str, output: object) -> bool:
    return run_check(skill_with(expect).steps[0], output)["passed"]


@pytest.mark.parametrize(
    ("output", "passed"),
    [
        ({"a": "x"}, True),
        ('{"a": "x"}', True),
        ({"a": 0}, True),
        ({"a": False}, True),
        ({"a": ""}, False),
        ({"a": "  "}, False),
        ({"a": None}, False),
        ({"a": []}, False),
        ({"a": {}}, False),
        ({"b": "x"}, False),
        ("a", False),
        ('["a"]', False),
        (None, False),
    ],
)
def test_key_check(output: object, passed: bool) -> None:
    assert check("{key: a}", output) is passed


@pytest.mark.parametrize(
    ("output", "passed"),
    [("order 1234", True), ("order", False), ({"n": 1234}, True), (["x"], False), (None, False)],
)
def test_regex_check(output: object, passed: bool) -> None:
    assert check("{regex: '\\d{4}'}", output) is passed


SCHEMA = "{json_schema: {type: object, required: [n], properties: {n: {type: integer}}}}"


@pytest.mark.parametrize(
    ("output", "passed"),
    [({"n": 1}, True), ('{"n": 1}', True), ({"n": "1"}, False), ({}, False), ("n", False), (3, False)],
)
def test_json_schema_check(output: object, passed: bool) -> None:
    assert check(SCHEMA, output) is passed


def test_json_schema_plain_string() -> None:
    assert check("{json_schema: {type: string, minLength: 3}}", "hello") is True
    assert check("{json_schema: {type: string, minLength: 3}}", "hi") is False


def test_json_schema_failure_detail_names_the_path() -> None:
    result = run_check(skill_with(SCHEMA).steps[0], {"n": "1"})
    assert result["detail"].startswith("schema violation at n:")


@pytest.mark.parametrize(
    ("expect", "output", "passed"),
    [
        ("{equals: positive}", "positive", True),
        ("{equals: positive}", " positive\n", True),
        ("{equals: positive}", "negative", False),
        ("{equals: 1}", 1, True),
        ("{equals: 1}", 1.0, True),
        ("{equals: 1}", "1", True),
        ("{equals: 1}", True, False),
        ("{equals: true}", 1, False),
        ("{equals: true}", True, True),
        ("{equals: {a: [1, 2]}}", {"a": [1, 2]}, True),
        ("{equals: {a: [1, 2]}}", '{"a": [1, 2]}', True),
        ("{equals: {a: [1, 2]}}", {"a": [1, True]}, False),
        ("{equals: null}", None, True),
        ("{equals: null}", "null", True),
        ("{equals: null}", "", False),
    ],
)
def test_equals_check(expect: str, output: object, passed: bool) -> None:
    assert check(expect, output) is passed


def test_python_check() -> None:
    assert check(f"{{python: '{FIXTURES}:always_true'}}", "anything") is True
    assert check("{python: 'skills.examples:has_valid_email'}", {"email": "a@b.io"}) is True
    assert check("{python: 'skills.examples:has_valid_email'}", {"email": "a@b"}) is False


def test_a_crashing_check_fails_with_its_error_and_never_propagates() -> None:
    result = run_check(skill_with(f"{{python: '{FIXTURES}:check_crashes'}}").steps[0], "x")
    assert result == {
        "id": "s0",
        "passed": False,
        "detail": "check raised ZeroDivisionError: custom check crashed",
    }


def test_a_check_returning_a_non_bool_fails() -> None:
    result = run_check(skill_with(f"{{python: '{FIXTURES}:check_not_bool'}}").steps[0], "x")
    assert result["passed"] is False
    assert "expected True or False" in result["detail"]


def test_a_check_outside_the_allow_list_at_import_time_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    step = skill_with(f"{{python: '{FIXTURES}:always_true'}}").steps[0]
    monkeypatch.setattr(get_settings(), "python_skill_modules", ["skills"])
    result = run_check(step, "x")
    assert result["passed"] is False
    assert "ForbiddenEntrypointError" in result["detail"]


def test_an_unexpected_argument_is_a_failed_check_not_a_crash() -> None:
    step = StepCheck(id="odd", description="", kind="regex", argument="(")
    assert run_check(step, "x")["passed"] is False


def test_score_fidelity_and_first_failure() -> None:
    skill = skill_with("{key: a}", "{key: b}", "{key: c}", "{key: d}")
    result = score(skill, {"a": 1, "c": 1, "d": 1}, None, 0.7)
    assert result.pattern_fidelity == 0.75
    assert result.failed_at_step == "s1"
    assert [step["passed"] for step in result.step_results] == [True, False, True, True]
    assert (result.success, result.execution_success, result.error) == (True, True, None)
    assert score(skill, {"a": 1, "c": 1, "d": 1}, None, 0.8).success is False


def test_score_all_pass() -> None:
    skill = skill_with("{key: a}", "{regex: x}")
    result = score(skill, {"a": "x"}, None, 1.0)
    assert (result.pattern_fidelity, result.failed_at_step, result.success) == (1.0, None, True)


def test_score_when_the_agent_failed() -> None:
    skill = skill_with("{key: a}", "{equals: null}")
    result = score(skill, None, "RuntimeError: boom", 0.0)
    assert result.pattern_fidelity == 0.0
    assert result.failed_at_step == "s0"
    assert all(not step["passed"] and step["detail"] == AGENT_FAILED_DETAIL for step in result.step_results)
    assert (result.success, result.execution_success, result.error) == (False, False, "RuntimeError: boom")


def test_score_threshold_zero_still_needs_no_error() -> None:
    skill = skill_with("{key: a}")
    assert score(skill, {}, None, 0.0).success is True
    assert score(skill, {}, "x", 0.0).success is False


@pytest.mark.parametrize("threshold", [-0.1, 1.1, float("nan"), True])
def test_score_refuses_bad_thresholds(threshold: Any) -> None:
    with pytest.raises(ValueError, match="threshold"):
        score(skill_with("{key: a}"), {}, None, threshold)


def test_long_details_are_trimmed() -> None:
    result = run_check(skill_with("{equals: x}").steps[0], "y" * 5000)
    assert len(result["detail"]) <= 300


@pytest.mark.parametrize(
    ("expect", "output"),
    [(f"{{python: '{FIXTURES}:check_spins'}}", {"a": 1}), ("{regex: '^(a+)+$'}", "a" * 40 + "b")],
)
def test_a_check_that_never_ends_is_killed_at_the_limit(expect: str, output: object) -> None:
    close_child()
    assert isolation.call_in_child(functools.partial(int, "1"), 5) == 1  # this thread's child, started
    pid = isolation._local.child.pid
    scored = score_within(skill_with(expect), output, None, 1.0, time_limit=0.3)
    assert scored.error == "scoring timed out after 0.3s"
    assert scored.pattern_fidelity == 0.0 and not scored.success
    with pytest.raises(ChildProcessError):  # the child is killed and reaped (only this pid is asked about)
        os.waitpid(pid, os.WNOHANG)


def test_scoring_in_a_child_gives_the_same_verdicts() -> None:
    skill = skill_with("{regex: 'b+'}", f"{{python: '{FIXTURES}:always_true'}}", "{key: a}")
    for output in ({"a": "bbb"}, {"a": ""}, "text"):
        assert score_within(skill, output, None, 0.5, time_limit=5) == score(skill, output, None, 0.5)
