"""A worker shared by the bad-input and security tests: a private Redis, the session's database, and an LLM API
key in its environment that must never show anywhere (test_bad_input.py::test_the_secret_is_nowhere)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from celery import Celery

from tests.processes import Process, broker_app, release_results, service_env, start_worker
from tests.reliability.servers import PrivateRedis

# Generated, so that no file in the repository holds it (and the secret scan has nothing to allow).
SECRET = f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex}"


@pytest.fixture(scope="package")
def serving_broker() -> Iterator[PrivateRedis]:
    server = PrivateRedis(appendonly=False).start()
    yield server
    server.close()


@pytest.fixture(scope="package")
def serving_app(database_url: str, serving_broker: PrivateRedis) -> Iterator[Celery]:
    app = broker_app(database_url, serving_broker.url())
    yield app
    release_results(app)


@pytest.fixture(scope="package")
def serving_worker(
    serving_app: Celery,
    database_url: str,
    serving_broker: PrivateRedis,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    """A prefork worker (as production runs it) with WRE_LLM_API_KEY set."""
    env = service_env(database_url, serving_broker.url(), WRE_LLM_API_KEY=SECRET)
    process = start_worker(
        serving_app, env, tmp_path_factory.mktemp("serving"), concurrency=2, pool="prefork"
    )
    yield process
    process.stop()
