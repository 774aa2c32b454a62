"""The broker restarted under load: a private redis-server, with an append-only file (as docker-compose runs
Redis) and without any persistence. What survives is measured and reported, and held to what each mode
promises; the worker reconnects by itself either way.
"""

from __future__ import annotations

import gc
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import kombu.exceptions
import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import broker_app, service_env, start_worker, wait_until
from tests.reliability.checks import outcomes_by_run, queued_runs, report, unacked_deliveries
from tests.reliability.servers import PrivateRedis
from worker.client import enqueue_skill
from worker.registry import register_skill_text

DONE_BEFORE = 20  # runs finished (results stored) before the restart
BACKLOG = 60  # runs queued just before the restart
ATTEMPT_SECONDS = 0.03
PUBLISH_EVERY_SECONDS = 0.02
VISIBILITY_TIMEOUT_SECONDS = 6
RECEIVED = re.compile(r"Task wre\.execute_skill\[([0-9a-f-]+)\] received")


MODES = {
    # (appendonly, how Redis goes down)
    "appendonly-sigterm": (True, signal.SIGTERM),  # `docker compose restart redis`, as compose runs it
    "appendonly-sigkill": (True, signal.SIGKILL),  # the Redis process crashes
    "no-persistence-sigterm": (False, signal.SIGTERM),
}


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker(mode: str) -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=MODES[mode][0]).start()
    yield server
    server.close()


@pytest.fixture
def app(database_url: str, broker: PrivateRedis) -> Iterator[Celery]:
    celery = broker_app(database_url, broker.url())
    yield celery
    # Let the test's AsyncResults unsubscribe while their Redis is still there.
    gc.collect()
    celery.close()


class Producer(threading.Thread):
    """Publishes a run every PUBLISH_EVERY_SECONDS until stopped; counts what the broker accepted or refused."""

    def __init__(self, app: Celery) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.accepted: list[str] = []
        self.refused: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            try:
                result = enqueue_skill("steady", {"p": i, "seconds": ATTEMPT_SECONDS}, app=self.app)
                self.accepted.append(result.id)
            except Exception as error:  # what a producer sees while the broker is away
                self.refused.append(type(error).__name__)
            i += 1
            self.halt.wait(PUBLISH_EVERY_SECONDS)


CONNECTION_ERRORS = (redis.exceptions.ConnectionError, kombu.exceptions.OperationalError)


def _answers(app: Celery, hostname: str) -> bool:
    try:
        return bool(app.control.ping(destination=[hostname], timeout=0.2))
    except CONNECTION_ERRORS:
        return False  # a pooled connection from before the restart: the next call gets a new one


def test_redis_restart_under_load(
    app: Celery, broker: PrivateRedis, mode: str, database_url: str, memory: PatternMemory, tmp_path: Path
) -> None:
    register_skill_text(memory, python_skill("steady", "sleeps"))
    # A short visibility timeout, so that deliveries the restart cut come back within the test.
    env = service_env(
        database_url, broker.url(), WRE_VISIBILITY_TIMEOUT_SECONDS=str(VISIBILITY_TIMEOUT_SECONDS)
    )
    worker = start_worker(app, env, tmp_path, concurrency=2, pool="prefork")
    pid = worker.pid
    producer = Producer(app)
    try:
        done = [enqueue_skill("steady", {"i": i, "seconds": 0}, app=app) for i in range(DONE_BEFORE)]
        assert all(result.get(timeout=30)["success"] for result in done)
        backlog = [
            enqueue_skill("steady", {"b": i, "seconds": ATTEMPT_SECONDS}, app=app).id for i in range(BACKLOG)
        ]
        producer.start()
        wait_until(
            lambda: len(outcomes_by_run(memory, "steady")) >= DONE_BEFORE + 10, what="the backlog to move"
        )
        client = broker.client()
        queued_before = set(queued_runs(client))
        in_flight_before = {run for run, _ in unacked_deliveries(client)}
        away_s = broker.restart(MODES[mode][1])
        back = time.monotonic()
        client = broker.client()
        queued_after = set(queued_runs(client))
        results_kept = sum(1 for result in done if AsyncResult(result.id, app=app).state == "SUCCESS")
        wait_until(
            lambda: _answers(app, worker.hostname),  # type: ignore[attr-defined]
            timeout=60,
            interval=0.05,
            what="the worker to reconnect",
        )
        reconnect_s = time.monotonic() - back
        producer.halt.set()
        producer.join(timeout=10)
        # A run sent after the restart completes (behind whatever backlog survived), on the same process.
        probe = enqueue_skill("steady", {"probe": True, "seconds": 0}, app=app)
        assert probe.get(timeout=60)["success"] is True
        assert worker.popen.poll() is None and worker.pid == pid
        assert "Connection to broker lost" in worker.log()

        published = set(backlog) | set(producer.accepted)

        inspect = app.control.inspect(destination=[worker.hostname], timeout=1.0)  # type: ignore[attr-defined]

        def idle(unacked_too: bool) -> bool:
            # Nothing queued, nothing running or reserved in the worker (and nothing delivered and unacked).
            try:
                if client.llen("skills") or (unacked_too and client.hlen("unacked")):
                    return False
                active, reserved = inspect.active(), inspect.reserved()
            except CONNECTION_ERRORS:
                return False
            return bool(active) and not any(active.values()) and not any((reserved or {}).values())

        wait_until(lambda: idle(False), timeout=120, interval=0.5, what="the worker to finish the queue")
        executed = set(outcomes_by_run(memory, "steady"))
        unacked = {run for run, _ in unacked_deliveries(client)}
        parked, stale = unacked - executed, unacked & executed
        # Deliveries cut by the restart whose ack never reached Redis come back after the visibility timeout.
        wait_until(lambda: idle(True), timeout=120, interval=0.5, what="unacked deliveries to come back")
        runs = outcomes_by_run(memory, "steady")
        lost = published - set(runs)
        received = Counter(RECEIVED.findall(worker.log()))
        # Whatever was delivered twice, no attempt was recorded twice.
        assert all([r.attempt for r in rows] == [1] for rows in runs.values())
        report(
            f"broker_restart_{mode}",
            redis_away_s=round(away_s, 2),
            results_stored_before=DONE_BEFORE,
            results_kept=results_kept,
            queued_at_restart=len(queued_before),
            queued_kept=len(queued_before & queued_after),
            in_flight_at_restart=len(in_flight_before),
            in_flight_finished=len(in_flight_before & set(runs)),
            published=len(published),
            publishes_refused=len(producer.refused),
            parked_in_unacked_until_visibility_timeout=len(parked),
            executed_but_unacked=len(stale),
            runs_executed=len(published & set(runs)),
            runs_lost=len(lost),
            runs_received_twice=sum(1 for n in received.values() if n > 1),
            worker_answers_again_after_s=round(reconnect_s, 2),
        )
        # Runs that were executing when Redis went away finished (their outcome is in Postgres).
        assert in_flight_before <= set(runs)
        if broker.appendonly:
            # The AOF keeps the queue, the results and the unacked deliveries (Redis writes the AOF before
            # it replies: a killed process loses nothing the kernel has, a lost machine up to one second with
            # appendfsync everysec). What a restart can lose is the one message a worker's BRPOP was taking at
            # that moment: kombu moves a message from the queue to its unacked set in two steps, and a reply
            # in flight dies with the connection (celery/celery#4354).
            assert results_kept == DONE_BEFORE
            assert len(lost) <= 1 and lost <= queued_before | set(producer.accepted), sorted(lost)
        else:
            # Without persistence the restart forgets the queue and the results: what was queued is lost.
            assert results_kept == 0
            assert queued_before & queued_after == set()
            assert lost and lost <= queued_before | set(producer.accepted), sorted(lost)[:5]
    finally:
        producer.halt.set()
        worker.stop()
