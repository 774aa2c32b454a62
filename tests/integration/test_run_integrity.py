"""What a run refuses and what it keeps, in-process against real Postgres (the runner the task drives)."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from db.memory import PatternMemory
from db.models import TRIALS, utcnow
from scheduler.evaluation import PromotionPolicy, run_evaluation_round
from tests.integration.skills_for_tests import python_skill
from tests.ledger import fill_ledger
from worker.registry import register_skill_text
from worker.runner import InvalidRunError, SkillRunner, choose_arm
from worker.settings import Settings
from worker.skills import check_variation


@pytest.fixture
def runner(memory: PatternMemory) -> SkillRunner:
    return SkillRunner(memory, Settings(production_cache_seconds=0))


@pytest.mark.parametrize(
    ("context", "message"),
    [({"x": float("nan")}, "not JSON"), ({"x": "a\x00b"}, "NUL"), ({"x": {1, 2}}, "not JSON")],
)
def test_contexts_the_store_cannot_hold_are_refused(
    runner: SkillRunner, memory: PatternMemory, context: dict[str, object], message: str
) -> None:
    register_skill_text(memory, python_skill("echo", "echo"))
    with pytest.raises(InvalidRunError, match=message):
        runner.validate({"skill_name": "echo", "input_context": context})


def test_an_output_with_nul_is_a_scored_and_stored_attempt(runner: SkillRunner, memory: PatternMemory) -> None:
    register_skill_text(memory, python_skill("nul", "nul_output"))
    request = runner.validate({"skill_name": "nul", "input_context": {}})
    version = runner.resolve(request, "run-nul")
    outcome = runner.attempt(request, version, runner.start_state(request, version), "run-nul")
    assert outcome.recorded and outcome.score.success
    [row] = memory.run_outcomes("run-nul")
    assert json.loads(row["output"]) == {"answer": "a\x00b"}  # JSON text escapes it: stored as given


def test_a_redelivered_attempt_goes_on_from_what_was_recorded(runner: SkillRunner, memory: PatternMemory) -> None:
    register_skill_text(memory, python_skill("flaky", "flip_flop"))
    request = runner.validate({"skill_name": "flaky", "input_context": {"key": "redelivery"}})
    version = runner.resolve(request, "run-1")
    state = runner.start_state(request, version)
    first = runner.attempt(request, version, state, "run-1")
    assert first.recorded and first.decision.action == "retry"
    again = runner.attempt(request, version, state, "run-1")  # the agent now passes
    assert again.recorded is False
    assert again.decision.action == "retry" and again.score.success is False
    rows = memory.run_outcomes("run-1")
    assert len(rows) == 1 and rows[0]["success"] is False and rows[0]["final"] is False


def _with_test(memory: PatternMemory) -> tuple[str, str, int]:
    register_skill_text(memory, python_skill("ab", "echo"))
    control, _ = memory.get_production("ab")
    treatment = memory.store_variation("ab", python_skill("ab", "echo", body="Other."))
    return control, treatment, memory.schedule_ab_test("ab", control, treatment)


def test_a_forged_attempt_is_refused(runner: SkillRunner, memory: PatternMemory) -> None:
    """Attempt N > 1 exists only after a recorded, unfinished attempt N-1 of the same run."""
    _with_test(memory)
    register_skill_text(memory, python_skill("fails", "always_fails"))
    request = runner.validate({"skill_name": "ab", "input_context": {}})
    with pytest.raises(InvalidRunError, match="forged"):
        runner.resume(request, "run-never-started", 2)  # no attempt 1: it would skip the running test
    version, state, recorded = runner.resume(request, "run-x", 1, read_store=False)
    assert recorded is None and version.test_id is not None  # an honest first attempt is routed
    finished = runner.attempt(request, version, state, "run-x")
    assert finished.decision.action == "finish_success"
    with pytest.raises(InvalidRunError, match="forged"):
        runner.resume(request, "run-x", 2)  # after its final attempt, a run has no attempt 2
    failing = runner.validate({"skill_name": "fails", "input_context": {}})
    version, state, _ = runner.resume(failing, "run-y", 1, read_store=False)
    assert runner.attempt(failing, version, state, "run-y").decision.action == "retry"
    with pytest.raises(InvalidRunError, match="forged"):
        runner.resume(failing, "run-y", 3)  # attempt 2 is not recorded yet
    version_2, state_2, recorded_2 = runner.resume(failing, "run-y", 2)
    assert recorded_2 is None and version_2.variation_id == version.variation_id
    assert state_2.attempt == 2 and [a.attempt for a in state_2.attempts] == [1]


def test_a_reused_run_id_with_other_arguments_is_refused(runner: SkillRunner, memory: PatternMemory) -> None:
    register_skill_text(memory, python_skill("echo", "echo"))
    register_skill_text(memory, python_skill("other", "echo"))
    first = runner.validate({"skill_name": "echo", "input_context": {"text": "one"}})
    version, state, _ = runner.resume(first, "run-r", 1, read_store=False)
    runner.attempt(first, version, state, "run-r")
    for kwargs in (
        {"skill_name": "echo", "input_context": {"text": "two"}},
        {"skill_name": "other", "input_context": {"text": "one"}},
        {"skill_name": "echo", "input_context": {"text": "one"}, "assignment_key": "k"},
    ):
        other = runner.validate(kwargs)
        with pytest.raises(InvalidRunError, match="other arguments"):
            runner.resume(other, "run-r", 1)
        with pytest.raises(InvalidRunError, match="other arguments"):  # also when the agent ran first
            runner.attempt(other, version, runner.start_state(other, version), "run-r")
    assert len(memory.run_outcomes("run-r")) == 1


@pytest.mark.parametrize(
    ("entrypoint", "context"), [("long_answer", {"chars": 12_000}), ("long_answer", {"chars": 50_000}), ("json_text", {})]
)
def test_a_repeated_run_answers_exactly_from_the_store(
    runner: SkillRunner, memory: PatternMemory, entrypoint: str, context: dict[str, object]
) -> None:
    register_skill_text(memory, python_skill("exact", entrypoint, threshold=0.0))
    request = runner.validate({"skill_name": "exact", "input_context": context})
    version, state, _ = runner.resume(request, "run-e", 1, read_store=False)
    first = runner.attempt(request, version, state, "run-e")
    original = runner.result(request, version, "run-e", first)
    # The same run id and arguments again: answered from the store, the agent's output exactly.
    version, state, recorded = runner.resume(request, "run-e", 1)
    assert recorded is not None
    again = runner.result(request, version, "run-e", runner.recorded_attempt(state, recorded))
    assert again["result"] == original["result"] and type(again["result"]) is type(original["result"])
    assert json.dumps(again, sort_keys=True) == json.dumps(original, sort_keys=True)
    # The same through the record path (the agent ran again, the insert found the row).
    replayed = runner.attempt(request, version, state, "run-e")
    assert replayed.recorded is False
    assert runner.result(request, version, "run-e", replayed)["result"] == original["result"]
    [row] = memory.run_outcomes("run-e")
    assert len(row["output"]) < len(json.dumps(original["result"])) or entrypoint == "json_text"
    if entrypoint == "long_answer":  # whole, however long: no JSON cut short (the text column is a preview)
        assert original["result"]["answer"] == "x" * int(context["chars"])  # type: ignore[call-overload]


def test_an_output_over_the_limit_fails_its_attempt_naming_the_limit(
    runner: SkillRunner, memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import worker.runner

    monkeypatch.setattr(worker.runner, "MAX_OUTPUT_CHARS", 20_000)
    register_skill_text(memory, python_skill("huge", "long_answer", threshold=0.0))
    request = runner.validate({"skill_name": "huge", "input_context": {"chars": 30_000}})
    version, state, _ = runner.resume(request, "run-h", 1, read_store=False)
    outcome = runner.attempt(request, version, state, "run-h")
    [row] = memory.run_outcomes("run-h")
    assert row["execution_success"] is False and row["output"] is None
    assert re.fullmatch(r"the output is 30,0\d\d characters, over the limit of 20,000 \(MAX_OUTPUT_CHARS\)", row["error"])
    assert outcome.decision.action == "retry"  # a failed attempt like any other: retried with its error


def test_replacing_production_during_a_test_is_refused(memory: PatternMemory) -> None:
    _with_test(memory)
    with pytest.raises(ValueError, match="stop it first"):
        memory.register_skill("ab", python_skill("ab", "echo", body="New."), default_agent="python", replace=True)


def _guarded(database_url: str) -> tuple[Settings, PatternMemory, str, str]:
    """Skill "ab" whose second version a test just promoted, under a guard with a 30% holdout on the first:
    (settings, store, first version, second version)."""
    settings = Settings(database_url=database_url, guard_holdout_share=0.3, production_cache_seconds=0)
    store = PatternMemory(database_url, policy=PromotionPolicy(settings), variation_check=check_variation)
    register_skill_text(store, python_skill("ab", "echo"))
    base, _ = store.get_production("ab")
    second = store.store_variation("ab", python_skill("ab", "echo", body="Second."))
    first_test = store.schedule_ab_test("ab", base, second)
    fill_ledger(store, first_test, "control", 20, 100)
    fill_ledger(store, first_test, "treatment", 90, 100)
    [promotion] = run_evaluation_round(store)
    assert promotion.action == "promote"
    return settings, store, base, second


def test_a_test_beside_a_guard_routes_within_the_guards_share(memory: PatternMemory, database_url: str) -> None:
    """The guard splits first; outside its holdout the test splits; a run served the candidate is not counted
    as the guard's production outcome, and one outcome completes both of a run's trials."""
    settings, store, base, second = _guarded(database_url)
    third = store.store_variation("ab", python_skill("ab", "echo", body="Third."))
    test_id = store.schedule_ab_test("ab", second, third)
    guard, test = store.running_routes("ab")
    assert guard is not None and test is not None and guard.control_version == base

    runner = SkillRunner(store, settings)
    served: dict[str, str] = {}
    for i in range(120):
        run_id = f"beside-{i}"
        request = runner.validate({"skill_name": "ab", "input_context": {"i": i}})
        version = runner.resolve(request, run_id)
        runner.attempt(request, version, runner.start_state(request, version), run_id)
        served[run_id] = version.variation_id
    with store.transaction() as conn:
        trials = {(row.test_id, row.run_id): row for row in conn.execute(select(TRIALS))}
    for run_id, variation_id in served.items():
        guard_trial, test_trial = trials[(guard.test_id, run_id)], trials.get((test_id, run_id))
        assert guard_trial.completed_at is not None  # completed by the run's one outcome
        # Both of the guard's arms count the outcomes of units on the test's control coin only.
        coin = choose_arm(test_id, run_id, test.treatment_share)
        assert guard_trial.counted is (coin == "control")
        if guard_trial.arm == "control":
            assert variation_id == base and test_trial is None
        else:
            assert test_trial is not None and test_trial.completed_at is not None and test_trial.arm == coin
            assert variation_id == (third if coin == "treatment" else second)
    holdout = [run for run, variation in served.items() if variation == base]
    candidate = sum(variation == third for variation in served.values())
    assert 0 < len(holdout) < 120 and 0 < candidate < 120 - len(holdout)
    counted_holdout = sum(choose_arm(test_id, run, test.treatment_share) == "control" for run in holdout)
    cohorts = store.cohorts([guard.test_id, test_id], now=utcnow() + timedelta(minutes=1))
    on_guard, on_test = cohorts[guard.test_id], cohorts[test_id]
    # The split counts every unit; the guard's outcomes leave out the units on the candidate's coin.
    assert on_guard.control.assigned_units + on_guard.treatment.assigned_units == 120
    assert on_guard.control.assigned_units == len(holdout)
    assert (on_guard.control.units, on_guard.treatment.units) == (counted_holdout, 120 - len(holdout) - candidate)
    assert (on_test.control.units, on_test.treatment.units) == (120 - len(holdout) - candidate, candidate)
    # The running counts (dashboard, `wre ab show`) follow the ledger: the guard's grow for the runs the test
    # beside it served too.
    for record, cohort in ((store.get_ab_test(guard.test_id), on_guard), (store.get_ab_test(test_id), on_test)):
        assert record is not None
        assert (record.control_trials, record.treatment_trials) == (cohort.control.units, cohort.treatment.units)


def test_a_redelivered_run_gets_no_trial_of_a_test_started_since(memory: PatternMemory, database_url: str) -> None:
    """A run first assigned while only the guard ran keeps that one trial: serving it a candidate now would put
    the candidate's outcome into the guard's production arm."""
    settings, store, base, second = _guarded(database_url)
    runner = SkillRunner(store, settings)
    request = runner.validate({"skill_name": "ab", "input_context": {}})
    guard, _ = store.running_routes("ab")
    assert guard is not None
    run_id = next(f"r{i}" for i in range(100) if choose_arm(guard.test_id, f"r{i}", 0.7) == "treatment")
    assert runner.resolve(request, run_id).variation_id == second  # production, on the guard only
    test_id = store.schedule_ab_test("ab", second, store.store_variation("ab", python_skill("ab", "echo", body="3")))
    again = runner.resolve(request, run_id)  # the redelivery, with the test beside the guard now
    assert again.variation_id == second and again.test_id != test_id
    with store.transaction() as conn:
        rows = list(conn.execute(select(TRIALS.c.test_id, TRIALS.c.counted).where(TRIALS.c.run_id == run_id)))
    assert len(rows) == 1 and rows[0].counted is True
