"""Time limits that stop the work, on a real worker: 200 hung and 8 spinning python agents leave no thread, no
process, no memory and no busy core behind, and a trivial run is as quick afterwards as before.

Figures are counts and ratios against a baseline measured on the same worker just before (printed as a
RELIABILITY line for docs/RELIABILITY.md), never absolute times.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import closing
from pathlib import Path

from celery import Celery
from celery.result import AsyncResult

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import Process, broker_app, release_results, running, service_env, start_worker
from tests.reliability.checks import report
from tests.reliability.servers import PrivateRedis
from worker.registry import register_skill_text

CONCURRENCY = 8
HUNG_RUNS = 200
SPINNING_RUNS = 8
LATENCY_RUNS = 20
IDLE_WINDOW_SECONDS = 1.0
TICKS = os.sysconf("SC_CLK_TCK")


def _limited(name: str, entrypoint: str, seconds: float) -> str:
    return python_skill(name, entrypoint).replace("time_limit: 5", f"time_limit: {seconds}")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        found += [int(child) for child in children]
    return found


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def _idle_cpu(pid: int) -> float:
    """CPU-seconds per second the worker and its children use while no run is in flight."""
    pids = [pid, *_children(pid)]
    before, started = _cpu_seconds(pids), time.monotonic()
    time.sleep(IDLE_WINDOW_SECONDS)
    return (_cpu_seconds(pids) - before) / (time.monotonic() - started)


def _latency_ms(app: Celery) -> float:
    times = []
    for index in range(LATENCY_RUNS):
        started = time.perf_counter()
        app.send_task("wre.execute_skill", kwargs={"skill_name": "quick", "input_context": {"text": str(index)}}).get(
            timeout=60
        )
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def _figures(worker: Process, app: Celery) -> dict[str, float]:
    latency = _latency_ms(app)
    return {
        "threads": _status(worker.pid, "Threads"),
        "rss_kb": _status(worker.pid, "VmRSS"),
        "children": len(_children(worker.pid)),
        "idle_cpu": _idle_cpu(worker.pid),
        "latency_ms": latency,
    }


def test_hung_and_spinning_agents_leave_nothing_behind(
    memory: PatternMemory, database_url: str, tmp_path: Path
) -> None:
    register_skill_text(memory, python_skill("quick", "echo"))
    register_skill_text(memory, python_skill("nap", "sleeps", threshold=0.5))
    register_skill_text(memory, _limited("hung", "hangs", 0.1))
    register_skill_text(memory, _limited("spinning", "spins", 0.2))
    # A Redis of its own: no other worker (another test's, another session's) takes these runs.
    broker = PrivateRedis(appendonly=False).start()
    app = broker_app(database_url, broker.url())
    env = service_env(database_url, broker.url(), WRE_REACT_MAX_ITER="1")
    worker = start_worker(app, env, tmp_path, concurrency=CONCURRENCY, queues="skills")
    naps: list[AsyncResult] = []
    sent: list[AsyncResult] = []
    with running(worker), closing(broker):
        try:
            # Warm: every pool thread started and has its child, modules imported (naps run side by side).
            naps = [
                app.send_task("wre.execute_skill", kwargs={"skill_name": "nap", "input_context": {"seconds": 0.5}})
                for _ in range(2 * CONCURRENCY)
            ]
            assert all(result.get(timeout=60)["success"] for result in naps)
            _latency_ms(app)
            baseline = _figures(worker, app)
            sent = [
                app.send_task("wre.execute_skill", kwargs={"skill_name": "hung", "input_context": {"n": i}})
                for i in range(HUNG_RUNS)
            ] + [
                app.send_task("wre.execute_skill", kwargs={"skill_name": "spinning", "input_context": {"n": i}})
                for i in range(SPINNING_RUNS)
            ]
            errors = [result.get(timeout=120)["error"] for result in sent]
            assert all(error is not None and error.startswith("timed out after") for error in errors)
            after = _figures(worker, app)
        finally:
            # Even when an assertion failed (its traceback keeps this frame): drop the results while their
            # Redis is still up.
            naps = sent = []
            release_results(app)
    ratios = {
        "rss": after["rss_kb"] / baseline["rss_kb"],
        "latency": after["latency_ms"] / baseline["latency_ms"],
    }
    report("time limits: 200 hung + 8 spinning python agents", baseline=baseline, after=after, ratios=ratios)
    # Counts: no thread and no process more than before (one child per worker thread at most).
    assert after["threads"] <= baseline["threads"]
    assert after["children"] <= CONCURRENCY
    # Ratios: memory and a trivial run's latency back to the baseline; no core kept busy by a spinning agent.
    assert ratios["rss"] < 1.25
    assert after["idle_cpu"] < 0.25
    assert ratios["latency"] < 5
