"""The beat task: ``wre.evaluate_ab_tests`` decides every running A/B test it can, every few seconds."""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from typing import Any

from celery import Task

from db.memory import PatternMemory
from scheduler.evaluation import promotion_memory, run_evaluation_round
from worker.app import app
from worker.retries import INFRASTRUCTURE_ERRORS
from worker.settings import get_settings


@lru_cache(maxsize=1)
def get_memory() -> PatternMemory:
    return promotion_memory(get_settings())


@app.task(bind=True, name="wre.evaluate_ab_tests", max_retries=0, ignore_result=True)
def evaluate_ab_tests(self: Task) -> list[dict[str, Any]]:
    """One evaluation round. An unreachable database skips the round: the next one comes in seconds."""
    try:
        return [asdict(conclusion) for conclusion in run_evaluation_round(get_memory())]
    except INFRASTRUCTURE_ERRORS:
        return []
