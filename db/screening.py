"""What screening reads from the store: recorded inputs to replay, and what screening has spent so far.

Screening replays candidates on the inputs of a skill's recent runs before any of them gets live traffic. It
writes no outcome row and no run counter (replays are not production runs, not A/B trials): one learning event
per screening, :data:`SCREENING_EVENT`, whose details carry the calls it spent, and in the same transaction the
fleet's counter of screening calls, :data:`COUNTER_SCREENING_CALLS`. A skill's reads here are by index
(``skill_name, final, id`` and ``skill_name, attempt, id`` on outcomes; ``skill_name, event_type`` on events);
the fleet's are two counters, so that the budget costs the same at ten skills or ten thousand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from db.base import StoreBase
from db.counters import CounterStore
from db.dashboard import COUNTER_TOTAL_RUNS
from db.models import EVENTS, OUTCOMES

SCREENING_EVENT = "candidates_screened"
# Every skill's screening calls so far, bumped with each screening event (migration 0006 backfilled it).
COUNTER_SCREENING_CALLS = "screening_calls"
# A context too large to store whole was kept as a marked preview (db.base.bounded_context): not replayable.
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
    """One recorded input to replay.

    :param run_id: the run it was recorded with.
    :param input_context: the run's input, as the producer sent it.
    :param failed: the run failed (its final attempt did not pass); else its first attempt passed.
    """

    run_id: str
    input_context: dict[str, Any]
    failed: bool


def replay_inputs(memory: StoreBase, skill_name: str, failures: int, passes: int) -> list[ReplayInput]:
    """The inputs of the skill's most recent failed runs and first-attempt passes, failures first, newest first.

    :param memory: the store.
    :param skill_name: the skill.
    :param failures: at most this many failed runs.
    :param passes: at most this many runs whose first attempt passed.
    """
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


def screening_spent(memory: StoreBase, skill_name: str) -> tuple[int, int]:
    """``(agent calls spent on screening, live runs)`` of the skill so far: what the screening budget compares.

    :param memory: the store.
    :param skill_name: the skill.
    """
    # Only the figure, summed by the database: an event's details also hold every round's scores and the
    # survivor kept for the next screening (a whole skill file).
    events = select(func.coalesce(func.sum(EVENTS.c.details["calls"].as_integer()), 0)).where(
        EVENTS.c.skill_name == skill_name, EVENTS.c.event_type == SCREENING_EVENT
    )
    runs = select(func.count()).where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.attempt == 1)
    with memory.transaction() as conn:
        return int(conn.execute(events).scalar_one()), int(conn.execute(runs).scalar_one())


def fleet_screening_spent(memory: CounterStore) -> tuple[int, int]:
    """``(agent calls spent on screening, live runs)`` of every skill so far, read from two counters.

    :param memory: the store.
    """
    figures = memory.get_counters([COUNTER_SCREENING_CALLS, COUNTER_TOTAL_RUNS])
    return figures[COUNTER_SCREENING_CALLS], figures[COUNTER_TOTAL_RUNS]


def last_screening(memory: StoreBase, skill_name: str) -> dict[str, Any] | None:
    """The details of the skill's latest screening event, or None if it was never screened.

    :param memory: the store.
    :param skill_name: the skill.
    """
    query = (
        select(EVENTS.c.details)
        .where(EVENTS.c.skill_name == skill_name, EVENTS.c.event_type == SCREENING_EVENT)
        .order_by(EVENTS.c.event_id.desc())
        .limit(1)
    )
    with memory.transaction() as conn:
        details = conn.execute(query).scalar()
    return details if isinstance(details, dict) else None


def latest_screenings(memory: StoreBase, limit: int = 200) -> list[dict[str, Any]]:
    """The latest screening events of every skill, oldest first: skill, time, description and details.

    :param memory: the store.
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
