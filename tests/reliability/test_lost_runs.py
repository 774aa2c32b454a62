"""No lost runs, on Redis and on RabbitMQ: a worker SIGKILLed three times under load, with beat's run sweep on.

RabbitMQ holds a killed consumer's unacked messages and hands them out again at once. kombu's Redis transport
can lose the message a worker was fetching at the instant of the kill (popped, not yet recorded as unacked);
the producer's record (db/run_requests.py) and the sweep (worker/sweep.py) re-send it. Either way: every run
finishes, each attempt recorded once, counters exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import func, select
from typer.testing import CliRunner

from db.engine import get_engine
from db.memory import PatternMemory
from db.models import RunRequest
from db.run_requests import record_request
from tests.brokers import TestBroker
from tests.integration.skills_for_tests import python_skill
from tests.processes import (
    Process,
    broker_app,
    release_results,
    running,
    service_env,
    start_beat,
    start_worker,
    wait_until,
)
from tests.reliability.checks import finished_runs, outcomes_by_run, report
from tests.reliability.servers import kill_worker_tree
from worker.client import enqueue_skill
from worker.registry import register_skill_text

RUNS = 60
KILL_AFTER_FINISHED = (12, 27, 42)
CONCURRENCY = 4
VISIBILITY_TIMEOUT_SECONDS = 4
# Longer than any run waits in this test's queue, even on a busy machine (20 s was not: 3 to 18 runs re-sent
# that were only late), so that only a lost run is re-sent.
OVERDUE_SECONDS = 60
SWEEP_SECONDS = 1
SETTLE_TIMEOUT_SECONDS = 180


@pytest.fixture
def app(database_url: str, any_broker: TestBroker) -> Iterator[Celery]:
    celery = broker_app(database_url, any_broker.url, any_broker.result_backend)
    yield celery
    release_results(celery)


def _env(database_url: str, broker: TestBroker, overdue: float = OVERDUE_SECONDS) -> dict[str, str]:
    return service_env(
        database_url,
        broker.url,
        **broker.env(),
        WRE_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_TIMEOUT_SECONDS),
        WRE_RUN_SWEEP_SECONDS=str(SWEEP_SECONDS),
        WRE_RUN_OVERDUE_SECONDS=str(overdue),
        WRE_AB_EVAL_SECONDS="3600",
    )


def _resends(memory: PatternMemory) -> int:
    with memory.transaction() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(RunRequest.resends), 0))).scalar_one())


def test_sigkill_three_times_nothing_lost_nothing_twice(
    app: Celery, any_broker: TestBroker, database_url: str, memory: PatternMemory, tmp_path: Path
) -> None:
    register_skill_text(memory, python_skill("crashy", "slow_learner"))
    env = _env(database_url, any_broker)
    beat = start_beat(env, tmp_path)
    workers: list[Process] = [start_worker(app, env, tmp_path, concurrency=CONCURRENCY, pool="prefork")]
    with running(beat):
        try:
            results = [enqueue_skill("crashy", {"i": i, "seconds": 0.03}, app=app) for i in range(RUNS)]
            for threshold in KILL_AFTER_FINISHED:
                wait_until(
                    lambda t=threshold: finished_runs(memory, "crashy") >= t, timeout=120, what=f"{threshold} runs"
                )
                kill_worker_tree(workers[-1])
                workers.append(start_worker(app, env, tmp_path, concurrency=CONCURRENCY, pool="prefork"))
            wait_until(
                lambda: finished_runs(memory, "crashy") >= RUNS,
                timeout=SETTLE_TIMEOUT_SECONDS,
                interval=0.5,
                what="every run to finish",
            )
            runs = outcomes_by_run(memory, "crashy")
            assert set(runs) == {result.id for result in results}
            # Each run: exactly its path (fail, then succeed), each attempt once, one final outcome.
            twice = {run: rows for run, rows in runs.items() if [(r.attempt, r.final) for r in rows] != [(1, False), (2, True)]}
            assert twice == {}
            assert all(result.get(timeout=60)["success"] is True for result in results)
            counters = memory.get_counters(["total_runs", "total_executions", "react_retry_count"])
            assert counters == {"total_runs": RUNS, "total_executions": 2 * RUNS, "react_retry_count": RUNS}
            resends = _resends(memory)
            report(
                f"sigkill_{any_broker.kind}",
                runs=RUNS,
                kills=len(KILL_AFTER_FINISHED),
                lost=RUNS - finished_runs(memory, "crashy"),
                recorded_twice=len(twice),
                resent_by_the_sweep=resends,
            )
            if any_broker.kind == "rabbitmq":
                assert resends == 0, "RabbitMQ lost a message (the sweep had to re-send it)"
        finally:
            for worker in workers:
                worker.stop()


def test_a_run_the_broker_lost_is_listed_then_resent(
    app: Celery, any_broker: TestBroker, database_url: str, memory: PatternMemory, tmp_path: Path
) -> None:
    """A recorded run whose message never reached the broker: `wre runs stuck` lists it, the sweep re-sends it,
    it finishes once. A run refused as bad input (a FAILURE result, no outcome row) is closed, not re-sent."""
    register_skill_text(memory, python_skill("echo", "echo"))
    engine = get_engine(database_url)
    lost = "lost-run-" + any_broker.kind
    record_request(engine, lost, "echo", {"skill_name": "echo", "input_context": {"text": "found"}})
    # Sent unchecked, as a producer without wre would: the worker is what refuses it here.
    refused = enqueue_skill("no_such_skill", {}, app=app, validate=False)
    env = _env(database_url, any_broker, overdue=1)
    worker = start_worker(app, env, tmp_path, concurrency=2)
    with running(worker):
        with pytest.raises(Exception, match="no_such_skill"):
            refused.get(timeout=30)
        wait_until(lambda: _listed(env, lost), timeout=10, what="wre runs stuck to list the lost run")
        beat = start_beat(env, tmp_path)
        with running(beat):
            wait_until(lambda: finished_runs(memory, "echo") == 1, timeout=30, what="the lost run to finish")
            # The next rounds close both: one finished, one settled by its stored result.
            wait_until(lambda: _open_runs(memory) == [], timeout=10, what="both runs to be closed")
        assert [(row.attempt, row.final) for row in outcomes_by_run(memory, "echo")[lost]] == [(1, True)]
        with memory.transaction() as conn:
            resends = dict(conn.execute(select(RunRequest.run_id, RunRequest.resends)).all())
        assert resends == {lost: 1, refused.id: 0}
        assert not _listed(env, lost)


def _open_runs(memory: PatternMemory) -> list[str]:
    with memory.transaction() as conn:
        return list(conn.execute(select(RunRequest.run_id).where(RunRequest.closed_at.is_(None))).scalars())


def _listed(env: dict[str, str], run_id: str) -> bool:
    from worker.settings import get_settings
    from wre.cli import app as cli

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli, ["runs", "stuck", "--json", "--older-than", "1"], env=env)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    return run_id in result.output
