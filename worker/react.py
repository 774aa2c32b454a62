"""The ReAct retry rules, pure: attempt state in, a decision out. No I/O, no Celery, no database.

A run makes up to ``max_iterations`` attempts. After each attempt :func:`next_step` decides:

- ``finish_success`` — the attempt succeeded: stop, return its result;
- ``retry`` — it failed and attempts are left: run the next one, telling it what failed
  (:func:`retry_context` adds ``_react_retry`` and ``_previous_attempt`` to the input context);
- ``finish_exhausted`` — it failed and it was the last one: return it, and evolve the skill. A *fatal*
  failure (the agent's setup is broken: a refused API key, an unknown model) finishes the run the same way at
  once, without evolving: neither another attempt nor a new variation can fix a setup.

The state never travels in a message: a worker rebuilds it from the attempts the store recorded
(worker/runner.py), so these rules need not distrust it; they only refuse a state that breaks them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from worker.settings import REACT_MAX_ITER_BOUNDS

Action = Literal["finish_success", "retry", "finish_exhausted"]
RETRY_FLAG = "_react_retry"
PREVIOUS_ATTEMPT = "_previous_attempt"


class ReactStateError(ValueError):
    """A ReAct state or attempt summary that breaks the rules."""


def _integer(value: object, name: str) -> int:
    # bool is an int to Python; `True` iterations is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ReactStateError(f"{name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class AttemptSummary:
    """What the retry rules need to know about one scored attempt (numbered from 1; ``success``: no error and
    fidelity at least the threshold)."""

    attempt: int
    pattern_fidelity: float
    success: bool
    failed_at_step: str | None
    error: str | None

    def __post_init__(self) -> None:
        if _integer(self.attempt, "attempt") < 1 or not 0.0 <= self.pattern_fidelity <= 1.0:
            raise ReactStateError(f"not an attempt summary: {self}")

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-able data (the shape of ``_react_metadata.all_attempts`` items)."""
        return {
            "attempt": self.attempt,
            "pattern_fidelity": self.pattern_fidelity,
            "fidelity": self.pattern_fidelity,  # the seed's name for it
            "success": self.success,
            "failed_at_step": self.failed_at_step,
            "error": self.error,
        }

    def previous_attempt(self) -> dict[str, Any]:
        """What the next attempt is told about this one: ``{fidelity, failed_at_step, error}``."""
        return {"fidelity": self.pattern_fidelity, "failed_at_step": self.failed_at_step, "error": self.error}


@dataclass(frozen=True)
class ReactState:
    """A run's ReAct state before an attempt runs: the attempt about to run (1-based), the summaries of the
    ``attempt - 1`` made before it, in order, and the version (and the test and arm, if a test chose it) every
    attempt of the run executes."""

    attempt: int
    max_iterations: int
    threshold: float
    attempts: tuple[AttemptSummary, ...]
    variation_id: str
    arm: str | None = None
    test_id: int | None = None

    def __post_init__(self) -> None:
        low, high = REACT_MAX_ITER_BOUNDS
        if not low <= _integer(self.max_iterations, "max_iterations") <= high:
            raise ReactStateError(f"max_iterations must be within {low}..{high}, got {self.max_iterations}")
        if not 1 <= _integer(self.attempt, "attempt") <= self.max_iterations:
            raise ReactStateError(f"attempt must be within 1..{self.max_iterations}, got {self.attempt}")
        if [summary.attempt for summary in self.attempts] != list(range(1, self.attempt)):
            raise ReactStateError(
                f"attempt {self.attempt} must follow attempts 1..{self.attempt - 1}, "
                f"got {[summary.attempt for summary in self.attempts]}"
            )
        if any(summary.success for summary in self.attempts):
            raise ReactStateError("a run does not go on after a successful attempt")


@dataclass(frozen=True)
class ReactDecision:
    """What to do after an attempt: ``finish_success``, ``retry`` (with the next attempt's state and the
    ``{fidelity, failed_at_step, error}`` it is told) or ``finish_exhausted`` (``evolve`` when the final attempt
    failed); ``metadata`` is the result's ``_react_metadata`` (``iterations``, ``max_iterations``,
    ``all_attempts``, ``early_success``: stopped on a success rather than out of attempts)."""

    action: Action
    next_state: ReactState | None
    previous_attempt: dict[str, Any] | None
    evolve: bool
    metadata: dict[str, Any]


def start(
    max_iterations: int,
    threshold: float,
    react_mode: bool,
    *,
    variation_id: str,
    arm: str | None = None,
    test_id: int | None = None,
) -> ReactState:
    """The state of a run's first attempt.

    Out-of-range figures are clamped (the seed's arguments; the settings refuse them): 50 iterations means 10,
    1.2 means 1.0.

    :param max_iterations: attempts wanted (clamped to 1..10).
    :param threshold: the fidelity needed (clamped to 0..1).
    :param react_mode: False gives the run a single attempt.
    :param arm: the A/B arm, if a test chose the version.
    :param test_id: the A/B test, if any.
    :raises ReactStateError: a figure that is not a number (or a NaN threshold).
    """
    low, high = REACT_MAX_ITER_BOUNDS
    iterations = max(low, min(high, _integer(max_iterations, "max_iterations"))) if react_mode else low
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or math.isnan(threshold):
        raise ReactStateError(f"threshold must be a number, got {threshold!r}")
    return ReactState(
        attempt=1,
        max_iterations=iterations,
        threshold=max(0.0, min(1.0, float(threshold))),
        attempts=(),
        variation_id=variation_id,
        arm=arm,
        test_id=test_id,
    )


def next_step(state: ReactState, latest: AttemptSummary, *, fatal: bool = False) -> ReactDecision:
    """Decide what follows the attempt just made.

    :param latest: the attempt's summary; its number must be ``state.attempt``.
    :param fatal: the attempt failed in a way no retry or variation can fix (the agent's setup): finish now,
        without evolving. Ignored for a successful attempt.
    :raises ReactStateError: the summary is not of the state's attempt.
    """
    if latest.attempt != state.attempt:
        raise ReactStateError(
            f"the summary is of attempt {latest.attempt}, the state of attempt {state.attempt}"
        )
    attempts = (*state.attempts, latest)
    metadata = {
        "iterations": len(attempts),
        "max_iterations": state.max_iterations,
        "all_attempts": [summary.to_dict() for summary in attempts],
        "early_success": latest.success,
    }
    if latest.success:
        return ReactDecision("finish_success", None, None, evolve=False, metadata=metadata)
    if fatal:
        return ReactDecision("finish_exhausted", None, None, evolve=False, metadata=metadata)
    if latest.attempt < state.max_iterations:
        next_state = replace(state, attempt=latest.attempt + 1, attempts=attempts)
        return ReactDecision("retry", next_state, latest.previous_attempt(), evolve=False, metadata=metadata)
    return ReactDecision("finish_exhausted", None, None, evolve=True, metadata=metadata)


def retry_context(context: Mapping[str, Any], state: ReactState) -> dict[str, Any]:
    """The input context an attempt runs with: a copy of the run's, plus what failed last time on a retry.

    On the first attempt the copy carries no ``_react_retry``/``_previous_attempt``: any the producer sent
    are dropped, so an agent never sees a failure that did not happen.

    :param context: the run's input context (not modified).
    :param state: the state of the attempt about to run.
    """
    copy = {key: value for key, value in context.items() if key not in (RETRY_FLAG, PREVIOUS_ATTEMPT)}
    if state.attempts:
        copy[RETRY_FLAG] = True
        copy[PREVIOUS_ATTEMPT] = state.attempts[-1].previous_attempt()
    return copy
