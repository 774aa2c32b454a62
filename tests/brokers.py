"""The brokers the broker-dependent tests run on: Redis (a DB number of its own) and RabbitMQ (a vhost of its own).

Each ``TestBroker`` gives a URL for the test's apps and processes and counts what a queue still holds, so a test
can say "nothing left behind" the same way on both. RabbitMQ's vhost is created and deleted with
``rabbitmqctl``; where RabbitMQ is not installed or not running, its half of the tests skips and says why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from typing import Literal

import pytest
import redis
from sqlalchemy.engine import make_url

DEFAULT_TEST_BROKER_URL = "redis://127.0.0.1:6379/0"
# kombu logs in as RabbitMQ's default user (guest, loopback only) when the URL names none.
DEFAULT_TEST_AMQP_URL = "amqp://127.0.0.1:5672//"
RABBITMQCTL_TIMEOUT_SECONDS = 60

Kind = Literal["redis", "rabbitmq"]
KINDS: tuple[Kind, ...] = ("redis", "rabbitmq")


@dataclass
class TestBroker:
    """A broker for one test session: its URL and a way to count what its queues hold."""

    kind: Kind
    url: str
    # RabbitMQ keeps no results a test can read back by id: the test Redis does (the usual production pairing).
    result_backend: str = ""
    vhost: str | None = None
    _redis: redis.Redis | None = field(default=None, repr=False)

    __test__ = False  # not a test class, whatever pytest's name pattern says

    def env(self) -> dict[str, str]:
        """The settings a worker or beat process of this broker needs."""
        return {"WRE_BROKER_URL": self.url, "WRE_RESULT_BACKEND": self.result_backend}

    def held(self, queue: str) -> int:
        """Messages in ``queue``, ready or delivered and not acked yet."""
        if self.kind == "redis":
            client = self._client()
            # kombu's Redis transport keeps delivered, unacked messages in one hash for every queue.
            unacked = sum(1 for value in client.hvals("unacked") if json.loads(value)[2] == queue)
            return int(client.llen(queue)) + unacked
        return rabbitmq_queues(self.vhost or "/").get(queue, 0)

    def _client(self) -> redis.Redis:
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.url)
        return self._redis

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
        if self.vhost is not None:
            rabbitmqctl("delete_vhost", self.vhost, check=False)


def redis_url() -> str:
    """The test Redis on a DB number of this process's own."""
    base = make_url(os.environ.get("WRE_TEST_BROKER_URL", DEFAULT_TEST_BROKER_URL))
    # pytest-xdist's workers ("gw0", "gw1", ...) are one session's processes side by side, children of one
    # controller: numbering them from the controller's pid keeps any two of them apart (pids alone could
    # meet modulo 14).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        number = 1 + (os.getppid() + int(worker[2:])) % 14
    else:
        number = 1 + os.getpid() % 14
    return base.set(database=str(number)).render_as_string(hide_password=False)


def redis_broker() -> TestBroker:
    """The test Redis on its DB number, flushed (once per session: the conftest fixtures call this)."""
    url = redis_url()
    redis.Redis.from_url(url).flushdb()
    return TestBroker("redis", url)


def rabbitmq_broker() -> TestBroker:
    """A fresh vhost on the test RabbitMQ (guest has every permission on it); skips where there is none."""
    if shutil.which("rabbitmqctl") is None:
        pytest.skip("RabbitMQ is not installed here (no rabbitmqctl): apt-get install rabbitmq-server")
    vhost = f"wre_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    result = rabbitmqctl("add_vhost", vhost, check=False)
    if result.returncode != 0:
        pytest.skip(f"RabbitMQ does not answer rabbitmqctl: {result.stderr.strip()[:200]}")
    base = make_url(os.environ.get("WRE_TEST_AMQP_URL", DEFAULT_TEST_AMQP_URL))
    user = base.username or "guest"
    rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    # make_url renders the path as the database: the vhost, percent-free by construction.
    url = base.set(database=vhost).render_as_string(hide_password=False)
    return TestBroker("rabbitmq", url, result_backend=redis_url(), vhost=vhost)


def rabbitmqctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args],
        capture_output=True,
        text=True,
        timeout=RABBITMQCTL_TIMEOUT_SECONDS,
        check=check,
    )


def rabbitmq_queues(vhost: str) -> dict[str, int]:
    """Queue name → messages (ready plus unacknowledged) in ``vhost``."""
    output = rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages").stdout
    queues = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            queues[parts[0]] = int(parts[1])
    return queues
