"""The run sweep: re-send runs that wre's producer enqueued and that never finished.

Beat runs ``wre.resend_overdue_runs`` every ``WRE_RUN_SWEEP_SECONDS`` on the maintenance queue. One round:
close the open runs that have a final outcome (one UPDATE), then for each overdue run (db/run_requests.py)
either close it (its result is stored: bad input is refused without an outcome row), give up on it (after
``MAX_RESENDS``; ``wre runs stuck`` still lists it), or send its message again under the same run id.
A re-sent run that was not lost after all records nothing twice: outcomes are keyed by (run id, attempt).
Last, it deletes up to ``MAX_PRUNED_PER_ROUND`` records of runs closed more than
``WRE_RUN_REQUEST_RETENTION_SECONDS`` ago.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Celery, Task
from celery.result import AsyncResult

from db.engine import get_engine
from db.models import utcnow
from db.run_requests import OverdueRun, close, close_finished, mark_resent, overdue_runs, prune_closed
from worker.app import EXECUTE_TASK, SWEEP_TASK, app
from worker.settings import Settings, get_settings

log = logging.getLogger(__name__)

# Runs re-sent per round at most: a broker that lost thousands is better served over a few rounds.
MAX_RESENDS_PER_ROUND = 500
# Re-sends of one run before the sweep gives up on it (`wre runs stuck` still lists it).
MAX_RESENDS = 3
# Closed runs' records deleted per round at most: a backlog (retention just switched on) goes over many
# rounds of short deletes rather than one long one.
MAX_PRUNED_PER_ROUND = 10_000


def sweep(celery: Celery, settings: Settings) -> dict[str, Any]:
    """One round; returns what it did (the task's result, and the test's)."""
    engine = get_engine(settings.store_url)
    closed = close_finished(engine)
    idle_since = utcnow() - timedelta(seconds=settings.effective_run_overdue_seconds)
    settled: list[str] = []
    resent: list[str] = []
    given_up: list[str] = []
    for run in overdue_runs(engine, idle_since, limit=MAX_RESENDS_PER_ROUND):
        if _has_result(celery, run.run_id):
            settled.append(run.run_id)
        elif run.resends >= MAX_RESENDS:
            given_up.append(run.run_id)
        else:
            _resend(celery, run)
            mark_resent(engine, run.run_id)
            resent.append(run.run_id)
    close(engine, settled)
    if resent or given_up:
        log.warning("run sweep: re-sent %d overdue runs %s; %d gave up", len(resent), resent[:20], len(given_up))
    pruned = 0
    if settings.run_request_retention_seconds > 0:
        closed_before = utcnow() - timedelta(seconds=settings.run_request_retention_seconds)
        pruned = prune_closed(engine, closed_before, limit=MAX_PRUNED_PER_ROUND)
    return {"closed": closed + len(settled), "resent": resent, "given_up": len(given_up), "pruned": pruned}


def _has_result(celery: Celery, run_id: str) -> bool:
    if celery.conf.result_backend in (None, "rpc://"):
        return False  # no shared result store to ask (rpc results go to their producer only)
    return bool(AsyncResult(run_id, app=celery).ready())


def _resend(celery: Celery, run: OverdueRun) -> None:
    queue = celery.conf.task_routes[EXECUTE_TASK]["queue"]
    celery.send_task(EXECUTE_TASK, kwargs=run.kwargs, task_id=run.run_id, queue=queue)


@app.task(bind=True, name=SWEEP_TASK)
def resend_overdue_runs(self: Task) -> dict[str, Any]:
    return sweep(self.app, get_settings())
