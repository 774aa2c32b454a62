"""Running one attempt of an agent under a time limit, turning every failure into the attempt's error."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from worker.skills import Skill

from .base import Agent, AgentConfigurationError, AgentInfrastructureError, AgentReply, AttemptInfo
from .isolation import ChildTimeout, call_in_child

MAX_ERROR_CHARS = 500
ELLIPSIS = "…"


@dataclass(frozen=True)
class AgentResult:
    """What one attempt produced.

    :param output: the agent's output (None if it failed).
    :param error: why the attempt failed (``Type: message``, trimmed), or None.
    :param elapsed_ms: wall time the attempt took, in milliseconds.
    :param usage: what the agent reported it used (tokens, ...), if anything.
    :param fatal: the agent raised :class:`AgentConfigurationError`: retrying cannot help, end the run.
    """

    output: object
    error: str | None
    elapsed_ms: float
    usage: dict[str, Any] | None = None
    fatal: bool = False


def trim(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` characters, marked with an ellipsis when cut.

    :param text: any text.
    :param limit: the most characters to keep (at least 1).
    """
    return text if len(text) <= limit else text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def describe_error(exc: BaseException) -> str:
    """An exception as an attempt's error: ``TypeName: message``, trimmed.

    :param exc: the exception.
    """
    message = str(exc)
    return trim(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


class _Outcome:
    """What the agent's thread hands back."""

    def __init__(self) -> None:
        self.output: object = None
        self.exception: BaseException | None = None


def run_attempt(
    agent: Agent, skill: Skill, context: dict[str, Any], attempt: AttemptInfo, time_limit: float
) -> AgentResult:
    """Run one attempt under a time limit; any failure of the skill becomes the result's ``error``.

    An :class:`AgentConfigurationError` is an error too, and marks the result ``fatal`` (end the run now).

    :param agent: the agent.
    :param skill: the variation to run.
    :param context: the input context.
    :param attempt: which run and attempt.
    :param time_limit: seconds the agent may take (> 0).
    :raises AgentInfrastructureError: re-raised from the agent: not the skill's fault, retry the task.
    :raises ValueError: ``time_limit`` is not a positive number.
    """
    if isinstance(time_limit, bool) or not isinstance(time_limit, int | float) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if math.isinf(time_limit):
        raise ValueError("time_limit must be finite")
    started = time.perf_counter()
    if getattr(agent, "isolated", False):
        # The skill's own code runs in a child that is killed at the limit (worker/agents/isolation.py).
        try:
            prepare = getattr(agent, "prepare", None)
            if prepare is not None:
                prepare(skill)
            outcome_value: object = call_in_child(partial(agent.run, skill, context, attempt), time_limit)
        except ChildTimeout as timeout:
            return AgentResult(None, str(timeout), (time.perf_counter() - started) * 1000.0)
        except BaseException as exc:  # the skill's exception, re-raised from the child
            return _failed(exc, (time.perf_counter() - started) * 1000.0)
        return _finished(outcome_value, (time.perf_counter() - started) * 1000.0)
    outcome = _Outcome()

    def target() -> None:
        try:
            outcome.output = agent.run(skill, context, attempt)
        except BaseException as exc:  # everything the agent raises is reported, SystemExit too
            outcome.exception = exc

    # Agents that do not run the skill's own code (an LLM call, bounded by its HTTP deadline within the time
    # limit; the simulation) run in a thread: Celery's soft time limits are signals that thread pools (and
    # the embedded runner) never get. A thread cannot be killed: on timeout it is abandoned (a daemon) and
    # its late output is ignored, which is why the python agent runs in a killable child instead.
    thread = threading.Thread(
        target=target, name=f"wre-attempt-{attempt.run_id}-{attempt.attempt}", daemon=True
    )
    thread.start()
    thread.join(time_limit)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if thread.is_alive():
        return AgentResult(None, f"timed out after {time_limit:g}s", elapsed_ms)
    if outcome.exception is not None:
        return _failed(outcome.exception, elapsed_ms)
    return _finished(outcome.output, elapsed_ms)


def _failed(exception: BaseException, elapsed_ms: float) -> AgentResult:
    """An agent's exception as the attempt's error (fatal for a configuration error); infrastructure: raised."""
    if isinstance(exception, AgentInfrastructureError):
        raise exception
    if isinstance(exception, AgentConfigurationError):
        return AgentResult(None, describe_error(exception), elapsed_ms, fatal=True)
    return AgentResult(None, describe_error(exception), elapsed_ms)


def _finished(output: object, elapsed_ms: float) -> AgentResult:
    usage = None
    if isinstance(output, AgentReply):
        usage = output.usage
        output = output.output
    try:
        # Outputs go into JSON columns and task results; a set or NaN must fail here, as the skill's fault.
        json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return AgentResult(None, trim(f"output is not JSON-serializable: {exc}"), elapsed_ms, usage)
    return AgentResult(output, None, elapsed_ms, usage)
