"""Real Celery worker, beat and Flower processes for integration tests."""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from celery import Celery

from worker.app import create_app
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 30
STOP_TIMEOUT_SECONDS = 15
TEST_SKILL_MODULES = "skills,tests.fixtures"


def service_env(database_url: str, broker_url: str, **overrides: str) -> dict[str, str]:
    """The environment of a worker/beat process in a test: the test's store and broker, fast evaluation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRE_")}
    env.update(
        {
            "WRE_DATABASE_URL": database_url,
            "WRE_BROKER_URL": broker_url,
            "WRE_PYTHON_SKILL_MODULES": TEST_SKILL_MODULES,
            "WRE_EVOLVE_COOLDOWN_SECONDS": "3600",
            # Tests rewrite production between runs; workers must not serve a cached view of it.
            "WRE_PRODUCTION_CACHE_SECONDS": "0",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update(overrides)
    return env


def broker_app(database_url: str, broker_url: str, result_backend: str = "") -> Celery:
    """A Celery app in the test process that talks to the test broker (to send and to inspect)."""
    return create_app(Settings(database_url=database_url, broker_url=broker_url, result_backend=result_backend))


def release_results(app: Celery) -> None:
    """Let the AsyncResults this process still holds unsubscribe, then close ``app``: call it while the
    app's Redis is still up. An AsyncResult collected after its Redis is gone retries the reconnect in
    ``__del__`` (Celery's result-backend retry policy, about 20 s), stalling whichever later test the
    garbage collector happens to run in."""
    gc.collect()
    app.close()


class Process:
    """A child process with its log file; stopped with SIGTERM (then SIGKILL) on exit."""

    def __init__(self, args: list[str], env: Mapping[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, env=dict(env), cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(STOP_TIMEOUT_SECONDS)
        self._log.close()


def start_worker(
    app: Celery,
    env: Mapping[str, str],
    log_dir: Path,
    concurrency: int = 4,
    pool: str = "threads",
    queues: str | None = None,
    gossip: bool = False,
) -> Process:
    """A real ``celery -A worker.app worker`` process; returns once it answers a ping.

    :param queues: a ``-Q`` list; by default none, so the worker consumes the queues its settings name.
    :param gossip: gossip and mingle on, as in production (off by default: they slow every start down).
    """
    name = f"test-{uuid.uuid4().hex[:8]}@%h"
    args = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.app",
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        *(["-Q", queues] if queues else []),
        "-n",
        name,
        *([] if gossip else ["--without-gossip", "--without-mingle"]),
        "-l",
        "INFO",
    ]
    process = Process(args, env, log_dir / f"worker-{uuid.uuid4().hex[:6]}.log")
    hostname = name.replace("%h", os.uname().nodename)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"worker exited at start:\n{process.log()}")
        if app.control.ping(destination=[hostname], timeout=0.5):
            process.hostname = hostname  # type: ignore[attr-defined]
            return process
    process.stop()
    raise RuntimeError(f"worker did not answer within {START_TIMEOUT_SECONDS}s:\n{process.log()}")


def start_beat(env: Mapping[str, str], log_dir: Path) -> Process:
    schedule = log_dir / f"beat-schedule-{uuid.uuid4().hex[:6]}"
    args = [sys.executable, "-m", "celery", "-A", "worker.app", "beat", "-l", "INFO", "-s", str(schedule)]
    return Process(args, env, log_dir / f"beat-{uuid.uuid4().hex[:6]}.log")


@contextmanager
def running(*processes: Process) -> Iterator[None]:
    try:
        yield
    finally:
        for process in processes:
            process.stop()


def wait_until(
    predicate: object, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``predicate()`` until it is truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# Servers a test starts take ports below the kernel's ephemeral range (32768-60999 here), in a block of this
# test process's own. A port the kernel hands out (bind to 0) could go, while a private server is down for a
# restart (tests/reliability/servers.py), to any outgoing connection or to the other xdist process's next
# server, and the restarted server would then fail to bind or, worse, the test would talk to someone else's.
PRIVATE_PORTS = range(20000, 32000)
PORT_BLOCK = 1000


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else os.getpid()
    blocks = len(PRIVATE_PORTS) // PORT_BLOCK
    start = PRIVATE_PORTS.start + (index % blocks) * PORT_BLOCK
    return range(start, start + PORT_BLOCK)


_next_port: dict[int, int] = {}


def spare_port() -> int:
    """A TCP port nobody listens on right now, from this test process's block, never one it handed out before."""
    block = _port_block()
    offset = _next_port.get(block.start, 0)
    for tried in range(len(block)):
        port = block[(offset + tried) % len(block)]
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port[block.start] = (offset + tried + 1) % len(block)
        return port
    raise RuntimeError(f"no free port in {block.start}-{block.stop - 1}")
