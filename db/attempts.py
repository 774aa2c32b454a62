"""An attempt's write: one definition that both databases run, in one transaction, for a batch of attempts.

``write_attempts`` records each attempt with everything that depends on it, and nothing at all for an
attempt whose (run id, attempt) was recorded before (a redelivery):

1. the outcomes, ``INSERT … ON CONFLICT (run_id, attempt) DO NOTHING RETURNING run_id, attempt``: the keys
   returned are the attempts that are new; only those go on;
2. their counters, summed per name, in one upsert on one shard, in name order (db/counters.py);
3. the trials their first attempts complete, within their deadlines, and the counts of the tests those
   trials count in: the tests locked first by ``SELECT … ORDER BY test_id FOR UPDATE`` (db/trials.py);
4. their learning events.

The transaction makes a batch all or nothing; Postgres runs the statements as the code orders them, so the
lock order is the code's (outcome keys in key order, counters in name order, tests in id order), not a
planner's. On SQLite, ``BEGIN IMMEDIATE`` (db/engine.py) serializes the writers instead of any row lock.
Should two writers still meet in opposite orders, Postgres ends one with a deadlock error, and the group
commit writes that batch again one attempt at a time (``one_attempt_may_be_why``).

Each statement is an object built once and executed with new parameters: a statement that is reused keeps its
cache key, so the hot path neither rebuilds nor re-analyses it (that was about half the CPU of recording).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import sqlalchemy.exc
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from db.counters import add_counters
from db.models import EVENTS, OUTCOMES, utcnow
from db.trials import complete_trials

# A batch carries at most this many attempts (each at most a bounded context and output): a write of a few MB
# at worst, and a queue that is cut into several batches when a process has more threads than this.
MAX_BATCH_ATTEMPTS = 32
# Deadlock detected, serialization failure: the batch lost a race that a smaller write may not.
RETRY_ALONE_SQLSTATES = frozenset({"40P01", "40001"})
CONNECTION_ERRORS = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
)
EVENT_INSERT = EVENTS.insert()


@dataclass(frozen=True)
class Attempt:
    """One attempt as the write takes it.

    :param outcome: the outcome row's values, keyed by column.
    :param counters: the counters the attempt adds to (name to a checked delta).
    :param event: the learning event's values, keyed by column, or None.
    """

    outcome: dict[str, Any]
    counters: dict[str, int]
    event: dict[str, Any] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.outcome["run_id"], self.outcome["attempt"])

    @property
    def routed(self) -> bool:
        """The first attempt of a run routed through a test: it completes the run's pending trials."""
        outcome = self.outcome
        return outcome["test_id"] is not None and outcome["arm"] is not None and outcome["attempt"] == 1


def write_attempts(conn: Connection, attempts: Sequence[Attempt]) -> list[bool]:
    """Record ``attempts`` inside ``conn``'s transaction; True for each attempt that was new, False for one
    recorded before, or a second copy of one in this batch (two deliveries at one moment count once)."""
    first: dict[tuple[str, int], int] = {}
    for index, attempt in enumerate(attempts):
        first.setdefault(attempt.key, index)
    rows = [attempts[first[key]].outcome for key in sorted(first)]
    inserted = {(run_id, number) for run_id, number in conn.execute(_outcome_insert(conn.dialect.name), rows)}
    new = [attempts[index] for key, index in first.items() if key in inserted]
    if new:
        deltas: Counter[str] = Counter()
        for attempt in new:
            deltas.update(attempt.counters)
        add_counters(conn, deltas)
        firsts = [attempt.outcome for attempt in new if attempt.routed]
        if firsts:
            # A trial's deadline is judged when its outcome is written, not when the attempt joined the queue.
            complete_trials(conn, {o["run_id"]: (o["success"], o["pattern_fidelity"]) for o in firsts}, utcnow())
        events = [attempt.event for attempt in new if attempt.event is not None]
        if events:
            conn.execute(EVENT_INSERT, events)
    return [attempt.key in inserted and first[attempt.key] == index for index, attempt in enumerate(attempts)]


@lru_cache(maxsize=2)
def _outcome_insert(dialect: str) -> Any:
    insert = postgresql.insert(OUTCOMES) if dialect == "postgresql" else sqlite.insert(OUTCOMES)
    return insert.on_conflict_do_nothing(index_elements=["run_id", "attempt"]).returning(
        OUTCOMES.c.run_id, OUTCOMES.c.attempt
    )


def one_attempt_may_be_why(error: Exception) -> bool:
    """Whether a batch's error may be one attempt's doing, so that writing each alone helps: bad data, a deadlock
    or serialization failure (a smaller write may pass). Not when the database or the pool is away: every
    attempt of the batch gets that error at once (the worker retries each as an infrastructure error)."""
    if isinstance(error, sqlalchemy.exc.DBAPIError):
        if getattr(error.orig, "sqlstate", None) in RETRY_ALONE_SQLSTATES:
            return True
        return not (error.connection_invalidated or isinstance(error, CONNECTION_ERRORS))
    return not isinstance(error, CONNECTION_ERRORS)
