"""Shared fixtures: a throwaway Postgres database per test session, a private Redis DB number, and a private
RabbitMQ vhost for the tests that run on both brokers.

Settings come from WRE_TEST_DATABASE_URL (an admin URL of a Postgres server; the fixture creates and drops
its own database there), WRE_TEST_BROKER_URL (a Redis URL; the DB number is replaced by a free one) and
WRE_TEST_AMQP_URL (a RabbitMQ URL; the vhost is replaced by a fresh one).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator

import pytest

# The test process registers skills whose python entrypoints live in tests/fixtures.
os.environ.setdefault("WRE_PYTHON_SKILL_MODULES", "skills,tests.fixtures")
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from db.engine import normalize_url
from db.memory import PatternMemory
from db.migrate import upgrade
from db.models import Base
from tests.brokers import KINDS, TestBroker, rabbitmq_broker, redis_broker

DEFAULT_TEST_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def admin_database_url() -> str:
    return normalize_url(os.environ.get("WRE_TEST_DATABASE_URL", DEFAULT_TEST_DATABASE_URL))


def create_database(prefix: str = "wre_test") -> str:
    """Create an empty throwaway database; returns its URL."""
    admin = admin_database_url()
    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    name = make_url(url).database
    engine = create_engine(admin_database_url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A migrated throwaway Postgres database for the whole session."""
    url = create_database()
    upgrade(url)
    yield url
    drop_database(url)


@pytest.fixture
def memory(database_url: str) -> Iterator[PatternMemory]:
    """A PatternMemory on empty tables (truncated before each test)."""
    from scheduler.evaluation import PromotionPolicy
    from worker.settings import Settings

    store = PatternMemory(database_url, policy=PromotionPolicy(Settings(database_url=database_url)))
    truncate_all(store)
    yield store


def truncate_all(store: PatternMemory, attempts: int = 5) -> None:
    """Empty every table. A worker left over from the previous test (an evolve task still running) may
    hold locks in another order; Postgres then breaks the deadlock by failing one side: retry ours."""
    tables = ", ".join(table.name for table in Base.metadata.sorted_tables)
    for attempt in range(attempts):
        try:
            with store.transaction() as conn:
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            return
        except OperationalError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


@pytest.fixture(scope="session")
def broker_url() -> str:
    """A Redis URL on a DB number of its own (flushed), so parallel sessions do not share queues: the broker
    of the tests whose behaviour does not depend on it."""
    return redis_broker().url


@pytest.fixture(scope="session", params=KINDS)
def any_broker(request: pytest.FixtureRequest) -> Iterator[TestBroker]:
    """Redis, then RabbitMQ: for the tests whose behaviour depends on the broker (delivery, redelivery, kills,
    malformed messages, restarts, retries). Session-scoped, so each broker is set up once."""
    if request.param == "redis":
        # The session's Redis DB, flushed once (by broker_url) and shared with the single-broker tests.
        broker = TestBroker("redis", request.getfixturevalue("broker_url"))
    else:
        broker = rabbitmq_broker()
    yield broker
    broker.close()
