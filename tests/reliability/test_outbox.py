"""The evolution outbox: a failed run's trigger is a stored fact; a broker error or a crash does not lose it."""

from __future__ import annotations

import re
from pathlib import Path

import kombu.exceptions
import pytest
import redis

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import broker_app, running, service_env, start_beat, start_worker, wait_until
from worker.app import MAINTENANCE_QUEUE, create_app
from worker.registry import register_skill_text
from worker.runner import SkillRunner
from worker.settings import Settings

# Nothing listens here: publishing to it is a broker error (connection refused).
DEAD_BROKER_URL = "redis://127.0.0.1:1/0"


def _failed_run(memory: PatternMemory, run_id: str) -> None:
    """Record a run whose only attempt fails, as a worker would, without enqueueing anything (a worker that
    died right after recording)."""
    register_skill_text(memory, python_skill("fails", "always_fails"))
    runner = SkillRunner(memory, Settings(react_max_iter=1, production_cache_seconds=0))
    request = runner.validate({"skill_name": "fails", "input_context": {}})
    version, state, _ = runner.resume(request, run_id, 1, read_store=False)
    outcome = runner.attempt(request, version, state, run_id)
    assert outcome.decision.evolve and outcome.recorded


def test_a_broker_error_leaves_the_trigger_pending(memory: PatternMemory, database_url: str, broker_url: str) -> None:
    _failed_run(memory, "run-outbox-1")
    assert memory.pending_evolutions() == 1
    dead = create_app(Settings(database_url=database_url, broker_url=DEAD_BROKER_URL, result_backend="disabled"))

    def publish_to_dead(skill_name: str) -> None:
        dead.send_task("wre.evolve_skill", kwargs={"skill_name": skill_name}, queue=MAINTENANCE_QUEUE, retry=False)

    with pytest.raises(kombu.exceptions.OperationalError):
        memory.sweep_evolution_outbox(publish_to_dead)
    assert memory.pending_evolutions() == 1  # rolled back: still there for the next sweep
    live = broker_app(database_url, broker_url)
    queue = redis.Redis.from_url(broker_url)
    before = queue.llen(MAINTENANCE_QUEUE)

    def publish(skill_name: str) -> None:
        live.send_task("wre.evolve_skill", kwargs={"skill_name": skill_name}, queue=MAINTENANCE_QUEUE)

    assert memory.sweep_evolution_outbox(publish) == ["fails"]
    assert memory.pending_evolutions() == 0
    assert queue.llen(MAINTENANCE_QUEUE) == before + 1
    assert memory.sweep_evolution_outbox(publish) == []  # done once, not again
    queue.delete(MAINTENANCE_QUEUE)


def test_beat_enqueues_an_evolution_nobody_enqueued(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    _failed_run(memory, "run-outbox-2")
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url, WRE_AB_EVAL_SECONDS="60")
    worker = start_worker(app, env, tmp_path, concurrency=2)
    beat = start_beat(env, tmp_path)
    with running(beat, worker):
        # The sweep enqueued it and a worker ran the evolve task (which then finds that this skill, a python
        # skill without tunable params, has nothing an evolver can change: that is screening's business).
        wait_until(
            lambda: re.search(r"Task wre\.evolve_skill\[[^\]]+\] succeeded", worker.log()) is not None,
            timeout=30,
            what="the swept trigger's evolve task to run",
        )
    assert memory.pending_evolutions() == 0
    assert "wre.sweep_evolution_outbox" in beat.log()
