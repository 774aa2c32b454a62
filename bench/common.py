"""What the benchmarks share: a throwaway store and broker, real worker processes, timed drains, bars.

The store is a fresh Postgres database (created and dropped with the test suite's helpers), the broker a
Redis DB number of the benchmark's own (flushed before and after). Workers and beat are the test suite's
real processes (``tests.processes``) with wre's production-like settings, plus the benchmark's tasks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.transport.redis import PRIORITY_STEPS
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bench.tasks import BENCH_METADATA
from db.memory import PatternMemory
from db.migrate import upgrade
from tests.conftest import create_database, drop_database
from tests.processes import Process, broker_app, service_env, start_beat, start_worker
from worker.app import SKILLS_QUEUE
from worker.client import EXECUTE_TASK, enqueue_skill
from worker.registry import register_skill
from worker.skills import Skill, parse_skill

DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/15"
BENCH_SKILL_MODULES = ("skills", "bench")
BENCH_INCLUDE = "bench.tasks"
KOMBU_PRIORITY_SEPARATOR = "\x06\x16"
UNACKED_KEY = "unacked"
DRAIN_POLL_SECONDS = 0.02
RESULT_CHUNK = 1000
CONTROL_TIMEOUT_SECONDS = 10.0
DRAIN_TIMEOUT_SECONDS = 600.0
INSTANT_SKILL = "bench_instant"


def python_skill(name: str, entrypoint: str) -> str:
    """A python-agent skill whose entrypoint (in bench/) passes both steps when it returns."""
    return f"""---
name: {name}
description: a benchmark skill
agent: python
entrypoint: bench.entrypoints:{entrypoint}
threshold: 0.9
time_limit: 30
evolver: hints
steps:
  - id: shape
    description: an object
    expect: {{json_schema: {{type: object}}}}
  - id: answer
    description: a non-empty answer
    expect: {{key: answer}}
---
Answer.
"""


def register(memory: PatternMemory, text_: str) -> Skill:
    """Parse (with bench/ allowed as python code) and register a skill."""
    skill = parse_skill(text_, source="<bench>", allowed_modules=list(BENCH_SKILL_MODULES))
    register_skill(memory, skill)
    return skill


def base_parser(description: str, warmup: int | None = None) -> argparse.ArgumentParser:
    """The options every benchmark takes; with ``warmup``, those of a benchmark on one worker too."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--broker-url",
        default=os.environ.get("WRE_BENCH_BROKER_URL", DEFAULT_BROKER_URL),
        help="Redis URL whose DB number the benchmark owns (flushed before and after)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the worker/beat logs")
    if warmup is not None:
        parser.add_argument("--pool", default="threads", help="the worker's pool (default threads)")
        parser.add_argument("--concurrency", type=int, default=4, help="the worker's concurrency (default 4)")
        parser.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs of each kind first ({warmup})")
    return parser


@dataclass
class Services:
    """A benchmark's throwaway store and broker, and where its processes log."""

    database_url: str
    broker_url: str
    log_dir: Path
    app: Celery
    redis: redis.Redis
    processes: list[Process] = field(default_factory=list)

    def env(self, **overrides: str) -> dict[str, str]:
        """A worker's environment: production-like settings (cached production view), bench/ allowed."""
        values = {
            "WRE_PYTHON_SKILL_MODULES": ",".join(BENCH_SKILL_MODULES),
            "WRE_PRODUCTION_CACHE_SECONDS": "2",
            "CELERY_WORKER_INCLUDE": BENCH_INCLUDE,
        }
        values.update(overrides)
        return service_env(self.database_url, self.broker_url, **values)

    def python_skill(self, name: str, entrypoint: str) -> PatternMemory:
        """Register a python skill (bench.entrypoints) and the reference task's table; returns the store."""
        memory = PatternMemory(self.database_url)
        BENCH_METADATA.create_all(memory.engine)
        register(memory, python_skill(name, entrypoint))
        return memory

    def worker(self, concurrency: int, pool: str = "threads", **overrides: str) -> Process:
        process = start_worker(
            self.app, self.env(**overrides), self.log_dir, concurrency=concurrency, pool=pool
        )
        self.processes.append(process)
        return process

    def beat(self, **overrides: str) -> Process:
        process = start_beat(self.env(**overrides), self.log_dir)
        self.processes.append(process)
        return process

    def stop(self, process: Process) -> None:
        process.stop()
        if process in self.processes:
            self.processes.remove(process)

    def xact_count(self) -> int:
        """Transactions committed and rolled back in the benchmark's database so far (server's count)."""
        name = make_url(self.database_url).database
        memory = PatternMemory(self.database_url)
        with memory.engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            value = conn.execute(
                text("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = :name"),
                {"name": name},
            ).scalar_one()
            conn.rollback()
        return int(value)


@contextmanager
def services(broker_url: str, prefix: str, keep_logs: bool = False) -> Iterator[Services]:
    """A migrated throwaway database and a flushed Redis DB; every started process is stopped on exit."""
    database_url = create_database(prefix)
    log_dir = Path(tempfile.mkdtemp(prefix=f"{prefix}-logs-"))
    client = redis.Redis.from_url(broker_url)
    client.flushdb()
    found = Services(database_url, broker_url, log_dir, broker_app(database_url, broker_url), client)
    try:
        upgrade(database_url)
        yield found
    finally:
        for process in list(found.processes):
            process.stop()
        found.app.close()
        client.flushdb()
        drop_database(database_url)
        if keep_logs:
            print(f"logs kept in {log_dir}")
        else:
            shutil.rmtree(log_dir, ignore_errors=True)


def pending(client: redis.Redis, queue: str = SKILLS_QUEUE) -> int:
    """Messages waiting in ``queue`` (every priority level) plus messages delivered but not yet acked."""
    pipe = client.pipeline(transaction=False)
    for priority in PRIORITY_STEPS:
        pipe.llen(f"{queue}{KOMBU_PRIORITY_SEPARATOR}{priority}" if priority else queue)
    pipe.hlen(UNACKED_KEY)
    return sum(int(value) for value in pipe.execute())


def wait_drained(client: redis.Redis, timeout: float, queue: str = SKILLS_QUEUE) -> float:
    """Block until nothing is queued or unacked; returns the perf_counter time it was first seen so."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pending(client, queue) == 0:
            return time.perf_counter()
        time.sleep(DRAIN_POLL_SECONDS)
    raise TimeoutError(f"queue {queue!r} not drained within {timeout:g}s ({pending(client, queue)} left)")


def hostname(process: Process) -> str:
    return str(getattr(process, "hostname"))  # noqa: B009 - set by tests.processes.start_worker


def timed_drain(
    services_: Services,
    workers: Sequence[Process],
    enqueue: Callable[[], list[str]],
    timeout: float,
) -> tuple[list[str], float]:
    """Enqueue while no worker consumes, then let ``workers`` consume and time until the queue is drained.

    Every other worker the benchmark started stays idle. Returns the task ids and the seconds from "start
    consuming" to "all acked" (late acks: a message is acked after its task finished and stored its result).
    """
    everyone = [hostname(process) for process in services_.processes if hasattr(process, "hostname")]
    services_.app.control.cancel_consumer(
        SKILLS_QUEUE, destination=everyone, reply=True, timeout=CONTROL_TIMEOUT_SECONDS
    )
    wait_drained(services_.redis, timeout)
    ids = enqueue()
    started = time.perf_counter()
    destinations = [hostname(process) for process in workers]
    replies = services_.app.control.add_consumer(
        SKILLS_QUEUE, destination=destinations, reply=True, timeout=CONTROL_TIMEOUT_SECONDS
    )
    if len(replies) != len(destinations):
        raise RuntimeError(f"only {len(replies)} of {len(destinations)} workers answered add_consumer")
    finished = wait_drained(services_.redis, timeout)
    return ids, finished - started


def send_one(found: Services, task: str, skill: str, i: int, producer: Any = None) -> str:
    """One run of ``task`` with wre's kwargs (every kind the same size); wre's through its own producer."""
    if task == EXECUTE_TASK:
        return str(enqueue_skill(skill, {"i": i}, app=found.app).id)
    kwargs = {"skill_name": skill, "input_context": {"i": i}}
    return str(found.app.send_task(task, kwargs=kwargs, queue=SKILLS_QUEUE, producer=producer).id)


def send_runs(found: Services, task: str, skill: str, runs: int) -> list[str]:
    with found.app.producer_or_acquire() as producer:
        return [send_one(found, task, skill, i, producer) for i in range(runs)]


def drain(
    found: Services, workers: Sequence[Process], task: str, skill: str, runs: int
) -> tuple[list[str], float]:
    """``timed_drain`` of ``runs`` of ``task``; raises unless every one succeeded (wre's runs: passed too)."""
    ids, seconds = timed_drain(found, workers, lambda: send_runs(found, task, skill, runs), DRAIN_TIMEOUT_SECONDS)
    states = result_states(found, ids)
    if states.get("wre_success" if task == EXECUTE_TASK else "SUCCESS") != len(ids):
        raise RuntimeError(f"not every run of {task} succeeded: {states}")
    return ids, seconds


def result_states(services_: Services, task_ids: Sequence[str]) -> dict[str, int]:
    """How many of ``task_ids`` have each state in the result backend (plus wre's ``success`` flag)."""
    backend: Any = services_.app.backend
    counts: dict[str, int] = {}
    for start in range(0, len(task_ids), RESULT_CHUNK):
        chunk = task_ids[start : start + RESULT_CHUNK]
        raw = backend.client.mget([backend.get_key_for_task(task_id) for task_id in chunk])
        for value in raw:
            meta = json.loads(value) if value else {"status": "MISSING"}
            counts[meta["status"]] = counts.get(meta["status"], 0) + 1
            result = meta.get("result")
            if isinstance(result, dict) and result.get("success") is True:
                counts["wre_success"] = counts.get("wre_success", 0) + 1
    return counts


class Report:
    """Prints figures and bars; remembers whether every bar passed."""

    def __init__(self, title: str) -> None:
        self.bars: list[tuple[str, bool]] = []
        print(f"== {title} — {date.today().isoformat()}", flush=True)

    def line(self, text_: str = "") -> None:
        print(text_, flush=True)

    def bar(self, name: str, value: str, passed: bool, note: str = "") -> bool:
        self.bars.append((name, passed))
        suffix = f"  ({note})" if note else ""
        print(f"BAR {name}: {value} {'PASS' if passed else 'FAIL'}{suffix}", flush=True)
        return passed

    def finish(self, started: float) -> int:
        passed = sum(ok for _, ok in self.bars)
        print(f"== {passed}/{len(self.bars)} bars pass; took {time.monotonic() - started:.0f} s", flush=True)
        return 0 if passed == len(self.bars) else 1
