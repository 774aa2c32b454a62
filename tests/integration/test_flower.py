"""Flower, as docker-compose runs it (basic auth from FLOWER_BASIC_AUTH), watching a real worker on the test broker.

A run goes through the real worker; Flower's HTTP API then shows the worker (with its queues) and the task
(its name and kwargs). Without credentials, or with wrong ones, the API refuses.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from celery import Celery

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import (
    Process,
    broker_app,
    running,
    service_env,
    spare_port,
    start_worker,
    wait_until,
)
from worker.app import EVALUATION_QUEUE, MAINTENANCE_QUEUE, SKILLS_QUEUE
from worker.client import EXECUTE_TASK, enqueue_skill
from worker.registry import register_skill_text

pytestmark = pytest.mark.integration

USER, PASSWORD = "operator", "flower-test-secret"
FLOWER_START_SECONDS = 30
RESULT_TIMEOUT = 30


@dataclass(frozen=True)
class Stack:
    base: str
    hostname: str
    flower: Process


@pytest.fixture(scope="module")
def app(database_url: str, broker_url: str) -> Celery:
    return broker_app(database_url, broker_url)


@pytest.fixture(scope="module")
def stack(
    app: Celery, database_url: str, broker_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A worker and a Flower that already receives its events."""
    logs = tmp_path_factory.mktemp("flower")
    port = spare_port()
    # Flower first: it then catches the worker's worker-online event instead of waiting for a heartbeat.
    flower = Process(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.app",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ],
        # Credentials the way docker-compose.yml hands them over; the API must not be opened without them.
        service_env(
            database_url, broker_url, FLOWER_BASIC_AUTH=f"{USER}:{PASSWORD}", FLOWER_UNAUTHENTICATED_API=""
        ),
        logs / "flower.log",
    )
    try:
        # Task events from the first task, as docker-compose.yml sets them for the stack that runs Flower.
        worker = start_worker(app, service_env(database_url, broker_url, WRE_TASK_EVENTS="1"), logs, concurrency=2)
    except BaseException:
        flower.stop()
        raise
    base = f"http://127.0.0.1:{port}"
    hostname = worker.hostname  # type: ignore[attr-defined]
    with running(flower, worker):

        def sees_worker_events() -> bool:
            assert flower.popen.poll() is None, flower.log()
            try:
                # /workers?json=1 lists the workers Flower knows from their events: once ours is there,
                # Flower's event receiver is connected and will see our task's events too.
                response = httpx.get(f"{base}/workers?json=1", auth=(USER, PASSWORD), timeout=2)
            except httpx.TransportError:
                return False
            known = response.json()["data"] if response.status_code == 200 else []
            return any(w.get("hostname") == hostname for w in known)

        wait_until(sees_worker_events, timeout=FLOWER_START_SECONDS, what=f"Flower to see {hostname}")
        yield Stack(base, hostname, flower)


@pytest.fixture
def skill(memory: PatternMemory) -> str:
    register_skill_text(memory, python_skill("flower_echo", "echo"))
    return "flower_echo"


def get(url: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url, timeout=10, **kwargs)


def test_flower_shows_the_worker_and_the_task(app: Celery, stack: Stack, skill: str) -> None:
    base, hostname = stack.base, stack.hostname
    result = enqueue_skill(skill, {"text": "seen by flower"}, app=app)
    assert result.get(timeout=RESULT_TIMEOUT)["success"] is True
    info_url = f"{base}/api/task/info/{result.id}"

    def task_done() -> bool:
        response = get(info_url, auth=(USER, PASSWORD))
        return response.status_code == 200 and response.json().get("state") == "SUCCESS"

    wait_until(task_done, timeout=15, what="Flower to record the task's success")
    task = get(info_url, auth=(USER, PASSWORD)).json()
    assert task["name"] == EXECUTE_TASK
    assert task["worker"] == hostname
    # Flower shows kwargs as the worker's repr of them.
    kwargs = ast.literal_eval(task["kwargs"])
    assert kwargs["skill_name"] == skill
    assert kwargs["input_context"] == {"text": "seen by flower"}
    assert task["args"] in ("()", "[]")  # kwargs only, as DESIGN.md requires

    # refresh=1 makes Flower inspect the workers by broadcast, which waits a second for replies: a loaded
    # machine can miss that, and the next call asks again.
    # Each inspected figure (stats, active_queues, ...) is its own broadcast: wait for the ones read below.
    seen: dict[str, Any] = {}

    def worker_listed() -> bool:
        response = get(f"{base}/api/workers?refresh=1", auth=(USER, PASSWORD))
        assert response.status_code == 200
        seen.update(response.json())
        return {"stats", "active_queues"} <= set(seen.get(hostname) or {})

    wait_until(worker_listed, timeout=15, interval=0.5, what=f"Flower's API to list {hostname}")
    ours = seen[hostname]
    assert {queue["name"] for queue in ours["active_queues"]} == {SKILLS_QUEUE, MAINTENANCE_QUEUE, EVALUATION_QUEUE}
    assert ours["stats"]["pool"]["max-concurrency"] == 2

    lengths = get(f"{base}/api/queues/length", auth=(USER, PASSWORD))
    assert lengths.status_code == 200
    assert {queue["name"] for queue in lengths.json()["active_queues"]} >= {SKILLS_QUEUE, MAINTENANCE_QUEUE}


@pytest.mark.parametrize("auth", [None, (USER, "wrong"), ("someone", PASSWORD)])
def test_the_api_refuses_without_the_credentials(stack: Stack, auth: tuple[str, str] | None) -> None:
    for path in ("/api/workers", "/api/task/info/anything", "/api/queues/length", "/workers?json=1"):
        response = get(stack.base + path, auth=auth)
        assert response.status_code == 401, (path, response.status_code)


def test_healthcheck_is_open_and_the_log_holds_no_password(stack: Stack) -> None:
    # The healthcheck is Flower's one page without auth (for an orchestrator's probe).
    assert get(f"{stack.base}/healthcheck").text == "OK"
    assert PASSWORD not in stack.flower.log()
