"""Telemetry counters that many workers bump at once without queueing on one row, and their names.

A counter is NUM_SHARDS rows; a writer upserts ``value = value + delta`` on a random shard, a reader sums
them. Upserts are atomic in both Postgres and SQLite, so the sum is exact under any concurrency.

One write draws one shard for all of its counters. An attempt bumps five or so counters; with a shard drawn
per counter, two concurrent attempts met on some row lock whenever any one of their draws coincided (most of
the time), and waited for each other's commit. With one draw they meet only when they drew the same shard: 1
in NUM_SHARDS (24 threads recording at once: 5 sessions waiting on a lock on average, against 6 to 11). The
rows of one write are upserted in name order, so two writes on one shard take its rows in the same order.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, String, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from db.models import COUNTERS
from db.store import Store, require_text

NUM_SHARDS = 16
# The seed's counters (the runner bumps them with each attempt) and wre's own, as the dashboard reads them.
COUNTER_TOTAL_EXECUTIONS = "total_executions"
COUNTER_TOTAL_RUNS = "total_runs"
COUNTER_RETRIES = "react_retry_count"
COUNTER_RUNS_RETRIED = "runs_retried"
COUNTER_EVOLUTIONS = "evolutions_triggered"
DASHBOARD_COUNTERS = (
    COUNTER_TOTAL_EXECUTIONS,
    COUNTER_TOTAL_RUNS,
    COUNTER_RETRIES,
    COUNTER_RUNS_RETRIED,
    COUNTER_EVOLUTIONS,
)
# Per-skill run figures, kept as counters by the write that records each attempt, so that reading them
# (an exporter scrape, the report) costs the same at 10 or 10 million outcomes.
SKILL_COUNTER_FIELDS = ("attempts", "runs", "failed_runs", "runs_retried", "retries")
MAX_COUNTER_NAME_CHARS = 128  # telemetry_counters.name
# Every skill's finished runs, bumped by the same write (the screening budget a fleet pays reads it; the
# dashboard's ``total_runs`` is the seed's counter, bumped by the runner and by whoever calls increment_counter).
COUNTER_FLEET_RUNS = "fleet.runs"


def skill_counter_name(field: str, skill_name: str) -> str:
    """The counter of one skill's figure ``field``; a name too long for the column is keyed by its digest."""
    name = f"skill.{field}:{skill_name}"
    if len(name) <= MAX_COUNTER_NAME_CHARS:
        return name
    return f"skill.{field}:#{hashlib.sha256(skill_name.encode()).hexdigest()}"


def skill_counter_deltas(skill_name: str, attempt: int, final: bool, success: bool) -> dict[str, int]:
    """What one recorded attempt adds to its skill's counters, and to the fleet's finished runs."""
    deltas = {"attempts": 1}
    if final:
        deltas.update(runs=1, failed_runs=int(not success), runs_retried=int(attempt > 1), retries=attempt - 1)
    named = {skill_counter_name(field, skill_name): delta for field, delta in deltas.items() if delta}
    if final:
        named[COUNTER_FLEET_RUNS] = 1
    return named


def checked_deltas(deltas: Mapping[str, int]) -> dict[str, int]:
    """``deltas`` without the zero ones; a bad name or delta refused (in the caller's thread, before any write)."""
    for name, delta in deltas.items():
        require_text(name, "counter name")
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"counter delta must be an integer, got {delta!r}")
    return {name: delta for name, delta in deltas.items() if delta}


def add_counters(conn: Connection, deltas: Mapping[str, int]) -> None:
    """Add checked ``deltas`` inside ``conn``'s transaction: one statement, on one random shard, in name order."""
    names = sorted(name for name, delta in deltas.items() if delta)
    if not names:
        return
    shard = random.randrange(NUM_SHARDS)
    rows = [{"name": name, "shard": shard, "value": deltas[name]} for name in names]
    if conn.dialect.name == "postgresql":
        conn.execute(_upsert(True), {f"{key}s": [row[key] for row in rows] for key in ("name", "shard", "value")})
    else:
        conn.execute(_upsert(False), rows)


def read_counters(conn: Connection, names: Iterable[str]) -> dict[str, int]:
    """Current values of ``names`` (0 for a counter never bumped), read in one query."""
    wanted = list(names)
    query = (
        select(COUNTERS.c.name, func.coalesce(func.sum(COUNTERS.c.value), 0))
        .where(COUNTERS.c.name.in_(wanted))
        .group_by(COUNTERS.c.name)
    )
    found = {name: int(total) for name, total in conn.execute(query)}
    return {name: found.get(name, 0) for name in wanted}


class Counters:
    def __init__(self, store: Store) -> None:
        self.store = store

    def increment_counter(self, name: str, delta: int = 1) -> int:
        """Add ``delta`` (an int, may be negative) to counter ``name``; returns the counter's new value."""
        with self.store.transaction() as conn:
            add_counters(conn, checked_deltas({name: delta}))
            return read_counters(conn, [name])[name]

    def add_to_counters(self, deltas: Mapping[str, int], conn: Connection | None = None) -> None:
        """Add several deltas in one statement (one round trip), inside ``conn``'s transaction when given."""
        checked = checked_deltas(deltas)
        if conn is not None:
            add_counters(conn, checked)
        elif checked:
            with self.store.transaction() as own:
                add_counters(own, checked)

    def get_counter(self, name: str) -> int:
        return self.get_counters([name])[name]

    def get_counters(self, names: Iterable[str]) -> dict[str, int]:
        """Current values of ``names`` (0 for a counter never bumped), read in one query."""
        with self.store.transaction() as conn:
            return read_counters(conn, names)


@lru_cache(maxsize=2)
def _upsert(postgres: bool) -> Any:
    """``value = value + delta`` per (name, shard) row, as one statement object, built once (SQLAlchemy cannot
    cache a multi-row VALUES and would compile it on every write: the worker's hot path).

    Postgres: ``INSERT … SELECT … FROM unnest(:names, :shards, :values)``, so any number of rows is one statement
    and one round trip (psycopg's executemany would pipeline, and its pipeline wait spins holding the GIL);
    SQLite, in process, takes the rows as an executemany of the plain upsert.
    """
    if postgres:
        rows = (
            func.unnest(
                bindparam("names", type_=postgresql.ARRAY(String)),
                bindparam("shards", type_=postgresql.ARRAY(Integer)),
                bindparam("values", type_=postgresql.ARRAY(BigInteger)),
            )
            .table_valued("name", "shard", "value")
            .render_derived(with_types=False)
        )
        values = select(rows.c.name, rows.c.shard, rows.c.value).order_by(rows.c.name)
        insert: Any = postgresql.insert(COUNTERS).from_select(["name", "shard", "value"], values)
    else:
        insert = sqlite.insert(COUNTERS)
    return insert.on_conflict_do_update(
        index_elements=["name", "shard"], set_={"value": COUNTERS.c.value + insert.excluded.value}
    )
