"""The beat tasks: ``wre.evaluate_ab_tests`` decides every running A/B test it can, every few seconds;
``wre.sweep_evolution_outbox`` enqueues the evolutions that failed runs stored and nobody enqueued yet."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

from db.memory import PatternMemory
from scheduler.evaluation import promotion_memory, run_evaluation_round

# INFRASTRUCTURE_ERRORS: the retry module's list, offered by the app (this floor uses worker's app and settings
# only). Not retried but skipped here: the next round comes in seconds.
from worker.app import INFRASTRUCTURE_ERRORS, MAINTENANCE_QUEUE, app
from worker.settings import get_settings


@lru_cache(maxsize=1)
def get_memory() -> PatternMemory:
    return promotion_memory(get_settings())


@app.task(name="wre.evaluate_ab_tests", max_retries=0, ignore_result=True)
def evaluate_ab_tests() -> list[dict[str, Any]]:
    """One evaluation round; an unreachable database skips it."""
    try:
        return [asdict(conclusion) for conclusion in run_evaluation_round(get_memory())]
    except INFRASTRUCTURE_ERRORS:
        return []


@app.task(name="wre.sweep_evolution_outbox", max_retries=0, ignore_result=True)
def sweep_evolution_outbox() -> list[str]:
    """Enqueue ``wre.evolve_skill`` for every skill with a pending trigger, then mark the triggers done.

    A publish that fails leaves its triggers pending (the transaction rolls back); an unreachable database
    skips the round. Either way the next round, seconds later, tries again.
    """

    def publish(skill_name: str) -> None:
        app.send_task("wre.evolve_skill", kwargs={"skill_name": skill_name}, queue=MAINTENANCE_QUEUE)

    try:
        return get_memory().sweep_evolution_outbox(publish)
    except INFRASTRUCTURE_ERRORS:
        return []
