"""The producer's records of runs on real Postgres: the sweep deletes those closed longer ago than the
retention, oldest first and a bounded number per round; open runs are never deleted."""

from __future__ import annotations

from contextlib import closing
from datetime import timedelta

from sqlalchemy import select, update

from db.memory import PatternMemory
from db.models import RunRequest, utcnow
from db.run_requests import prune_closed, record_request, requests
from worker.app import create_app
from worker.settings import Settings
from worker.sweep import sweep


def _record(memory: PatternMemory, run_id: str, closed_days_ago: float | None) -> None:
    record_request(memory.engine, run_id, "s", {"skill_name": "s", "input_context": {"text": "x" * 1000}})
    if closed_days_ago is not None:
        with memory.engine.begin() as conn:
            conn.execute(
                update(requests)
                .where(requests.c.run_id == run_id)
                .values(closed_at=utcnow() - timedelta(days=closed_days_ago))
            )


def _left(memory: PatternMemory) -> set[str]:
    with memory.engine.connect() as conn:
        return set(conn.execute(select(RunRequest.run_id)).scalars())


def test_only_runs_closed_before_the_cutoff_are_deleted_oldest_first(memory: PatternMemory) -> None:
    for run_id, closed in [("open", None), ("recent", 1), ("old", 8), ("older", 9), ("oldest", 30)]:
        _record(memory, run_id, closed)
    cutoff = utcnow() - timedelta(days=7)
    assert prune_closed(memory.engine, cutoff, limit=2) == 2
    assert _left(memory) == {"open", "recent", "old"}
    assert prune_closed(memory.engine, cutoff, limit=2) == 1
    assert prune_closed(memory.engine, cutoff, limit=2) == 0
    assert _left(memory) == {"open", "recent"}


def test_the_sweep_prunes_at_its_retention_and_not_when_it_is_off(memory: PatternMemory, database_url: str) -> None:
    _record(memory, "open", None)
    _record(memory, "day-old", 1)
    _record(memory, "week-old", 8)
    # No run is overdue (the open one was just sent), so the sweep asks the broker nothing.
    kept = Settings(database_url=database_url, run_request_retention_seconds=0)
    with closing(create_app(kept)) as app:
        assert sweep(app, kept)["pruned"] == 0
    assert _left(memory) == {"open", "day-old", "week-old"}
    daily = Settings(database_url=database_url, run_request_retention_seconds=24 * 3600 / 2)
    with closing(create_app(daily)) as app:
        assert sweep(app, daily)["pruned"] == 2
    assert _left(memory) == {"open"}
