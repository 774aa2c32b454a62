"""Running one attempt of an agent under a time limit, turning every failure into the attempt's error."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from worker.skills import Skill

from .base import Agent, AgentConfigurationError, AgentInfrastructureError, AgentReply, AttemptInfo

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
    outcome = _Outcome()

    def target() -> None:
        try:
            outcome.output = agent.run(skill, context, attempt)
        except BaseException as exc:  # everything the agent raises is reported, SystemExit too
            outcome.exception = exc

    # A thread, because Celery's soft time limits are signals that thread pools (and the embedded runner)
    # never get, and because a thread is what we can stop waiting for portably. It cannot be killed: on
    # timeout it is abandoned (a daemon, so it never holds the process open) and its late output is ignored.
    thread = threading.Thread(
        target=target, name=f"wre-attempt-{attempt.run_id}-{attempt.attempt}", daemon=True
    )
    started = time.perf_counter()
    thread.start()
    thread.join(time_limit)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if thread.is_alive():
        return AgentResult(None, f"timed out after {time_limit:g}s", elapsed_ms)
    if isinstance(outcome.exception, AgentInfrastructureError):
        raise outcome.exception
    if isinstance(outcome.exception, AgentConfigurationError):
        return AgentResult(None, describe_error(outcome.exception), elapsed_ms, fatal=True)
    if outcome.exception is not None:
        return AgentResult(None, describe_error(outcome.exception), elapsed_ms)
    output, usage = outcome.output, None
    if isinstance(output, AgentReply):
        usage = output.usage
        output = output.output
    try:
        # Outputs go into JSON columns and task results; a set or NaN must fail here, as the skill's fault.
        json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return AgentResult(None, trim(f"output is not JSON-serializable: {exc}"), elapsed_ms, usage)
    return AgentResult(output, None, elapsed_ms, usage)
