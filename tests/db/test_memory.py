"""PatternMemory against a real Postgres: every method, its bad input, and idempotency."""

from __future__ import annotations

import pytest

from db.catalog import variation_id_for
from db.memory import AbTestConflictError, LearningEventRecord, OutcomeRecord, PatternMemory
from db.screening import replay_inputs

CONTENT = "---\nname: greet\n---\nSay hello."


def _skill(memory: PatternMemory, name: str = "greet") -> str:
    return memory.register_skill(name, CONTENT.replace("greet", name), default_agent="python", description="d")


def _outcome(run_id: str = "run-1", attempt: int = 1, **extra: object) -> OutcomeRecord:
    fields: dict[str, object] = {
        "run_id": run_id,
        "attempt": attempt,
        "skill_name": "greet",
        "variation_id": variation_id_for(CONTENT),
        "agent": "python",
        "success": True,
        "execution_success": True,
        "pattern_fidelity": 1.0,
        "final": True,
    }
    fields.update(extra)
    return OutcomeRecord(**fields)  # type: ignore[arg-type]


def test_register_skill_stores_baseline_as_production(memory: PatternMemory) -> None:
    variation_id = _skill(memory)
    assert variation_id == variation_id_for(CONTENT)
    skill = memory.get_skill("greet")
    assert skill is not None and skill.production_variation_id == variation_id
    assert memory.get_production("greet") == (variation_id, CONTENT)
    assert memory.get_variation(variation_id).test_status == "baseline"  # type: ignore[union-attr]
    assert _skill(memory) == variation_id  # same content again: nothing changes
    with pytest.raises(ValueError, match="already registered"):
        memory.register_skill("greet", CONTENT + "\nmore", default_agent="python")
    assert memory.get_production("greet")[0] == variation_id


def test_store_variation_is_content_addressed(memory: PatternMemory) -> None:
    base = _skill(memory)
    first = memory.store_variation("greet", CONTENT + "\nBe brief.", parent_version=base, created_by="hints")
    second = memory.store_variation("greet", CONTENT + "\nBe brief.", parent_version=base, created_by="other")
    assert first == second == variation_id_for(CONTENT + "\nBe brief.")
    assert len(memory.list_variations("greet")) == 2
    with pytest.raises(ValueError, match="unknown skill"):
        memory.store_variation("nope", "x")
    with pytest.raises(ValueError, match="test_status"):
        memory.store_variation("greet", "y", test_status="bogus")


def test_store_outcome_is_idempotent_on_run_and_attempt(memory: PatternMemory) -> None:
    _skill(memory)
    assert memory.record_attempt(_outcome(), counters={"total_executions": 1}) is True
    assert memory.record_attempt(_outcome(pattern_fidelity=0.2), counters={"total_executions": 1}) is False
    assert memory.store_outcome(**_outcome(attempt=2).__dict__) is True
    rows = memory.run_outcomes("run-1")
    assert [r["attempt"] for r in rows] == [1, 2]
    assert rows[0]["pattern_fidelity"] == 1.0
    assert memory.get_counter("total_executions") == 1  # the duplicate bumped nothing


@pytest.mark.parametrize(
    "bad",
    [{"attempt": 0}, {"pattern_fidelity": 1.5}, {"arm": "left"}, {"run_id": ""}, {"attempt": True}],
)
def test_store_outcome_rejects_bad_input(memory: PatternMemory, bad: dict[str, object]) -> None:
    _skill(memory)
    with pytest.raises(ValueError):
        memory.record_attempt(_outcome(**bad))
    assert memory.run_outcomes("run-1") == []


def test_inputs_are_stored_whole_within_the_limit_and_refused_beyond(
    memory: PatternMemory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import db.outcomes

    _skill(memory)
    blob = {"blob": "y" * 100_000}
    memory.record_attempt(_outcome(output="x" * 100_000, input_context=blob, success=False))
    row = memory.run_outcomes("run-1")[0]
    # The text column is a marked preview (the final attempt's whole output is its `result`); the input is whole.
    assert len(row["output"]) < 9_000 and "trimmed" in row["output"]
    assert row["input_context"] == blob
    # ... so screening can replay it.
    [replayed] = replay_inputs(memory, "greet", failures=5, passes=5)
    assert replayed.input_context == blob
    monkeypatch.setattr(db.outcomes, "MAX_STORED_CONTEXT_BYTES", 50_000)
    with pytest.raises(ValueError, match="over the store's limit of 50,000"):
        memory.record_attempt(_outcome("run-2", input_context=blob))
    assert memory.run_outcomes("run-2") == []


def test_skill_metrics(memory: PatternMemory) -> None:
    _skill(memory)
    memory.record_attempt(_outcome("a", 1, success=False, pattern_fidelity=0.5, final=False, execution_time_ms=10))
    memory.record_attempt(_outcome("a", 2, pattern_fidelity=1.0, execution_time_ms=30))
    memory.record_attempt(_outcome("b", 1, success=False, pattern_fidelity=0.25, execution_time_ms=20))
    metrics = memory.get_skill_metrics("greet", days=7)
    assert metrics["execution_count"] == 3
    assert metrics["run_count"] == 2
    assert metrics["success_rate"] == 0.5
    # The seed's "median fidelity" reads first attempts (0.5, 0.25); delivered reads final ones (1.0, 0.25).
    assert metrics["median_fidelity_reads"] == "first attempts"
    assert metrics["median_fidelity"] == pytest.approx(0.375)
    assert metrics["avg_first_attempt_fidelity"] == pytest.approx(0.375)
    assert metrics["median_delivered_fidelity"] == pytest.approx(0.625)
    assert metrics["avg_time_ms"] == pytest.approx(20)
    assert memory.get_skill_metrics("other")["run_count"] == 0
    assert memory.recent_failures("greet")[0]["run_id"] == "b"


def test_learning_events_and_history(memory: PatternMemory) -> None:
    _skill(memory)
    first = memory.record_learning_event("greet", "react_execution", details={"iterations": 2})
    second = memory.record_learning_event("greet", "rollback", fidelity_before=0.4, fidelity_after=0.6)
    history = memory.get_evolution_history("greet")
    assert [e.event_id for e in history] == [first, second]
    assert history[0].details == {"iterations": 2}
    with pytest.raises(ValueError):
        memory.record_learning_event("", "x")


def _two_versions(memory: PatternMemory) -> tuple[str, str]:
    base = _skill(memory)
    treatment = memory.store_variation("greet", CONTENT + "\nv2", parent_version=base)
    return base, treatment


def test_schedule_and_record_ab_outcomes(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("greet", base, treatment, sample_size_target=5, policy="margin")
    active = memory.running_test("greet")
    assert active is not None and active.test_id == test_id and active.status == "running"
    seed = memory.get_active_ab_test("greet")
    assert isinstance(seed, dict) and seed["test_id"] == test_id and seed["treatment_version"] == treatment
    memory.record_ab_outcome(test_id, "control", True)
    memory.record_ab_outcome(test_id, "treatment", False)
    memory.record_ab_outcome(test_id, "treatment", True, fidelity=0.75)
    test = memory.get_ab_test(test_id)
    assert test is not None
    assert (test.control_trials, test.control_successes) == (1, 1)
    assert (test.treatment_trials, test.treatment_successes) == (2, 1)
    assert test.treatment_fidelity == pytest.approx(0.375)
    with pytest.raises(AbTestConflictError):
        memory.schedule_ab_test("greet", base, treatment)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("same",), "different"),
        (("target0",), "sample_size_target"),
        (("target_bool",), "sample_size_target"),
        (("foreign",), "not a variation"),
    ],
)
def test_schedule_ab_test_rejects_bad_input(memory: PatternMemory, args: tuple[str], message: str) -> None:
    base, treatment = _two_versions(memory)
    other = memory.register_skill("other", CONTENT.replace("greet", "other"), default_agent="python")
    calls = {
        "same": lambda: memory.schedule_ab_test("greet", base, base),
        "target0": lambda: memory.schedule_ab_test("greet", base, treatment, sample_size_target=0),
        "target_bool": lambda: memory.schedule_ab_test("greet", base, treatment, sample_size_target=True),
        "foreign": lambda: memory.schedule_ab_test("greet", base, other),
    }
    with pytest.raises(ValueError, match=message):
        calls[args[0]]()
    assert memory.list_ab_tests() == []


@pytest.mark.parametrize(
    ("variant", "success"),
    [("Control", True), ("both", True), ("control", 1), ("treatment", "yes"), (None, True)],
)
def test_record_ab_outcome_rejects_bad_input(memory: PatternMemory, variant: object, success: object) -> None:
    base, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("greet", base, treatment)
    with pytest.raises(ValueError):
        memory.record_ab_outcome(test_id, variant, success)  # type: ignore[arg-type]
    test = memory.get_ab_test(test_id)
    assert test is not None and test.control_trials == test.treatment_trials == 0


def test_record_ab_outcome_only_on_running_test(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("greet", base, treatment)
    memory.stop_ab_test(test_id)
    with pytest.raises(ValueError, match="not running"):
        memory.record_ab_outcome(test_id, "control", True)
    with pytest.raises(ValueError, match="not running"):
        memory.record_ab_outcome(9999, "control", True)


def test_check_ab_promotion_margin_rule_is_per_arm(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("greet", base, treatment, sample_size_target=4, policy="margin")
    for _ in range(10):
        memory.record_ab_outcome(test_id, "treatment", True)
    # Ten treatment trials but no control trial: the seed counted the sum; per arm, no verdict yet.
    assert memory.ab_verdict(test_id)["should_promote"] is False
    for success in (True, False, False, True):
        memory.record_ab_outcome(test_id, "control", success)
    verdict = memory.ab_verdict(test_id)
    assert verdict["should_promote"] is True and verdict["winner"] == "treatment"
    # A floor above the observed lift (1.0 - 0.5) keeps it undecided.
    assert memory.ab_verdict(test_id, min_margin=0.6)["should_promote"] is False
    # The seed's call answers with the winner's name only, at the seed's 10-point margin by default.
    assert memory.check_ab_promotion(test_id) == "treatment"
    assert memory.check_ab_promotion(test_id, min_margin=0.6) is None
    with pytest.raises(ValueError, match="unknown"):
        memory.check_ab_promotion(424242)


def test_promote_archive_and_rollback(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    memory.promote_variation(treatment)
    assert memory.get_production("greet")[0] == treatment
    assert memory.get_variation(base).test_status == "retired"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="production"):
        memory.archive_variation(treatment)
    assert memory.rollback_skill("greet") == (treatment, base)
    assert memory.get_production("greet")[0] == base
    assert memory.get_variation(treatment).test_status == "archived"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="no previous"):
        memory.rollback_skill("greet")
    third = memory.store_variation("greet", CONTENT + "\nv3", parent_version=base)
    memory.archive_variation(third)
    assert memory.get_variation(third).test_status == "archived"  # type: ignore[union-attr]
    kinds = [e.event_type for e in memory.get_evolution_history("greet")]
    assert kinds == ["variation_promoted", "rollback", "variation_archived"]
    with pytest.raises(ValueError, match="unknown variation"):
        memory.promote_variation("feedfeedfeedfeed")


def test_counters(memory: PatternMemory) -> None:
    assert memory.increment_counter("runs") == 1
    assert memory.increment_counter("runs", 4) == 5
    assert memory.increment_counter("runs", -2) == 3
    assert memory.get_counter("runs") == 3
    assert memory.get_counter("never") == 0
    for bad in (1.5, True, "1"):
        with pytest.raises(ValueError):
            memory.increment_counter("runs", bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        memory.increment_counter("", 1)
    assert memory.get_counter("runs") == 3


def test_telemetry_dashboard(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    counters = {"total_executions": 1, "total_runs": 1}
    memory.record_attempt(_outcome("r1", 1, success=False, pattern_fidelity=0.2, final=False),
                          counters={**counters, "react_retry_count": 1, "runs_retried": 1})
    memory.record_attempt(_outcome("r1", 2, pattern_fidelity=0.8), counters={"total_executions": 1})
    memory.record_attempt(_outcome("r2", 1, pattern_fidelity=1.0), counters=counters)
    test_id = memory.schedule_ab_test("greet", base, treatment, sample_size_target=1, policy="margin")
    memory.record_ab_outcome(test_id, "control", False, fidelity=0.4)
    memory.record_ab_outcome(test_id, "treatment", True, fidelity=0.9)
    conclusions = memory.evaluate_running_tests()
    assert [c.winner for c in conclusions] == ["treatment"]
    dashboard = memory.get_telemetry_dashboard(window=1)
    assert dashboard["total_executions"] == 3
    assert dashboard["total_runs"] == 2
    assert dashboard["retry_count"] == 1
    # The seed's ratio: react_retry_count / total_executions.
    assert dashboard["repeated_failure_rate"] == pytest.approx(1 / 3)
    assert dashboard["variations_tested"] == 1
    assert dashboard["variations_promoted"] == 1
    assert dashboard["variation_win_rate"] == 1.0
    assert dashboard["avg_fidelity_delta"] == pytest.approx(0.5)
    # Windows compare first attempts: r1's first attempt (0.2) against r2's (1.0).
    assert dashboard["first_attempt_fidelity_first_window"] == pytest.approx(0.2)
    assert dashboard["first_attempt_fidelity_now"] == pytest.approx(1.0)
    assert dashboard["first_attempt_fidelity_gain"] == pytest.approx(4.0)
    assert dashboard["delivered_fidelity_now"] == pytest.approx(1.0)


def test_empty_dashboard_is_zeros_and_inconclusive_counts_as_archived(memory: PatternMemory) -> None:
    seed_keys = ("retry_count", "total_executions", "variation_win_rate", "avg_fidelity_delta",
                 "variations_tested", "variations_promoted")
    empty = memory.get_telemetry_dashboard()
    assert all(isinstance(empty[key], int | float) and empty[key] == 0 for key in seed_keys), empty
    base, treatment = _two_versions(memory)
    third = memory.store_variation("greet", CONTENT + "\nv3", parent_version=base)
    won = memory.schedule_ab_test("greet", base, treatment, sample_size_target=1, policy="margin")
    memory.record_ab_outcome(won, "control", False)
    memory.record_ab_outcome(won, "treatment", True)
    assert [c.winner for c in memory.evaluate_running_tests()] == ["treatment"]
    guard = memory.running_test("greet")
    assert guard is not None and guard.kind == "guard"
    memory.stop_ab_test(guard.test_id)  # the promotion stays; the skill's slot is free again
    # A second test runs to the margin policy's maximum without a verdict: inconclusive, its variation archived.
    even = memory.schedule_ab_test("greet", treatment, third, sample_size_target=1, policy="margin")
    for arm in ("control", "treatment"):
        memory.record_ab_outcome(even, arm, True)
    with memory.transaction() as conn:
        from sqlalchemy import update

        from db.models import TESTS
        conn.execute(update(TESTS).where(TESTS.c.test_id == even).values(
            status="completed", winner="inconclusive"))
    dashboard = memory.get_telemetry_dashboard()
    assert (dashboard["variations_promoted"], dashboard["variations_archived"]) == (1, 1)
    assert dashboard["variations_inconclusive"] == 1
    assert dashboard["variation_win_rate"] == 0.5


def test_nul_characters_are_stored_not_refused(memory: PatternMemory) -> None:
    _skill(memory)
    stored = memory.record_attempt(
        _outcome(output="a\x00b", error="bad\x00", step_results=[{"id": "a", "passed": False, "detail": "\x00"}])
    )
    assert stored
    row = memory.run_outcomes("run-1")[0]
    assert row["output"] == "a\ufffdb" and row["error"] == "bad\ufffd"
    assert row["step_results"][0]["detail"] == "\ufffd"


def test_a_duplicate_attempt_adds_no_trial_and_no_event(memory: PatternMemory) -> None:
    base, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("greet", base, treatment)
    event = LearningEventRecord(skill_name="greet", event_type="react_execution")
    memory.assign_trial(test_id, "run-1", "treatment", "run-1", 60.0)  # as the worker does when it routes
    for _ in range(2):
        memory.record_attempt(_outcome(test_id=test_id, arm="treatment"), learning_event=event)
    test = memory.get_ab_test(test_id)
    assert test is not None and test.treatment_trials == 1
    assert [e.event_type for e in memory.get_evolution_history("greet")] == ["react_execution"]
