"""Worker settings and horizontal scaling, each with its own real worker processes."""

from __future__ import annotations

from pathlib import Path

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import broker_app, running, service_env, start_worker
from worker.client import enqueue_skill
from worker.registry import register_skill_text


def test_react_mode_off_gives_one_attempt(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    register_skill_text(memory, python_skill("learner", "learns_from_feedback"))
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url, WRE_REACT_MODE="0")
    with running(start_worker(app, env, tmp_path)):
        result = enqueue_skill("learner", {}, app=app).get(timeout=30)
    assert result["success"] is False
    assert result["_react_metadata"]["iterations"] == result["_react_metadata"]["max_iterations"] == 1
    assert len(memory.run_outcomes(result["execution_id"])) == 1


def test_max_iterations_at_its_ceiling_is_respected(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    # WRE_REACT_MAX_ITER beyond 10 is refused at start (tests/reliability/test_startup.py); 10 is served in full.
    register_skill_text(memory, python_skill("hopeless", "always_fails"))
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url, WRE_REACT_MAX_ITER="10")
    with running(start_worker(app, env, tmp_path)):
        result = enqueue_skill("hopeless", {}, app=app).get(timeout=60)
    assert result["_react_metadata"]["iterations"] == 10
    assert len(memory.run_outcomes(result["execution_id"])) == 10


def test_two_workers_share_the_queue_and_record_each_run_once(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    register_skill_text(memory, python_skill("learner", "learns_from_feedback"))
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url)
    first = start_worker(app, env, tmp_path, concurrency=2)
    second = start_worker(app, env, tmp_path, concurrency=2)
    with running(first, second):
        results = [enqueue_skill("learner", {"i": i}, app=app) for i in range(200)]
        finished = [r.get(timeout=120) for r in results]
    # Results no longer name their worker (result_extended is off: it kept the kwargs); the logs do, complete
    # once the workers have stopped (their output is buffered).
    ran = [sum(1 for run in results if f"wre.execute_skill[{run.id}] succeeded" in w.log()) for w in (first, second)]
    assert sum(ran) == 200 and min(ran) > 0, ran
    run_ids = [str(run["execution_id"]) for run in finished]
    assert len(set(run_ids)) == 200
    for run_id in run_ids:
        rows = memory.run_outcomes(run_id)
        assert [r["attempt"] for r in rows] == [1, 2]
        assert sum(r["final"] for r in rows) == 1
    assert memory.get_counter("total_runs") == 200
    assert memory.get_counter("total_executions") == 400
