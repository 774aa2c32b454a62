"""The tasks wre is compared against, run by the same worker process as wre's own tasks.

A benchmark's worker imports this module with Celery's ``--include`` option, given through the environment
(``CELERY_WORKER_INCLUDE=bench.tasks``), so the tasks are registered on wre's own app (``worker.app.app``,
configured by ``worker.app.celery_config(settings)``): routing, JSON, late acks, prefetch, task events (off by default) and the
Redis result backend are exactly wre's.

When the worker's environment has ``WRE_BENCH_COUNT_DB=1`` (bench/throughput.py sets it), importing the module
also counts, inside the worker, what every task does with the database (statements, reads and writes,
autocommit statements, commits, rollbacks, pool checkouts); ``bench.db_counts`` hands the counts back. The
counts are per process: exact with the threads pool (one process), a single child's share with prefork. The
other benchmarks leave it off: engine-level listeners make SQLAlchemy join event dispatchers on every
connection, a cost wre would pay and bare Celery's tasks would not.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Column, Engine, MetaData, Table, Text, event
from sqlalchemy.pool import Pool

from bench.entrypoints import LLM_LATENCY_SECONDS
from db.memory import PatternMemory
from worker.app import app
from worker.settings import get_settings

NOOP_TASK = "bench.noop"
REFERENCE_TASK = "bench.insert_and_count"
SLEEP_TASK = "bench.sleep_100ms"
DB_COUNTS_TASK = "bench.db_counts"
REFERENCE_COUNTER = "bench_reference"

# The reference task's table: one row per task, like an outcome row without wre's columns.
BENCH_METADATA = MetaData()
BENCH_ROWS = Table(
    "bench_rows",
    BENCH_METADATA,
    Column("id", BigInteger, primary_key=True),
    Column("run_id", Text, nullable=False),
    Column("payload", Text, nullable=False),
)

_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()


def _count(what: str) -> None:
    with _counts_lock:
        _counts[what] += 1


WRITE_VERBS = ("INSERT", "UPDATE", "DELETE", "WITH")


def _on_statement(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    _count("statements")
    _count("writes" if statement.lstrip()[:6].upper().startswith(WRITE_VERBS) else "reads")
    # A statement outside BEGIN/COMMIT is a transaction of its own.
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        _count("autocommit_statements")


COUNT_DB_ENV = "WRE_BENCH_COUNT_DB"

if os.environ.get(COUNT_DB_ENV) == "1":
    # Class-level listeners: every engine and pool of the process, whoever created it.
    event.listen(Engine, "before_cursor_execute", _on_statement)
    event.listen(Engine, "commit", lambda *_: _count("commits"))
    event.listen(Engine, "rollback", lambda *_: _count("rollbacks"))
    # Each checkout of an engine with pool_pre_ping pings the server first (one more round trip).
    event.listen(Pool, "checkout", lambda *_: _count("checkouts"))
    event.listen(Pool, "connect", lambda *_: _count("connects"))


@lru_cache(maxsize=1)
def _store() -> PatternMemory:
    # The same process-wide engine (and pool settings) wre's runner uses for this URL.
    return PatternMemory(get_settings().database_url)


@app.task(name=NOOP_TASK)  # type: ignore[untyped-decorator]  # Celery is untyped
def noop(**_kwargs: Any) -> None:
    """(a) A bare Celery task: takes wre's kwargs, does nothing (its result is still stored, as wre's is)."""


@app.task(name=REFERENCE_TASK, bind=True)  # type: ignore[untyped-decorator]  # Celery is untyped
def insert_and_count(self: Any, **_kwargs: Any) -> None:
    """(c) The reference: one transaction that inserts one row and bumps one (sharded) counter."""
    store = _store()
    with store.transaction() as conn:
        conn.execute(BENCH_ROWS.insert().values(run_id=str(self.request.id), payload="{}"))
        store.add_to_counters({REFERENCE_COUNTER: 1}, conn)


@app.task(name=SLEEP_TASK)  # type: ignore[untyped-decorator]  # Celery is untyped
def sleep_100ms(**_kwargs: Any) -> None:
    """A bare Celery task that waits like the benchmarks' 100 ms agent (no thread of its own, no store)."""
    time.sleep(LLM_LATENCY_SECONDS)


@app.task(name=DB_COUNTS_TASK)  # type: ignore[untyped-decorator]  # Celery is untyped
def db_counts(reset: bool = False) -> dict[str, int]:
    """The database calls this worker process made since the last reset (and its pid)."""
    with _counts_lock:
        found = dict(_counts)
        if reset:
            _counts.clear()
    found["pid"] = os.getpid()
    return found
