"""Attempts and what was learned from them: outcomes and learning events, written and read.

``record_attempt`` is the worker's hot path: the outcome, its counters, its A/B trial and its learning event in
ONE transaction (db/attempts.py), all or nothing, and nothing at all when the (run id, attempt) was seen
before. The attempts that a process's threads record at the same moment share that transaction
(db/attempts.py).
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Connection, func, select, update

from db.attempts import (
    MAX_BATCH_ATTEMPTS,
    QUEUED_WAIT_SECONDS,
    Attempt,
    GroupCommit,
    one_attempt_may_be_why,
    write_attempts,
)
from db.counters import add_counters, checked_deltas, skill_counter_deltas
from db.models import EVENTS, OUTCOMES, utcnow
from db.records import LearningEventRecord, OutcomeRecord
from db.store import Store, require_count, require_text

MAX_STORED_OUTPUT_CHARS = 8_000
# An input context is stored whole (screening replays it), up to the most WRE_MAX_CONTEXT_BYTES allows: a worker
# refuses a larger one before any attempt; a store caller that passes one is refused here.
MAX_STORED_CONTEXT_BYTES = 64 * 1024 * 1024
# One sweep hands over at most this many triggers; a backlog drains over the next sweeps.
OUTBOX_SWEEP_LIMIT = 1000
OUTCOME_FIELDS = tuple(field.name for field in fields(OutcomeRecord))
EVENT_COLUMNS = tuple(field.name for field in fields(LearningEventRecord) if field.name != "event_id")
# Built once; each event's values are bound as parameters.
EVENT_INSERT = EVENTS.insert().returning(EVENTS.c.event_id)
# Guards the creation of a store's group commit (one per process and store).
_GROUP_COMMITS_LOCK = threading.Lock()


class Outcomes:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writer: tuple[int, GroupCommit[Attempt, bool]] | None = None

    def record_attempt(
        self,
        outcome: OutcomeRecord,
        counters: Mapping[str, int] | None = None,
        learning_event: LearningEventRecord | None = None,
    ) -> bool:
        """Store one attempt with everything that depends on it; False (and nothing written) if seen before.

        A routed run's trials were written to the ledger when it was assigned; its first attempt completes them
        (within their deadlines) and adds to the running counts of the tests they count in (none without a
        trial: assign first, as the worker does). Names, deltas and figures are checked here, in the recording
        thread, so that a bad one fails its own attempt and never a batch.
        """
        _validate_outcome(outcome)
        # Shallow: asdict's deep copy of every nested value cost more than the rest of building the row, and
        # each value is only read (and serialized) from here on.
        row = {name: getattr(outcome, name) for name in OUTCOME_FIELDS}
        row["output"] = bounded_output(outcome.output)
        row["input_context"] = bounded_context(outcome.input_context)
        row["error"] = storable_text(outcome.error)
        row["failed_at_step"] = storable_text(outcome.failed_at_step)
        row["step_results"] = storable_json(outcome.step_results)
        row["token_usage"] = storable_json(outcome.token_usage)
        row["result"] = storable_json(outcome.result)
        row["created_at"] = utcnow()
        deltas = {
            **(counters or {}),
            **skill_counter_deltas(outcome.skill_name, outcome.attempt, outcome.final, outcome.success),
        }
        event = None
        if learning_event is not None:
            for figure in (learning_event.fidelity_before, learning_event.fidelity_after):
                if figure is not None and not math.isfinite(figure):
                    raise ValueError(f"a learning event's fidelity must be a finite number, got {figure}")
            event = _event_values(learning_event)
        return self.group_commit.submit(Attempt(row, checked_deltas(deltas), event))

    @property
    def group_commit(self) -> GroupCommit[Attempt, bool]:
        """This process's group commit of attempts (a forked worker child makes its own: a lock held in the
        parent at the fork would be held in the child forever)."""
        pid = os.getpid()
        with _GROUP_COMMITS_LOCK:
            if self._writer is None or self._writer[0] != pid:
                writer = GroupCommit(
                    self._write, MAX_BATCH_ATTEMPTS, alone=one_attempt_may_be_why, wait_seconds=QUEUED_WAIT_SECONDS
                )
                self._writer = (pid, writer)
            return self._writer[1]

    def _write(self, attempts: Sequence[Attempt]) -> list[bool]:
        with self.store.transaction() as conn:
            return write_attempts(conn, attempts)

    def store_outcome(self, **fields: Any) -> bool:
        """The seed's name for :meth:`record_attempt` without extras; True if stored, False if a duplicate."""
        return self.record_attempt(OutcomeRecord(**fields))

    def record_learning_event(
        self,
        skill_name: str,
        event_type: str,
        variation_id: str | None = None,
        fidelity_before: float | None = None,
        fidelity_after: float | None = None,
        description: str = "",
        details: dict[str, Any] | None = None,
        counters: Mapping[str, int] | None = None,
    ) -> int:
        """Append a learning event; returns its id.

        :param counters: deltas added in the event's transaction (a screening's calls: the budget reads the
            counter, and must never count an event twice or miss one).
        """
        event = LearningEventRecord(
            skill_name=require_text(skill_name, "skill name"),
            event_type=require_text(event_type, "event type", max_length=64),
            variation_id=variation_id,
            fidelity_before=fidelity_before,
            fidelity_after=fidelity_after,
            description=description,
            details=details or {},
        )
        deltas = checked_deltas(counters or {})
        with self.store.transaction() as conn:
            event_id = insert_event(conn, event)
            add_counters(conn, deltas)
            return event_id

    def get_evolution_history(self, skill_name: str, limit: int = 500) -> list[LearningEventRecord]:
        """The skill's learning events, oldest first."""
        query = (
            select(EVENTS)
            .where(EVENTS.c.skill_name == skill_name)
            .order_by(EVENTS.c.created_at.desc(), EVENTS.c.event_id.desc())
            .limit(limit)
        )
        with self.store.transaction() as conn:
            rows = list(conn.execute(query))
        return [LearningEventRecord(**dict(row._mapping)) for row in reversed(rows)]

    def finished_runs(self) -> int:
        """How many runs have ended (their final attempt is recorded)."""
        with self.store.transaction() as conn:
            return int(conn.execute(select(func.count()).where(OUTCOMES.c.final)).scalar_one())

    def latest_event_id(self) -> int:
        """The id of the newest learning event (0 when there is none): where a feed starts."""
        with self.store.transaction() as conn:
            return int(conn.execute(select(func.coalesce(func.max(EVENTS.c.event_id), 0))).scalar_one())

    def learning_events_since(self, event_id: int = 0, limit: int = 200) -> list[LearningEventRecord]:
        """Every skill's learning events after ``event_id``, oldest first (a feed to follow)."""
        query = select(EVENTS).where(EVENTS.c.event_id > event_id).order_by(EVENTS.c.event_id).limit(limit)
        with self.store.transaction() as conn:
            return [LearningEventRecord(**dict(row._mapping)) for row in conn.execute(query)]

    def recent_failures(self, skill_name: str, limit: int = 20) -> list[dict[str, Any]]:
        """The last failed runs' final attempts (newest first): what an evolver learns from."""
        query = (
            select(
                OUTCOMES.c.run_id,
                OUTCOMES.c.variation_id,
                OUTCOMES.c.pattern_fidelity,
                OUTCOMES.c.failed_at_step,
                OUTCOMES.c.error,
                OUTCOMES.c.output,
            )
            .where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.final, ~OUTCOMES.c.success)
            .order_by(OUTCOMES.c.id.desc())
            .limit(limit)
        )
        with self.store.transaction() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]

    def sweep_evolution_outbox(self, publish: Callable[[str], None], limit: int = OUTBOX_SWEEP_LIMIT) -> list[str]:
        """Hand every skill with a pending evolution trigger to ``publish``, then mark its triggers done.

        The triggers are locked (``SKIP LOCKED``: two sweeps never hand over the same ones) and cleared in the
        transaction that read them, after ``publish`` returned: a publish that raises, or a crash before the
        commit, leaves them pending for the next sweep. A trigger handed over twice is harmless (evolution is
        claimed in the database). Returns the skills handed over.
        """
        pending = (
            select(OUTCOMES.c.id, OUTCOMES.c.skill_name)
            .where(OUTCOMES.c.evolve_pending)
            .order_by(OUTCOMES.c.id)
            .limit(limit)
        )
        if self.store.is_postgres:
            pending = pending.with_for_update(skip_locked=True)
        with self.store.transaction() as conn:
            rows = list(conn.execute(pending))
            skills = list(dict.fromkeys(str(row.skill_name) for row in rows))
            for skill_name in skills:
                publish(skill_name)
            if rows:
                ids = [int(row.id) for row in rows]
                conn.execute(update(OUTCOMES).where(OUTCOMES.c.id.in_(ids)).values(evolve_pending=False))
        return skills

    def pending_evolutions(self) -> int:
        """How many evolution triggers wait for the sweep."""
        with self.store.transaction() as conn:
            return int(conn.execute(select(func.count()).where(OUTCOMES.c.evolve_pending)).scalar_one())

    def run_outcomes(self, run_id: str) -> list[dict[str, Any]]:
        """Every recorded attempt of one run, in order."""
        query = select(OUTCOMES).where(OUTCOMES.c.run_id == run_id).order_by(OUTCOMES.c.attempt)
        with self.store.transaction() as conn:
            return [dict(row._mapping) for row in conn.execute(query)]


def _validate_outcome(outcome: OutcomeRecord) -> None:
    require_text(outcome.run_id, "run id", max_length=64)
    require_count(outcome.attempt, "attempt", minimum=1)
    require_text(outcome.skill_name, "skill name")
    require_text(outcome.variation_id, "variation id", max_length=64)
    if outcome.request_digest is not None:
        require_text(outcome.request_digest, "request digest", max_length=64)
    if not math.isfinite(outcome.execution_time_ms) or outcome.execution_time_ms < 0:
        raise ValueError(f"execution_time_ms must be a finite duration, got {outcome.execution_time_ms}")
    if not 0.0 <= outcome.pattern_fidelity <= 1.0:
        raise ValueError(f"pattern_fidelity must be within 0..1, got {outcome.pattern_fidelity}")
    if outcome.arm not in (None, "control", "treatment"):
        raise ValueError(f"arm must be 'control' or 'treatment', got {outcome.arm!r}")


def insert_event(conn: Connection, event: LearningEventRecord) -> int:
    """Append ``event`` inside ``conn``'s transaction; returns its id."""
    return int(conn.execute(EVENT_INSERT, _event_values(event)).scalar_one())


def _event_values(event: LearningEventRecord) -> dict[str, Any]:
    values = {name: getattr(event, name) for name in EVENT_COLUMNS}
    values["created_at"] = event.created_at or utcnow()
    return values


# Postgres text and JSONB cannot hold NUL; an agent's output may contain one. It is stored as U+FFFD.
NUL, NUL_ESCAPED, REPLACEMENT = "\x00", "\\u0000", "\ufffd"
# Nor can they hold a lone surrogate (UTF-8 cannot encode it; an agent's text may still carry one): U+FFFD too.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str | None) -> str | None:
    return None if text is None else UNSTORABLE.sub(REPLACEMENT, text)


def storable_json(value: Any) -> Any:
    """``value`` with every NUL and lone surrogate in its strings replaced, so that JSONB accepts it."""
    # ensure_ascii=False leaves a lone surrogate as it is (to be found), NUL is escaped either way.
    text = json.dumps(value, default=str, ensure_ascii=False)
    if NUL_ESCAPED not in text and SURROGATE.search(text) is None:
        return value
    return json.loads(SURROGATE.sub(REPLACEMENT, text).replace(NUL_ESCAPED, "\\ufffd"))


def bounded_output(output: str | None) -> str | None:
    output = storable_text(output)
    if output is None or len(output) <= MAX_STORED_OUTPUT_CHARS:
        return output
    return output[:MAX_STORED_OUTPUT_CHARS] + f"... [{len(output) - MAX_STORED_OUTPUT_CHARS} chars trimmed]"


def bounded_context(context: dict[str, Any]) -> dict[str, Any]:
    """The context as stored: whole, within MAX_STORED_CONTEXT_BYTES (ValueError beyond it)."""
    size = len(json.dumps(context, default=str).encode())
    if size > MAX_STORED_CONTEXT_BYTES:
        raise ValueError(f"an input context of {size:,} bytes is over the store's limit of {MAX_STORED_CONTEXT_BYTES:,}")
    return storable_json(context)  # type: ignore[no-any-return]
