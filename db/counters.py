"""Telemetry counters that many workers bump at once without queueing on one row.

A counter is NUM_SHARDS rows; a writer upserts ``value = value + delta`` on a random shard, a reader sums
them. Upserts are atomic in both Postgres and SQLite, so the sum is exact under any concurrency.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping

from sqlalchemy import Connection, func, select

from db.base import StoreBase, require_text
from db.models import COUNTERS

NUM_SHARDS = 16
COUNTER_TABLE = COUNTERS


class CounterStore(StoreBase):
    def increment_counter(self, name: str, delta: int = 1) -> None:
        """Add ``delta`` (an int, may be negative) to counter ``name``."""
        self.add_to_counters({name: delta})

    def add_to_counters(self, deltas: Mapping[str, int], conn: Connection | None = None) -> None:
        """Add several deltas in one statement (one round trip), inside ``conn``'s transaction when given."""
        rows = []
        for name, delta in deltas.items():
            require_text(name, "counter name")
            if isinstance(delta, bool) or not isinstance(delta, int):
                raise ValueError(f"counter delta must be an integer, got {delta!r}")
            if delta:
                rows.append({"name": name, "shard": random.randrange(NUM_SHARDS), "value": delta})
        if not rows:
            return
        # Rows go as parameters, not .values(rows): SQLAlchemy cannot cache a multi-row VALUES statement and
        # would compile it on every run (the worker's hot path); this one compiles once, and psycopg sends
        # several rows in one pipelined round trip.
        insert = self.upsert(COUNTER_TABLE)
        statement = insert.on_conflict_do_update(
            index_elements=["name", "shard"], set_={"value": COUNTER_TABLE.c.value + insert.excluded.value}
        )
        if conn is not None:
            conn.execute(statement, rows)
            return
        with self.transaction() as own:
            own.execute(statement, rows)

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
