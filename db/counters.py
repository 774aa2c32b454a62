"""Telemetry counters that many workers bump at once without queueing on one row.

A counter is NUM_SHARDS rows; a writer upserts ``value = value + delta`` on a random shard, a reader sums
them. Upserts are atomic in both Postgres and SQLite, so the sum is exact under any concurrency.

One write draws one shard for all of its counters. An attempt bumps five or so counters; with a shard drawn
per counter, two concurrent attempts met on some row lock whenever any one of their draws coincided (most of
the time), and waited for each other's commit. With one draw they meet only when they drew the same shard: 1
in NUM_SHARDS (24 threads recording at once: 5 sessions waiting on a lock on average, against 6 to 11).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from sqlalchemy import BigInteger, Connection, Integer, String, bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite

from db.base import StoreBase, require_text
from db.models import COUNTERS

NUM_SHARDS = 16
COUNTER_TABLE = COUNTERS
# Per-skill run figures, kept as counters by the statement that records each attempt, so that reading them
# (an exporter scrape, the report) costs the same at 10 or 10 million outcomes.
SKILL_COUNTER_FIELDS = ("attempts", "runs", "failed_runs", "runs_retried", "retries")
MAX_COUNTER_NAME_CHARS = 128  # telemetry_counters.name
# Every skill's finished runs, bumped by the same statement (the screening budget a fleet pays reads it; the
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


class CounterStore(StoreBase):
    def increment_counter(self, name: str, delta: int = 1) -> int:
        """Add ``delta`` (an int, may be negative) to counter ``name``; returns the counter's new value."""
        with self.transaction() as conn:
            self.add_to_counters({name: delta}, conn)
            total = conn.execute(
                select(func.coalesce(func.sum(COUNTER_TABLE.c.value), 0)).where(COUNTER_TABLE.c.name == name)
            ).scalar_one()
        return int(total)

    def add_to_counters(self, deltas: Mapping[str, int], conn: Connection | None = None) -> None:
        """Add several deltas in one statement (one round trip), inside ``conn``'s transaction when given."""
        rows = counter_rows(deltas)
        if not rows:
            return
        # One statement built once (SQLAlchemy cannot cache a multi-row VALUES and would compile it on every
        # run: the worker's hot path). On Postgres the rows travel as three arrays, one round trip; SQLite,
        # in process, takes them as an executemany.
        statement = _upsert_statement(postgres=self.is_postgres)
        parameters: Any = counter_arrays(rows) if self.is_postgres else rows
        if conn is not None:
            conn.execute(statement, parameters)
            return
        with self.transaction() as own:
            own.execute(statement, parameters)

    def get_counter(self, name: str) -> int:
        return self.get_counters([name])[name]

    def get_counters(self, names: Iterable[str]) -> dict[str, int]:
        """Current values of ``names`` (0 for a counter never bumped), read in one query."""
        wanted = list(names)
        query = (
            select(COUNTER_TABLE.c.name, func.coalesce(func.sum(COUNTER_TABLE.c.value), 0))
            .where(COUNTER_TABLE.c.name.in_(wanted))
            .group_by(COUNTER_TABLE.c.name)
        )
        with self.transaction() as conn:
            found = {name: int(total) for name, total in conn.execute(query)}
        return {name: found.get(name, 0) for name in wanted}


def counter_rows(deltas: Mapping[str, int]) -> list[dict[str, Any]]:
    """The rows that add ``deltas`` (all on one random shard), zero deltas left out; bad names or deltas refused."""
    rows = []
    shard = random.randrange(NUM_SHARDS)
    for name, delta in deltas.items():
        require_text(name, "counter name")
        if isinstance(delta, bool) or not isinstance(delta, int):
            raise ValueError(f"counter delta must be an integer, got {delta!r}")
        if delta:
            rows.append({"name": name, "shard": shard, "value": delta})
    return rows


def counter_arrays(rows: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The parameters of the Postgres upsert: the rows as three arrays."""
    return {f"{key}s": [row[key] for row in rows] for key in ("name", "shard", "value")}


@lru_cache(maxsize=2)
def _upsert_statement(postgres: bool) -> Any:
    return counter_upsert(postgres)


def counter_upsert(postgres: bool) -> Any:
    """``value = value + delta`` per (name, shard) row, as one statement object (build it once, reuse it).

    Postgres: ``INSERT … SELECT … FROM unnest(:names, :shards, :values)``, so any number of rows is one statement
    and one round trip (psycopg's executemany would pipeline, and its pipeline wait spins holding the GIL);
    SQLite: the plain upsert of one row.
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
        values = select(rows.c.name, rows.c.shard, rows.c.value)
        insert: Any = postgresql.insert(COUNTER_TABLE).from_select(["name", "shard", "value"], values)
    else:
        insert = sqlite.insert(COUNTER_TABLE)
    return insert.on_conflict_do_update(
        index_elements=["name", "shard"], set_={"value": COUNTER_TABLE.c.value + insert.excluded.value}
    )
