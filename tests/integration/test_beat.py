"""A real beat process decides an A/B test, and workers then run the promoted content."""

from __future__ import annotations

from pathlib import Path

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import broker_app, running, service_env, start_beat, start_worker, wait_until
from worker.client import enqueue_skill
from worker.registry import register_skill_text


def _a_clear_winner(memory: PatternMemory, skill: str) -> tuple[int, str]:
    """A test whose treatment clearly wins, recorded before beat starts looking; (test id, treatment)."""
    register_skill_text(memory, python_skill(skill, "echo"))
    control, _ = memory.get_production(skill)
    treatment = memory.store_variation(skill, python_skill(skill, "echo", body="Answer warmly."))
    test_id = memory.schedule_ab_test(skill, control, treatment)
    for i in range(60):
        memory.record_ab_outcome(test_id, "control", i < 15)
        memory.record_ab_outcome(test_id, "treatment", i < 57)
    return test_id, treatment


def test_beat_promotes_and_workers_run_the_promoted_content(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    test_id, treatment = _a_clear_winner(memory, "greet")
    app = broker_app(database_url, broker_url)
    # No guard here: every run after the promotion runs the promoted content (tests/integration/
    # test_experiments.py has the guard).
    env = service_env(database_url, broker_url, WRE_AB_EVAL_SECONDS="1", WRE_GUARD_HOLDOUT_SHARE="0")
    worker = start_worker(app, env, tmp_path)
    beat = start_beat(env, tmp_path)
    with running(beat, worker):
        wait_until(lambda: memory.get_ab_test(test_id).status == "completed", timeout=30,  # type: ignore[union-attr]
                   what="beat to decide the test")
        result = enqueue_skill("greet", {"text": "hi"}, app=app).get(timeout=30)
    decided = memory.get_ab_test(test_id)
    assert decided is not None and decided.winner == "treatment"
    assert memory.get_production("greet")[0] == treatment
    assert result["variation_id"] == treatment and result["test_id"] is None
    assert "wre.evaluate_ab_tests" in beat.log()


def test_verdicts_need_only_the_evaluation_queue(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    # A worker that consumes the evaluation queue alone decides the test while the maintenance queue (evolution,
    # screening, sweeps) has no worker at all: no screening can delay a verdict.
    test_id, treatment = _a_clear_winner(memory, "verdict")
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url, WRE_AB_EVAL_SECONDS="1", WRE_GUARD_HOLDOUT_SHARE="0")
    evaluator = start_worker(app, env, tmp_path, concurrency=1, queues="evaluation")
    beat = start_beat(env, tmp_path)
    with running(beat, evaluator):
        wait_until(lambda: memory.get_ab_test(test_id).status == "completed", timeout=30,  # type: ignore[union-attr]
                   what="the evaluation worker to decide the test")
    assert memory.get_production("verdict")[0] == treatment
    log = evaluator.log()  # a task it ran is logged as NAME[id]; the banner lists every task by name alone
    assert "wre.evaluate_ab_tests[" in log and "wre.sweep_evolution_outbox[" not in log
