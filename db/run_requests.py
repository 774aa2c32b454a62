"""The producer's record of enqueued runs, and what the sweep asks of it.

A broker can lose a message (kombu's Redis transport pops a message, then records it as unacked: a worker
SIGKILLed between the two loses it), and a publish can fail after the producer decided to run. The producer
writes one row per run before it publishes; the worker writes nothing here (a run's progress is its outcome
rows). A run is *overdue* when it is open (no final outcome seen by the sweep yet) and nothing has happened to
it for a while: neither a send nor an outcome row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, and_, case, delete, exists, func, insert, select, update

from db.models import OUTCOMES, RunRequest, utcnow

requests = cast(Table, RunRequest.__table__)
outcomes = OUTCOMES


@dataclass(frozen=True)
class OverdueRun:
    """An open run with nothing happening to it since ``last_activity``."""

    run_id: str
    skill_name: str
    kwargs: dict[str, Any]
    enqueued_at: datetime
    last_activity: datetime
    attempts_recorded: int
    resends: int


# Built once and executed with each run's values: the statement keeps its compiled form in SQLAlchemy's cache.
REQUEST_INSERT = insert(requests)


def record_request(engine: Engine, run_id: str, skill_name: str, kwargs: dict[str, Any]) -> None:
    """The producer's one write: the run as it is about to be sent.

    One statement, so on Postgres it runs in autocommit: one round trip before the publish instead of three
    (BEGIN, INSERT, COMMIT). SQLite keeps its transaction.
    """
    now = utcnow()
    values = {
        "run_id": run_id,
        "skill_name": skill_name,
        "kwargs": kwargs,
        "enqueued_at": now,
        "last_sent_at": now,
        "resends": 0,
    }
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(REQUEST_INSERT, values)
        return
    with engine.begin() as conn:
        conn.execute(REQUEST_INSERT, values)


def close_finished(engine: Engine) -> int:
    """Close every open run that has a final outcome; returns how many (one statement, for the sweep)."""
    finished = exists().where(and_(outcomes.c.run_id == requests.c.run_id, outcomes.c.final.is_(True)))
    with engine.begin() as conn:
        result = conn.execute(
            update(requests).where(requests.c.closed_at.is_(None), finished).values(closed_at=utcnow())
        )
    return int(result.rowcount or 0)


def close(engine: Engine, run_ids: Iterable[str]) -> None:
    """Close runs the sweep found settled another way (a stored result: bad input records no outcome)."""
    ids = list(run_ids)
    if ids:
        with engine.begin() as conn:
            conn.execute(update(requests).where(requests.c.run_id.in_(ids)).values(closed_at=utcnow()))


def prune_closed(engine: Engine, closed_before: datetime, limit: int) -> int:
    """Delete at most ``limit`` runs closed before ``closed_before``, oldest first; returns how many.

    A closed run is one the sweep will never look at again, and its row holds the run's whole input context:
    kept for ever, the table would grow by every run's input. Bounded per call so that one sweep round stays
    short however much has piled up (the index on ``closed_at`` finds the oldest).
    """
    oldest = (
        select(requests.c.run_id)
        .where(requests.c.closed_at.is_not(None), requests.c.closed_at < closed_before)
        .order_by(requests.c.closed_at)
        .limit(limit)
    )
    with engine.begin() as conn:
        result = conn.execute(delete(requests).where(requests.c.run_id.in_(oldest.scalar_subquery())))
    return int(result.rowcount or 0)


def overdue_runs(engine: Engine, idle_since: datetime, limit: int = 1000) -> list[OverdueRun]:
    """Open runs with no final outcome, last sent and last recorded before ``idle_since``; oldest first."""
    last_outcome = func.max(outcomes.c.created_at)
    finals = func.coalesce(func.sum(case((outcomes.c.final.is_(True), 1), else_=0)), 0)
    query = (
        select(
            requests.c.run_id,
            requests.c.skill_name,
            requests.c.kwargs,
            requests.c.enqueued_at,
            requests.c.last_sent_at,
            requests.c.resends,
            func.count(outcomes.c.id).label("attempts"),
            last_outcome.label("last_outcome"),
        )
        .select_from(requests.outerjoin(outcomes, outcomes.c.run_id == requests.c.run_id))
        .where(requests.c.closed_at.is_(None), requests.c.last_sent_at < idle_since)
        .group_by(requests.c.run_id)
        .having(finals == 0)
        .having(func.coalesce(last_outcome, requests.c.last_sent_at) < idle_since)
        .order_by(requests.c.last_sent_at)
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        OverdueRun(
            run_id=row.run_id,
            skill_name=row.skill_name,
            kwargs=dict(row.kwargs),
            enqueued_at=row.enqueued_at,
            last_activity=max(row.last_sent_at, row.last_outcome or row.last_sent_at),
            attempts_recorded=int(row.attempts),
            resends=int(row.resends),
        )
        for row in rows
    ]


def mark_resent(engine: Engine, run_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(requests)
            .where(requests.c.run_id == run_id)
            .values(last_sent_at=utcnow(), resends=requests.c.resends + 1)
        )
