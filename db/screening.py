"""What screening reads from the store: recorded inputs to replay, and what screening has spent so far.

Screening replays candidates on the inputs of a skill's recent runs before any of them gets live traffic. It
writes no outcome row and no run counter (replays are not production runs, not A/B trials): one learning event
per screening, :data:`SCREENING_EVENT`, whose details carry the calls it spent and whose transaction settles
them (:func:`screening_deltas`). Reads here are by index (``skill_name, final, id`` and ``skill_name, attempt,
id`` on outcomes; ``skill_name, event_type`` on events) or of counters (runs finished and screening calls, of the
skill and of the fleet), so that the budget costs the same at ten skills or ten thousand.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, select

from db.abtests import EVOLUTION_LEASE_SECONDS
from db.counters import COUNTER_FLEET_RUNS, add_counters, checked_deltas, read_counters, skill_counter_name
from db.models import COUNTERS, EVENTS, OUTCOMES
from db.store import Store

SCREENING_EVENT = "candidates_screened"
# Every skill's settled screening calls (with a screening's event, or without one when it ends by an error); each
# skill's own beside it, ``skill.screening_calls:NAME``. Migration 0006 backfilled both from the events.
COUNTER_SCREENING_CALLS = "screening_calls"
# A screening reserves its calls before it starts, in a counter of their own named by the second it reserved
# (Unix time): settling subtracts them again. The budget counts a reservation until it is settled or as long
# as the evolution's claim holds: a worker killed during a screening settles nothing, and its reservation must
# not shrink the budget for good. No evolve task outlives this (worker/tasks.py: its hard time limit); the
# workers' clocks are taken to agree within seconds.
RESERVED_CALLS = "screening_calls.reserved@"
RESERVATION_SECONDS = EVOLUTION_LEASE_SECONDS
# The advisory lock that makes reading the fleet's budget and reserving from it one step (the evaluators' locks
# use 0x77726501 and a skill's hash as a pair of keys; this single 64-bit key cannot meet those).
RESERVATION_LOCK = 0x7772650200000001
# Before contexts were stored whole, a large one was kept as a marked preview: such old rows are not replayable.
TRUNCATED_MARKER = "_truncated"


def screened(details: dict[str, Any]) -> tuple[int, int]:
    """A screening event's rounds and the distinct candidates it replayed over all of them.

    :param details: the event's details (an event written before rounds existed counts as one round).
    """
    rounds = details.get("rounds") or [details]
    ids = {item.get("variation_id") for done in rounds for item in done.get("candidates", [])}
    return len(rounds), len(ids)


@dataclass(frozen=True)
class ReplayInput:
    """One recorded input to replay, with its run; ``failed``: the run's final attempt did not pass (else its
    first attempt passed)."""

    run_id: str
    input_context: dict[str, Any]
    failed: bool


def replay_inputs(memory: Store, skill_name: str, failures: int, passes: int) -> list[ReplayInput]:
    """The inputs of the skill's most recent failed runs (at most ``failures``) and first-attempt passes (at most
    ``passes``), failures first, newest first."""
    failed = (
        select(OUTCOMES.c.run_id, OUTCOMES.c.input_context)
        .where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.final, ~OUTCOMES.c.success)
        .order_by(OUTCOMES.c.id.desc())
        .limit(failures)
    )
    passed = (
        select(OUTCOMES.c.run_id, OUTCOMES.c.input_context)
        .where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.attempt == 1, OUTCOMES.c.success)
        .order_by(OUTCOMES.c.id.desc())
        .limit(passes)
    )
    found: list[ReplayInput] = []
    with memory.transaction() as conn:
        for query, is_failure, limit in ((failed, True, failures), (passed, False, passes)):
            if limit <= 0:
                continue
            for row in conn.execute(query):
                context = row.input_context
                if isinstance(context, dict) and not context.get(TRUNCATED_MARKER):
                    found.append(ReplayInput(row.run_id, context, is_failure))
    return found


def screening_deltas(skill_name: str, calls: int, reservation: tuple[str, int]) -> dict[str, int]:
    """What settles a screening that made ``calls`` calls: they join the fleet's and the skill's settled calls,
    and ``reservation`` (its counter and the calls it reserved, from :func:`reserve_fleet_calls`) is given back."""
    name, reserved = reservation
    skill_calls = skill_counter_name("screening_calls", skill_name)
    return {COUNTER_SCREENING_CALLS: calls, skill_calls: calls, name: -reserved}


def screening_spent(memory: Store, skill_name: str) -> tuple[int, int]:
    """``(agent calls spent on screening, finished live runs)`` of the skill so far: what its budget compares."""
    # Finished runs, as the fleet's: both counters are bumped by the statement that records a final attempt.
    spent, runs = skill_counter_name("screening_calls", skill_name), skill_counter_name("runs", skill_name)
    with memory.transaction() as conn:
        figures = read_counters(conn, [spent, runs])
    return figures[spent], figures[runs]


def fleet_screening_spent(memory: Store) -> tuple[int, int]:
    """``(agent calls spent on screening, finished live runs)`` of every skill so far: the settled calls and the
    reservations that still count.
    """
    with memory.transaction() as conn:
        return _fleet_spent(conn)[:2]


def _fleet_spent(conn: Connection) -> tuple[int, int, set[str]]:
    """:func:`fleet_screening_spent`, and the reservations too old to count."""
    figures = read_counters(conn, [COUNTER_SCREENING_CALLS, COUNTER_FLEET_RUNS])
    reserved_names = COUNTERS.c.name.startswith(RESERVED_CALLS, autoescape=True)
    reservations = conn.execute(select(COUNTERS.c.name, COUNTERS.c.value).where(reserved_names)).all()
    oldest = time.time() - RESERVATION_SECONDS
    expired = {name for name, _ in reservations if int(name.removeprefix(RESERVED_CALLS)) <= oldest}
    reserved = sum(value for name, value in reservations if name not in expired)
    return figures[COUNTER_SCREENING_CALLS] + reserved, figures[COUNTER_FLEET_RUNS], expired


def reserve_fleet_calls(memory: Store, reserve: Callable[[int, int], int]) -> tuple[str, int]:
    """Reserve screening calls from the fleet's budget: ``reserve(spent, runs)`` with no other reservation between
    its reading and its writing; returns the reservation (its counter, the calls) for :func:`screening_deltas`.

    Screenings of several skills run at once; without this, each saw the same remaining budget, and together
    they spent up to one screening each beyond it. Reservations too old to count are deleted here.

    :param reserve: given the fleet's screening calls and finished runs, the calls to reserve (0: none).
    """
    with memory.transaction() as conn:
        if memory.is_postgres:  # SQLite's transactions take the write lock up front (db/engine.py)
            conn.execute(select(func.pg_advisory_xact_lock(RESERVATION_LOCK)))
        spent, runs, expired = _fleet_spent(conn)
        conn.execute(delete(COUNTERS).where(COUNTERS.c.name.in_(expired)))
        name = f"{RESERVED_CALLS}{math.ceil(time.time())}"  # rounded up: it counts its whole time
        calls = reserve(spent, runs)
        add_counters(conn, checked_deltas({name: calls}))
    return name, calls


def last_screening(memory: Store, skill_name: str) -> dict[str, Any] | None:
    """The details of the skill's latest screening event, or None if it was never screened."""
    query = (
        select(EVENTS.c.details)
        .where(EVENTS.c.skill_name == skill_name, EVENTS.c.event_type == SCREENING_EVENT)
        .order_by(EVENTS.c.event_id.desc())
        .limit(1)
    )
    with memory.transaction() as conn:
        details = conn.execute(query).scalar()
    return details if isinstance(details, dict) else None


def latest_screenings(memory: Store, limit: int = 200) -> list[dict[str, Any]]:
    """The latest screening events of every skill, oldest first: skill, time, description and details.

    :param limit: at most this many.
    """
    query = (
        select(EVENTS.c.skill_name, EVENTS.c.created_at, EVENTS.c.variation_id, EVENTS.c.details)
        .where(EVENTS.c.event_type == SCREENING_EVENT)
        .order_by(EVENTS.c.event_id.desc())
        .limit(limit)
    )
    with memory.transaction() as conn:
        return [dict(row._mapping) for row in reversed(list(conn.execute(query)))]
