"""Scoring an attempt: each declared step check passes or fails; fidelity, success and the first failure.

How each check reads the output (a string or a JSON-able value):

- ``key: NAME`` — the output is a JSON object (a dict, or a string that parses to one) whose ``NAME`` is
  present and non-empty (not null, not a blank string, not an empty list or object; 0 and false count).
- ``regex: PATTERN`` — ``re.search`` on the output's text: a string as is, anything else as
  ``json.dumps(output, sort_keys=True, ensure_ascii=False)`` (so ``"key": "value"`` with one space).
- ``json_schema: {...}`` — the output validates; a string that parses as JSON is validated as that value.
- ``equals: VALUE`` — the output equals VALUE: a string is compared with surrounding whitespace stripped,
  or as the JSON it parses to; booleans never equal numbers.
- ``python: module:function`` — ``function(output)`` returns True (anything but a bool fails the check);
  it gets a copy of the output, so it cannot change what is recorded.

A check that raises (a crashing custom check, a schema the validator chokes on) fails with the exception as
its detail; scoring itself never raises for an output.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any, TypedDict, cast

import jsonschema

from worker.agents.isolation import ChildDied, ChildTimeout, call_in_child, describe_error, trim
from worker.agents.python import load_entrypoint
from worker.skills import Skill, StepCheck

MAX_DETAIL_CHARS = 300
AGENT_FAILED_DETAIL = "not checked: the agent failed"
_NOT_JSON = object()
# Checks that run code which may not end: scored in a killable child (score_within).
CODE_CHECKS = frozenset({"python", "regex"})
# Distinct schemas whose validators are kept: building a validator cost more than validating a small output.
MAX_CACHED_VALIDATORS = 256


class StepResult(TypedDict):
    """One step's verdict, as stored in an outcome row (JSON as is)."""

    id: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Score:
    """An attempt's score.

    :param step_results: one verdict per declared step, in order.
    :param pattern_fidelity: passed steps / declared steps (0.0 when the agent errored).
    :param failed_at_step: the first failing step's id, or None.
    :param error: the agent's error, or None.
    :param success: no error and fidelity at least the threshold.
    :param execution_success: no error.
    """

    step_results: list[StepResult]
    pattern_fidelity: float
    failed_at_step: str | None
    error: str | None
    success: bool
    execution_success: bool


def score(skill: Skill, output: object, error: str | None, threshold: float) -> Score:
    """Score one attempt's output against the skill's declared steps.

    :param output: the agent's output (ignored when ``error`` is set).
    :param error: the agent's error, or None if it finished.
    :param threshold: the fidelity a successful attempt needs, within 0..1.
    :raises ValueError: ``threshold`` is outside 0..1.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be a fidelity between 0 and 1, got {threshold!r}")
    if error is not None:
        results = [StepResult(id=step.id, passed=False, detail=AGENT_FAILED_DETAIL) for step in skill.steps]
    else:
        results = [run_check(step, output) for step in skill.steps]
    passed = sum(result["passed"] for result in results)
    fidelity = passed / len(results) if results else 0.0
    failed_at = next((result["id"] for result in results if not result["passed"]), None)
    return Score(
        step_results=results,
        pattern_fidelity=fidelity,
        failed_at_step=failed_at,
        error=error,
        success=error is None and fidelity >= threshold,
        execution_success=error is None,
    )


def score_within(skill: Skill, output: object, error: str | None, threshold: float, time_limit: float) -> Score:
    """:func:`score`, in a child process killed after ``time_limit`` seconds when a check runs code that may
    not end (a ``python:`` check, a backtracking ``regex``); a timed-out scoring fails every step.

    :param time_limit: seconds the checks may take.
    """
    if error is not None or not any(step.kind in CODE_CHECKS for step in skill.steps):
        return score(skill, output, error, threshold)
    for step in skill.steps:
        if step.kind == "python":
            load_entrypoint(step.argument)  # imported once in the worker, not in every child
    try:
        scored: Score = call_in_child(partial(score, skill, output, error, threshold), time_limit)
    except ChildTimeout as timeout:
        return score(skill, None, f"scoring {timeout}", threshold)
    except ChildDied as died:
        return score(skill, None, f"scoring failed: {died}", threshold)
    return scored


def run_check(step: StepCheck, output: object) -> StepResult:
    """One step's verdict on an output; never raises.

    :param output: the agent's output.
    """
    try:
        passed, detail = _CHECKS[step.kind](step.argument, output)
    except Exception as exc:  # a check's own failure is the step's failure, never the scorer's
        passed, detail = False, f"check raised {describe_error(exc)}"
    return StepResult(id=step.id, passed=passed, detail=trim(detail, MAX_DETAIL_CHARS))


def _parsed(output: object) -> object:
    """A string output as the JSON it holds (or ``_NOT_JSON``); any other output as is."""
    if not isinstance(output, str):
        return output
    try:
        return json.loads(output)
    except ValueError:
        return _NOT_JSON


def _text(output: object) -> str:
    return output if isinstance(output, str) else json.dumps(output, sort_keys=True, ensure_ascii=False)


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or value in ([], {})


def _check_key(key: str, output: object) -> tuple[bool, str]:
    value = _parsed(output)
    if not isinstance(value, dict):
        return False, "output is not a JSON object"
    if key not in value:
        return False, f"key {key!r} missing"
    if _is_empty(value[key]):
        return False, f"key {key!r} is empty"
    return True, f"key {key!r} present"


def _check_regex(pattern: str, output: object) -> tuple[bool, str]:
    match = re.search(pattern, _text(output))
    if match is None:
        return False, f"no match for /{pattern}/"
    return True, f"matched {match.group(0)!r}"


def _check_json_schema(schema: dict[str, Any], output: object) -> tuple[bool, str]:
    value = _parsed(output)
    if value is _NOT_JSON:
        value = output
    try:
        validator = _validator(json.dumps(schema, sort_keys=True))
    except TypeError:  # a schema with a YAML-only value (a date, say) cannot be a cache key: built each time
        validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cast(Any, value)))
    if error is not None:
        where = "/".join(str(part) for part in error.absolute_path)
        return False, f"schema violation{f' at {where}' if where else ''}: {error.message}"
    return True, "valid"


@lru_cache(maxsize=MAX_CACHED_VALIDATORS)
def _validator(schema_text: str) -> Any:
    """A validator of the schema written as ``schema_text`` (canonical JSON: equal schemas share one).

    Keyed by text, not by the dict (unhashable); a validator holds no state between validations.
    """
    schema = json.loads(schema_text)
    return jsonschema.validators.validator_for(schema)(schema)


def _same(left: object, right: object) -> bool:
    """JSON equality: booleans are not numbers, 1 == 1.0, containers compared element by element."""
    if isinstance(left, bool) or isinstance(right, bool):
        return isinstance(left, bool) and isinstance(right, bool) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[key], right[key]) for key in left)
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    return type(left) is type(right) and left == right


def _check_equals(expected: object, output: object) -> tuple[bool, str]:
    if isinstance(output, str) and isinstance(expected, str) and output.strip() == expected:
        return True, "equal"
    if _same(expected, output) or _same(expected, _parsed(output)):
        return True, "equal"
    return False, f"expected {trim(_text(expected), 80)}, got {trim(_text(output), 80)}"


def _check_python(reference: str, output: object) -> tuple[bool, str]:
    verdict = load_entrypoint(reference)(copy.deepcopy(output))
    if not isinstance(verdict, bool):
        return False, f"{reference} returned {verdict!r}, expected True or False"
    return verdict, f"{reference} returned {verdict}"


_CHECKS: dict[str, Callable[[Any, object], tuple[bool, str]]] = {
    "key": _check_key,
    "regex": _check_regex,
    "json_schema": _check_json_schema,
    "equals": _check_equals,
    "python": _check_python,
}
