"""Database outages under load: the worker's Postgres (a private cluster) goes away or has its connections cut.

Runs in flight hit SQLAlchemy OperationalErrors, which the task retries as infrastructure errors (with
backoff, on the same attempt number: no ReAct iteration is spent). Every run finishes, none runs more attempts
than its ReAct path needs, and the worker never needs a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from db.memory import PatternMemory
from db.migrate import upgrade
from tests.integration.skills_for_tests import python_skill
from tests.processes import Process, broker_app, release_results, service_env, start_worker, wait_until
from tests.reliability.checks import finished_runs, outcomes_by_run, report
from tests.reliability.servers import PrivatePostgres, PrivateRedis
from worker.client import enqueue_skill
from worker.registry import register_skill_text

RUNS = 150
ATTEMPT_SECONDS = 0.05
OUTAGE_SECONDS = 2.0
RETRY_LOG_LINE = "infrastructure error, retrying"


class Stack:
    """A private Postgres cluster and Redis, a migrated database, a prefork worker on them."""

    def __init__(self, tmp: Path) -> None:
        self.postgres = PrivatePostgres().init()
        self.broker = PrivateRedis(appendonly=False).start()
        self.database = "wre_outage"
        self.url = self.postgres.create_database(self.database)
        upgrade(self.url)
        self.memory = PatternMemory(self.url)
        register_skill_text(self.memory, python_skill("steady", "sleeps"))
        self.app = broker_app(self.url, self.broker.url())
        self.worker = start_worker(
            self.app, service_env(self.url, self.broker.url()), tmp, concurrency=4, pool="prefork"
        )

    def close(self) -> None:
        self.worker.stop()
        release_results(self.app)
        self.memory.dispose()
        self.broker.close()
        self.postgres.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("outage"))
    yield built
    built.close()


def _under_load(stack: Stack, cut: Callable[[], dict[str, object]], name: str) -> None:
    """Enqueue RUNS one-attempt runs, apply ``cut()`` once some have finished, then check every run."""
    worker: Process = stack.worker
    pid = worker.pid
    before = stack.memory.get_counters(["total_runs", "total_executions"])
    finished_before = finished_runs(stack.memory, "steady")
    retries_before = worker.log().count(RETRY_LOG_LINE)
    results = [
        enqueue_skill("steady", {"i": i, "seconds": ATTEMPT_SECONDS}, app=stack.app) for i in range(RUNS)
    ]
    wait_until(
        lambda: finished_runs(stack.memory, "steady") >= finished_before + RUNS // 5,
        timeout=60,
        what="a fifth of the runs to finish",
    )
    in_flight_at_cut = RUNS - (finished_runs(stack.memory, "steady") - finished_before)
    figures = cut()
    # This process's own pooled connections were cut too, and wre pings only connections idle for a while:
    # start the checks below on fresh ones (the worker's are its own business, and the point of the test).
    stack.memory.dispose()
    back_at = time.monotonic()
    finals = [result.get(timeout=120) for result in results]
    finished_after_s = time.monotonic() - back_at

    assert all(final["success"] is True for final in finals)
    runs = outcomes_by_run(stack.memory, "steady")
    for result in results:
        # The ReAct path of this skill is one successful attempt: the outage spent no iteration.
        assert [(r.attempt, r.final, r.success) for r in runs[result.id]] == [(1, True, True)], result.id
        assert [final["_react_metadata"]["iterations"] for final in finals] == [1] * RUNS
    after = stack.memory.get_counters(["total_runs", "total_executions"])
    assert after == {k: v + RUNS for k, v in before.items()}
    # The same worker process served throughout, and still serves.
    assert worker.popen.poll() is None and worker.pid == pid
    assert enqueue_skill("steady", {"seconds": 0}, app=stack.app).get(timeout=30)["success"] is True
    infra_retries = worker.log().count(RETRY_LOG_LINE) - retries_before
    # The cut hit runs in flight (otherwise this test would prove nothing).
    assert infra_retries > 0, worker.log()[-3000:]
    report(
        f"database_{name}",
        runs=RUNS,
        in_flight_at_cut=in_flight_at_cut,
        **figures,
        infrastructure_retries=infra_retries,
        all_finished_after_s=round(finished_after_s, 2),
        worker_pid_unchanged=True,
    )


def test_postgres_down_for_two_seconds_under_load(stack: Stack) -> None:
    _under_load(stack, lambda: {"unreachable_s": round(stack.postgres.outage(OUTAGE_SECONDS), 2)}, "outage")


def test_postgres_restart_fast_under_load(stack: Stack) -> None:
    _under_load(stack, lambda: {"restart_s": round(stack.postgres.restart(), 2)}, "restart")


def test_connections_terminated_under_load(stack: Stack) -> None:
    cut_counts: list[int] = []

    def cut_repeatedly() -> dict[str, object]:
        # pg_terminate_backend on every connection of the database, ten times over one second: idle pooled
        # connections are caught by the pool's pre-ping, the ones inside a transaction fail that transaction.
        stop = threading.Event()

        def cutter() -> None:
            while not stop.is_set() and len(cut_counts) < 10:
                cut_counts.append(stack.postgres.terminate_connections(stack.database))
                stop.wait(0.1)

        thread = threading.Thread(target=cutter)
        thread.start()
        thread.join(timeout=30)
        stop.set()
        return {"connections_cut": sum(cut_counts), "cut_rounds": len(cut_counts)}

    _under_load(stack, cut_repeatedly, "terminate")
    assert sum(cut_counts) > 0
