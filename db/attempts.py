"""An attempt's write: one definition that both databases run, in one transaction, for a batch of attempts.

``write_attempts`` records each attempt with everything that depends on it, and nothing at all for an
attempt whose (run id, attempt) was recorded before (a redelivery):

1. the outcomes, ``INSERT … ON CONFLICT (run_id, attempt) DO NOTHING RETURNING run_id, attempt``: the keys
   returned are the attempts that are new; only those go on;
2. the trials their first attempts complete, within their deadlines, and the counts of the tests those
   trials count in: the tests locked first by ``SELECT … ORDER BY test_id FOR UPDATE`` (db/trials.py);
3. their counters, summed per name, in one upsert on one shard, in name order (db/counters.py);
4. their learning events.

The transaction makes a batch all or nothing; Postgres runs the statements as the code orders them, so the
lock order is the code's (outcome keys in key order, then tests in id order, then counters in name order), not a
planner's. On SQLite, ``BEGIN IMMEDIATE`` (db/engine.py) serializes the writers instead of any row lock.
Should two writers still meet in opposite orders, Postgres ends one with a deadlock error, and the group
commit writes that batch again one attempt at a time (``one_attempt_may_be_why``).

Each statement is an object built once and executed with new parameters: a statement that is reused keeps its
cache key, so the hot path neither rebuilds nor re-analyses it (that was about half the CPU of recording).

The threads of one process that record at the same moment share that transaction (the group commit, below).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Generic, TypeVar

import sqlalchemy.exc
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

from db.counters import add_counters
from db.models import EVENTS, OUTCOMES, utcnow
from db.trials import complete_trials

# A batch carries at most this many attempts (each at most a bounded context and output): a write of a few MB
# at worst, and a queue that is cut into several batches when a process has more threads than this.
MAX_BATCH_ATTEMPTS = 32
# The longest an attempt queued behind other writes of its process waits for them: longer than any batch can take
# at the store's statement and lock timeouts (db/engine.py) and the pool's checkout timeout. Past it the attempt
# fails as an infrastructure error and is retried (a write that still lands is found by the retry).
QUEUED_WAIT_SECONDS = 120.0
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
        firsts = [attempt.outcome for attempt in new if attempt.routed]
        if firsts:
            # The tests before the counters: a test row held elsewhere then keeps this transaction waiting (until
            # the connection's lock_timeout) without holding a counter shard that other processes' batches need.
            # A trial's deadline is judged when its outcome is written, not when the attempt joined the queue.
            complete_trials(conn, {o["run_id"]: (o["success"], o["pattern_fidelity"]) for o in firsts}, utcnow())
        deltas: Counter[str] = Counter()
        for attempt in new:
            deltas.update(attempt.counters)
        add_counters(conn, deltas)
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


# ---- Group commit --------------------------------------------------------------------------------
# What the threads of one process write at the same moment goes to the store as one transaction.
#
# Why: on a worker of many threads (I/O-bound skills: ``-P threads -c 32``), each attempt's own round trip to
# Postgres cost the worker about a third of its runs per second, bare Celery included (a bare task with one write
# transaction fell from ~190 to ~92-128 runs/s on this project's bench machine). The statement itself is cheap; what
# costs is that every pool thread gives up the GIL and fights to take it back around its round trip, and Celery's
# consumer thread, which feeds the pool, loses that fight. With the writes of concurrent threads grouped, a bare
# task with the same write kept bare Celery's rate (docs/BENCHMARKS.md, *I/O-bound concurrency*).
#
# How (leader and followers, no thread of its own):
#
# - a thread that writes while no write is in flight leads at once: a batch of one, no added wait at low load;
# - threads that arrive while a write is in flight queue; when it ends, the first of them leads and writes
#   everything queued by then (up to ``max_batch``) as one batch;
# - every thread returns only after the batch holding its item committed, with its own result or its own error:
#   the durability of each write is what it was without grouping.
#
# A batch that fails for a reason one item may be (``alone(error)``: bad data, a deadlock) is written again one item
# at a time, so that a bad item fails alone and every other item gets its own answer (the writes must be
# idempotent, as the worker's are: keyed by run and attempt); any other failure (the database is away) is every
# item's answer at once, without a write per item.

log = logging.getLogger(__name__)

Item = TypeVar("Item")
Result = TypeVar("Result")


class _Entry(Generic[Item, Result]):
    """One thread's item, and what the leader that wrote it found."""

    __slots__ = ("item", "woken", "leads", "answered", "result", "error")

    def __init__(self, item: Item) -> None:
        self.item = item
        self.woken = threading.Event()
        self.leads = False
        self.answered = False
        self.result: Result | None = None
        self.error: BaseException | None = None

    def answer(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self.result, self.error, self.answered = result, error, True


def _every_error(_error: Exception) -> bool:
    return True


class GroupCommit(Generic[Item, Result]):
    """Groups the items that threads submit at once into batches for ``write``.

    :param write: writes a batch (a sequence of items) and returns one result per item, in order.
    :param max_batch: the most items one batch carries; the rest wait for the next batch.
    :param alone: whether a batch's error may be one item's doing (then each item is written alone).
    :param wait_seconds: the longest a queued item waits for the writes ahead of it (None: no limit); past it,
        ``sqlalchemy.exc.TimeoutError``, an infrastructure error its caller retries.
    """

    def __init__(
        self,
        write: Callable[[Sequence[Item]], Sequence[Result]],
        max_batch: int,
        alone: Callable[[Exception], bool] = _every_error,
        wait_seconds: float | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self._write = write
        self._max_batch = max_batch
        self._alone = alone
        self._wait_seconds = wait_seconds
        self._lock = threading.Lock()
        self._queued: deque[_Entry[Item, Result]] = deque()
        self._writing = False
        # Observed, for the benches and tests: how many batches, how many items in them.
        self.batches = 0
        self.items = 0

    def submit(self, item: Item) -> Result:
        """Write ``item`` (grouped with whatever other threads submit meanwhile); its result, or its error."""
        entry: _Entry[Item, Result] = _Entry(item)
        with self._lock:
            self._queued.append(entry)
            leads = not self._writing
            self._writing = True
        if not leads:
            try:
                if not entry.woken.wait(self._wait_seconds):
                    raise sqlalchemy.exc.TimeoutError(
                        f"no write of this process ended within {self._wait_seconds:g} s (group commit)"
                    )
            except BaseException:
                # Interrupted or timed out while queued: leave without stranding the queue. An item already in a
                # batch may still be written; the writes are idempotent, so its retry finds it recorded.
                self._withdraw(entry)
                raise
            # Woken either because a batch carried this item, or to lead: it heads the queue.
            leads = entry.leads
        if leads:
            self._lead()
        if not entry.answered:
            raise RuntimeError("the group commit never answered an item")  # a bug of ours, not a lost write
        if entry.error is not None:
            raise entry.error
        return entry.result  # type: ignore[return-value]  # answered without an error: its result

    def _withdraw(self, entry: _Entry[Item, Result]) -> None:
        """Take an interrupted thread's item out of the queue; if it was just handed the lead, pass the lead on."""
        with self._lock:
            if entry not in self._queued:
                return  # already in a batch being written: that batch answers it (nobody reads the answer)
            self._queued.remove(entry)
            if entry.leads:
                self._hand_over()

    def _hand_over(self) -> None:
        """With the lock held, after a batch: the next in line leads, or nobody is writing."""
        if self._queued:
            following = self._queued[0]
            following.leads = True
            following.woken.set()
        else:
            self._writing = False

    def _lead(self) -> None:
        """Write the queue's head (this thread's own item is its first), then hand over to the next in line."""
        with self._lock:
            batch = [self._queued.popleft() for _ in range(min(self._max_batch, len(self._queued)))]
        try:
            self._write_batch(batch)
        except BaseException as error:
            # Interrupted (a process shutting down): whoever waits on this batch must not wait forever.
            for entry in batch:
                if not entry.answered:
                    entry.answer(error=error)
            raise
        finally:
            with self._lock:
                self.batches += 1
                self.items += len(batch)
                self._hand_over()
            for entry in batch:
                entry.woken.set()

    def _write_batch(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            results = self._write([entry.item for entry in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items was written with {len(results)} results")
        except Exception as error:
            if len(batch) > 1 and self._alone(error):
                # The cause's first line only: a database error's text carries the statement and its parameters.
                cause = str(getattr(error, "orig", None) or error).splitlines()[0][:200]
                log.warning("a batch of %d writes failed (%s: %s); writing each alone", len(batch), type(error).__name__, cause)
                for entry in batch:
                    self._write_batch([entry])
                return
            for entry in batch:
                entry.answer(error=error)
            return
        for entry, result in zip(batch, results, strict=True):
            entry.answer(result)
