"""Worker crashes: a worker SIGKILLed mid-run, whole (prefork: parent and pool; threads: with attempts of several
threads being recorded together) or one pool process at a time.

What brings a dead worker's runs back is the broker, not the worker: with ``acks_late`` a message stays in
Redis's ``unacked`` set until the task is done, and Redis hands it to another worker after the visibility
timeout. What keeps a redelivered attempt from counting twice is the database: the outcome is keyed by
(run id, attempt) and counters and the A/B trial are written only with a newly inserted outcome.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery import Celery

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import Process, broker_app, release_results, service_env, start_worker, wait_until
from tests.reliability.checks import finished_runs, outcomes_by_run, report, unacked_deliveries
from tests.reliability.servers import PrivateRedis, child_pids, kill_worker_tree
from worker.client import enqueue_skill
from worker.registry import register_skill_text

RUNS = 300
KILL_AFTER_FINISHED = (60, 140, 220)
VISIBILITY_TIMEOUT_SECONDS = 4
ATTEMPT_SECONDS = 0.03  # a run of two attempts takes 60-100 ms
CONCURRENCY = 4
# A threads worker records the attempts of its threads together (db/group_commit.py): many threads, so that
# batches of several attempts are in flight when the kill lands.
THREADS_CONCURRENCY = 16
POOL_KILL_RUNS = 24  # enough work that two pool processes are still busy at the third kill


@pytest.fixture
def broker() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=False).start()
    yield server
    server.close()


@pytest.fixture
def app(database_url: str, broker: PrivateRedis) -> Iterator[Celery]:
    celery = broker_app(database_url, broker.url())
    yield celery
    release_results(celery)


def _skill_under_test(memory: PatternMemory, name: str) -> int:
    """A two-attempt skill (fails, then learns from the failure) with a running A/B test; returns its id."""
    register_skill_text(memory, python_skill(name, "slow_learner"))
    control, _ = memory.get_production(name)
    treatment = memory.store_variation(name, python_skill(name, "slow_learner", body="Answer, carefully."))
    # A target no run count reaches: the test runs throughout (and no beat runs here anyway).
    return memory.schedule_ab_test(name, control, treatment, policy="margin", sample_size_target=1_000_000)


@pytest.mark.parametrize(("pool", "concurrency"), [("prefork", CONCURRENCY), ("threads", THREADS_CONCURRENCY)])
def test_sigkill_three_times_during_300_runs(
    app: Celery,
    broker: PrivateRedis,
    database_url: str,
    memory: PatternMemory,
    tmp_path: Path,
    pool: str,
    concurrency: int,
) -> None:
    test_id = _skill_under_test(memory, "crashy")
    env = service_env(
        database_url, broker.url(), WRE_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_TIMEOUT_SECONDS)
    )
    workers: list[Process] = [start_worker(app, env, tmp_path, concurrency=concurrency, pool=pool)]
    kills: list[dict[str, object]] = []
    seen: set[tuple[str, int]] = set()
    try:
        started = time.monotonic()
        results = [
            enqueue_skill("crashy", {"i": i, "seconds": ATTEMPT_SECONDS}, app=app) for i in range(RUNS)
        ]
        run_ids = {result.id for result in results}
        for threshold in KILL_AFTER_FINISHED:
            wait_until(
                lambda t=threshold: finished_runs(memory, "crashy") >= t,
                timeout=120,
                what=f"{threshold} finished runs",
            )
            killed_at = datetime.now(UTC)
            kill_worker_tree(workers[-1])
            # Everything the dead worker had taken and not acked (running, or prefetched).
            # (Those of an earlier kill that are not back yet belong to that kill.)
            abandoned = [d for d in unacked_deliveries(broker.client()) if d not in seen]
            seen.update(abandoned)
            already = {
                (run, row.attempt) for run, rows in outcomes_by_run(memory, "crashy").items() for row in rows
            }
            finished_before = finished_runs(memory, "crashy")
            restart_began = time.monotonic()
            workers.append(start_worker(app, env, tmp_path, concurrency=concurrency, pool=pool))
            kills.append(
                {
                    "killed_at": killed_at,
                    "finished_before": finished_before,
                    "abandoned": abandoned,
                    "abandoned_already_recorded": sum(1 for d in abandoned if d in already),
                    "restart_seconds": round(time.monotonic() - restart_began, 2),
                }
            )
        worker = workers[-1]
        inspect = app.control.inspect(destination=[worker.hostname], timeout=1.0)  # type: ignore[attr-defined]

        def settled() -> bool:
            # Every run finished, or nothing is left anywhere that could still finish one: no message queued,
            # none delivered and unacked (those come back after the visibility timeout), none in the worker.
            if finished_runs(memory, "crashy") >= RUNS:
                return True
            client = broker.client()
            if client.llen("skills") or client.hlen("unacked"):
                return False
            active, reserved = inspect.active(), inspect.reserved()
            return bool(active) and not any(active.values()) and not any((reserved or {}).values())

        wait_until(settled, timeout=120, interval=0.5, what="every run to finish or nothing to be left")
        total_seconds = time.monotonic() - started
        runs = outcomes_by_run(memory, "crashy")
        unfinished = {run for run in run_ids if not any(row.final for row in runs.get(run, []))}
        # A SIGKILL can take with it the one message the worker's BRPOP was fetching at that instant: kombu's
        # Redis transport pops a message from the queue, then records it as unacked, in two steps (see
        # docs/RELIABILITY.md). Such a run is not queued, not unacked, and has no final outcome; what it
        # recorded before (its first attempt, if the lost message was its retry) was recorded once.
        assert len(unfinished) <= len(kills), {run: runs.get(run) for run in unfinished}
        finals = [result.get(timeout=60) for result in results if result.id not in unfinished]

        # The kills hit runs in flight, leaving deliveries behind for Redis to hand out again. (A kill can
        # land in an instant when the worker holds nothing unacked; not all three do.)
        assert any(kill["abandoned"] for kill in kills), kills
        assert set(runs) <= run_ids, "an outcome of a run nobody enqueued"
        for run_id in run_ids - unfinished:
            rows = runs[run_id]
            # Exactly the path the skill takes (fail, then succeed), each attempt once, one final outcome.
            assert [(r.attempt, r.final, r.success) for r in rows] == [(1, False, False), (2, True, True)], (
                run_id,
                rows,
            )
            assert len({r.arm for r in rows}) == 1  # the same arm on the retry
        for run_id in unfinished:
            assert [(r.attempt, r.final) for r in runs.get(run_id, [])] in ([], [(1, False)]), runs.get(
                run_id
            )
        assert all(final["success"] is True for final in finals)
        executions = sum(len(rows) for rows in runs.values())
        counters = memory.get_counters(["total_runs", "total_executions", "react_retry_count"])
        assert counters == {
            "total_runs": len(runs),
            "total_executions": executions,
            "react_retry_count": len(runs),
        }
        test = memory.get_ab_test(test_id)
        assert test is not None and test.status == "running"
        arms = {"control": 0, "treatment": 0}
        for rows in runs.values():
            arms[str(rows[0].arm)] += 1
        # One trial per run, never a second one from a redelivered first attempt.
        assert (test.control_trials, test.treatment_trials) == (arms["control"], arms["treatment"])
        assert test.control_trials + test.treatment_trials == len(runs)
        # Nothing left behind in the broker.
        assert unacked_deliveries(broker.client()) == []
        assert broker.client().llen("skills") == 0

        recovery = []
        for kill in kills:
            abandoned_runs = {run for run, _ in kill["abandoned"]}  # type: ignore[attr-defined]
            last = max(
                (rows[-1].created_at for run, rows in runs.items() if run in abandoned_runs - unfinished),
                default=kill["killed_at"],
            )
            recovery.append(round((last - kill["killed_at"]).total_seconds(), 2))  # type: ignore[operator]
        report(
            "worker_crash",
            runs=RUNS,
            kills=len(kills),
            pool=f"{pool} -c {concurrency}",
            visibility_timeout_s=VISIBILITY_TIMEOUT_SECONDS,
            finished_before_each_kill=[kill["finished_before"] for kill in kills],
            abandoned_deliveries=[len(kill["abandoned"]) for kill in kills],  # type: ignore[arg-type]
            abandoned_already_recorded=[kill["abandoned_already_recorded"] for kill in kills],
            restart_seconds=[kill["restart_seconds"] for kill in kills],
            recovery_seconds=recovery,
            outcome_rows=executions,
            runs_finished=RUNS - len(unfinished),
            lost_in_the_fetch_window=len(unfinished),
            lost_runs={run: [(r.attempt, r.final) for r in runs.get(run, [])] for run in unfinished},
            arms=arms,
            total_seconds=round(total_seconds, 1),
        )
        # An abandoned run comes back after the visibility timeout and a restore sweep, not after an hour: a
        # generous bound, since a loaded machine stretches every step (the figure itself is in the report).
        assert max(recovery) < VISIBILITY_TIMEOUT_SECONDS + 90, recovery
    finally:
        for worker in workers:
            worker.stop()


def test_a_pool_process_killed_mid_task_is_requeued_at_once(
    app: Celery, broker: PrivateRedis, database_url: str, memory: PatternMemory, tmp_path: Path
) -> None:
    """SIGKILL one pool process: the worker's parent sees it die and requeues its message itself
    (``task_reject_on_worker_lost``), long before the (default, one hour) visibility timeout."""
    register_skill_text(memory, python_skill("crashy", "slow_learner"))
    env = service_env(database_url, broker.url())  # the default visibility timeout: 3600 s
    worker = start_worker(app, env, tmp_path, concurrency=2, pool="prefork")
    try:
        results = [enqueue_skill("crashy", {"i": i, "seconds": 0.25}, app=app) for i in range(POOL_KILL_RUNS)]
        killed = []
        for _ in range(3):
            wait_until(
                lambda: len(unacked_deliveries(broker.client())) >= 2, timeout=30, what="busy processes"
            )
            # The pool may be between a killed process and its replacement: wait for one to kill.
            wait_until(lambda: bool(child_pids(worker.pid)), timeout=30, what="a pool process")
            child = child_pids(worker.pid)[0]
            killed_at = time.monotonic()
            os.kill(child, signal.SIGKILL)
            killed.append(killed_at)
            wait_until(lambda c=child: c not in child_pids(worker.pid), timeout=10, what="the pool to notice")
        wait_until(
            lambda: finished_runs(memory, "crashy") >= POOL_KILL_RUNS, timeout=60, what="all runs to finish"
        )
        recovered_in = time.monotonic() - killed[-1]
        assert [r.get(timeout=30)["success"] for r in results] == [True] * POOL_KILL_RUNS
        runs = outcomes_by_run(memory, "crashy")
        assert len(runs) == POOL_KILL_RUNS
        assert all([(r.attempt, r.final) for r in rows] == [(1, False), (2, True)] for rows in runs.values())
        assert worker.popen.poll() is None, "the worker's parent process survived its pool processes"
        assert "WorkerLostError" in worker.log()
        report(
            "pool_process_kill",
            kills=3,
            visibility_timeout_s=3600,
            all_done_after_last_kill_s=round(recovered_in, 2),
        )
        # Requeued at once (not after the 3,600 s visibility timeout); generous for a loaded machine.
        assert recovered_in < 120
    finally:
        worker.stop()
