"""The ReAct retry rules: start, next_step, and properties over any run."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.react import (
    AttemptSummary,
    ReactDecision,
    ReactState,
    ReactStateError,
    next_step,
    retry_context,
    start,
)


def failed(
    number: int, fidelity: float = 0.5, step: str | None = "b", error: str | None = None
) -> AttemptSummary:
    return AttemptSummary(number, fidelity, False, step, error)


def succeeded(number: int) -> AttemptSummary:
    return AttemptSummary(number, 1.0, True, None, None)


def begin(max_iterations: int = 3, threshold: float = 0.9, react_mode: bool = True) -> ReactState:
    return start(max_iterations, threshold, react_mode, variation_id="v1", arm="treatment", test_id=7)


# -- start


@pytest.mark.parametrize(("wanted", "clamped"), [(-5, 1), (0, 1), (1, 1), (3, 3), (10, 10), (50, 10)])
def test_start_clamps_iterations(wanted: int, clamped: int) -> None:
    assert begin(max_iterations=wanted).max_iterations == clamped


@pytest.mark.parametrize(("wanted", "clamped"), [(-0.5, 0.0), (0.0, 0.0), (0.9, 0.9), (1, 1.0), (7.0, 1.0)])
def test_start_clamps_threshold(wanted: float, clamped: float) -> None:
    assert begin(threshold=wanted).threshold == clamped


def test_start_without_react_mode_gives_one_attempt() -> None:
    assert begin(max_iterations=5, react_mode=False).max_iterations == 1


def test_start_state() -> None:
    state = begin()
    assert (state.attempt, state.attempts, state.variation_id, state.arm, state.test_id) == (
        1,
        (),
        "v1",
        "treatment",
        7,
    )


@pytest.mark.parametrize(
    ("iterations", "threshold"), [(True, 0.9), ("3", 0.9), (3, float("nan")), (3, "0.9")]
)
def test_start_refuses_non_numbers(iterations: Any, threshold: Any) -> None:
    with pytest.raises(ReactStateError):
        start(iterations, threshold, True, variation_id="v1")


# -- next_step


def test_success_on_the_first_attempt() -> None:
    decision = next_step(begin(), succeeded(1))
    assert decision.action == "finish_success"
    assert (decision.next_state, decision.previous_attempt, decision.evolve) == (None, None, False)
    assert decision.metadata == {
        "iterations": 1,
        "max_iterations": 3,
        "all_attempts": [succeeded(1).to_dict()],
        "early_success": True,
    }


def test_failure_then_retry_then_success() -> None:
    state = begin()
    decision = next_step(state, failed(1, 0.5, "b", "ValueError: x"))
    assert decision.action == "retry"
    assert decision.previous_attempt == {"fidelity": 0.5, "failed_at_step": "b", "error": "ValueError: x"}
    assert decision.evolve is False
    assert decision.next_state is not None
    assert decision.next_state.attempt == 2
    assert decision.next_state.attempts == (failed(1, 0.5, "b", "ValueError: x"),)
    assert (decision.next_state.variation_id, decision.next_state.arm, decision.next_state.test_id) == (
        "v1",
        "treatment",
        7,
    )
    final = next_step(decision.next_state, succeeded(2))
    assert final.action == "finish_success"
    assert final.metadata["iterations"] == 2
    assert [item["success"] for item in final.metadata["all_attempts"]] == [False, True]


def test_exhausted_evolves() -> None:
    state = begin(max_iterations=2)
    decision = next_step(state, failed(1))
    assert decision.next_state is not None
    final = next_step(decision.next_state, failed(2, 0.0, "a", "timed out after 5s"))
    assert final.action == "finish_exhausted"
    assert final.evolve is True
    assert final.next_state is None
    assert final.metadata["early_success"] is False
    assert final.metadata["iterations"] == 2


def test_single_attempt_failure_is_exhausted() -> None:
    decision = next_step(begin(react_mode=False), failed(1))
    assert (decision.action, decision.evolve) == ("finish_exhausted", True)


def test_the_summary_must_be_of_the_state_attempt() -> None:
    with pytest.raises(ReactStateError, match="attempt 2"):
        next_step(begin(), failed(2))


# -- retry_context


def test_retry_context_on_the_first_attempt_is_a_plain_copy() -> None:
    context = {"text": "hi", "_react_retry": True, "_previous_attempt": {"fidelity": 0}}
    copy = retry_context(context, begin())
    assert copy == {"text": "hi"}
    assert context["_react_retry"] is True


def test_retry_context_tells_what_failed() -> None:
    decision = next_step(begin(), failed(1, 0.25, "c", "KeyError: 'x'"))
    assert decision.next_state is not None
    context = {"text": "hi"}
    copy = retry_context(context, decision.next_state)
    assert copy == {
        "text": "hi",
        "_react_retry": True,
        "_previous_attempt": {"fidelity": 0.25, "failed_at_step": "c", "error": "KeyError: 'x'"},
    }
    assert context == {"text": "hi"}
    assert copy["_previous_attempt"] == decision.previous_attempt


# -- properties over any run

summaries = st.tuples(
    st.floats(min_value=0.0, max_value=1.0), st.booleans(), st.one_of(st.none(), st.text(max_size=5))
)


def drive(state: ReactState, results: list[tuple[float, bool, str | None]]) -> list[ReactDecision]:
    """Run the rules over a sequence of attempt results until they say stop (or the results run out)."""
    decisions: list[ReactDecision] = []
    for fidelity, success, error in results:
        decision = next_step(state, AttemptSummary(state.attempt, fidelity, success, None, error))
        decisions.append(decision)
        if decision.next_state is None:
            break
        state = decision.next_state
    return decisions


@settings(max_examples=300, deadline=None)
@given(
    max_iterations=st.integers(min_value=-3, max_value=15),
    react_mode=st.booleans(),
    results=st.lists(summaries, min_size=15, max_size=15),
)
def test_any_run_obeys_the_rules(
    max_iterations: int, react_mode: bool, results: list[tuple[float, bool, str | None]]
) -> None:
    state = start(max_iterations, 0.9, react_mode, variation_id="v")
    decisions = drive(state, results)
    final = decisions[-1]
    # there are always enough results to finish: at most 10 attempts
    assert final.action in ("finish_success", "finish_exhausted")
    assert 1 <= len(decisions) <= state.max_iterations
    assert all(decision.action == "retry" for decision in decisions[:-1])
    # exit on the first success
    first_success = next((index for index, (_, success, _) in enumerate(results) if success), None)
    if first_success is not None and first_success < state.max_iterations:
        assert len(decisions) == first_success + 1
        assert final.action == "finish_success"
    else:
        assert len(decisions) == state.max_iterations
        assert final.action == "finish_exhausted"
    # evolve at most once per run, and only when exhausted
    assert sum(decision.evolve for decision in decisions) <= 1
    assert all(decision.evolve == (decision.action == "finish_exhausted") for decision in decisions)
    assert final.metadata["iterations"] == len(decisions) <= final.metadata["max_iterations"]
    assert final.metadata["early_success"] == (final.action == "finish_success")
    assert [item["attempt"] for item in final.metadata["all_attempts"]] == list(range(1, len(decisions) + 1))
