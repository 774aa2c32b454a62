"""The ``python`` agent: calls the skill's ``entrypoint`` as ``function(context, **params)``.

``params`` are the values of the skill's tunable parameters (``params:`` in the front matter; none when it
declares none). They are what an evolver can change in a python skill: the agent does not read instructions.

Only code under the allow-list ``WRE_PYTHON_SKILL_MODULES`` may be named; the rule is
:func:`worker.skills.check_entrypoint`, applied when the skill is parsed and again here, at import time.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Sequence
from typing import Any

from worker.settings import get_settings
from worker.skills import (
    EntrypointError,
    ForbiddenEntrypointError,
    Skill,
    check_entrypoint,
    is_module_allowed,
)

from .base import AttemptInfo

__all__ = ["EntrypointError", "ForbiddenEntrypointError", "PythonAgent", "load_entrypoint"]


def load_entrypoint(reference: str, allowed: Sequence[str] | None = None) -> Callable[..., object]:
    """Import the function a ``module:function`` reference names, if the allow-list permits it.

    :param reference: ``module:function``.
    :param allowed: the allow-list; None means ``get_settings().python_skill_modules``.
    :raises ForbiddenEntrypointError: the module, or the module the function was defined in, is not allowed.
    :raises EntrypointError: malformed reference, module not importable, or no such callable.
    """
    allow_list = list(get_settings().python_skill_modules if allowed is None else allowed)
    module_name, function_name = check_entrypoint(reference, allow_list)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise EntrypointError(f"{reference!r}: cannot import {module_name!r}: {exc}") from exc
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        raise EntrypointError(f"{reference!r}: {module_name!r} has no function {function_name!r}")
    # An allowed module may re-export someone else's function (`from os import system`); judge where it lives.
    defined_in = getattr(function, "__module__", None)
    if not isinstance(defined_in, str) or not is_module_allowed(defined_in, allow_list):
        raise ForbiddenEntrypointError(
            f"{reference!r}: the function is defined in {defined_in!r}, outside the allow-list {allow_list}"
        )
    return function  # type: ignore[no-any-return]


class PythonAgent:
    """Runs a skill by calling ``entrypoint(context, **params)``; the function's return value is the output.

    The function gets a deep copy of the context (it may change it freely) and signals failure by raising.
    """

    name = "python"
    # The skill's own code: run in a child process that is killed at the time limit (worker/agents/isolation.py).
    isolated = True

    def prepare(self, skill: Skill) -> None:
        """Import the entrypoint in the worker, before the attempt's child is forked: each child then starts
        with it imported instead of importing it again (and the import is checked, as at run time)."""
        if skill.entrypoint is not None:
            load_entrypoint(skill.entrypoint)

    def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
        """Call the skill's entrypoint.

        :param skill: the skill; its ``entrypoint`` must be set and allowed.
        :param context: the run's input.
        :param attempt: unused: a python entrypoint sees retries through ``context['_react_retry']``.
        """
        if skill.entrypoint is None:
            raise EntrypointError(f"skill {skill.name!r} has no entrypoint for the python agent")
        function = load_entrypoint(skill.entrypoint)
        return function(copy.deepcopy(context), **skill.param_values())
