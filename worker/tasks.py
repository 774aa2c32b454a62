"""The Celery tasks of worker/: ``wre.execute_skill`` (one attempt per delivery) and ``wre.evolve_skill``.

A ReAct retry is ``self.retry`` with the whole kwargs plus the ``react`` state, so the next attempt runs on
whichever worker takes it, on the same version and arm. Infrastructure errors (database, broker, an LLM
server's 429/5xx) are retried with backoff through the same mechanism, on the same attempt number: they
never spend a ReAct iteration.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task

from db.memory import PatternMemory
from worker import react
from worker.agents import AgentInfrastructureError
from worker.app import MAINTENANCE_QUEUE, app
from worker.evolution import evolve_skill as evolve
from worker.runner import InvalidRunError, RunRequest, SkillRunner, Version, check_variation
from worker.settings import get_settings

log = logging.getLogger(__name__)

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    kombu.exceptions.OperationalError,
    AgentInfrastructureError,
)
INFRA_RETRY_KWARG = "_infra_retries"
INFRA_MAX_RETRIES = 30
INFRA_BACKOFF_BASE_SECONDS = 0.5
INFRA_BACKOFF_MAX_SECONDS = 30.0


@lru_cache(maxsize=1)
def get_runner() -> SkillRunner:
    """The process's runner: one store (one engine, pooled) shared by every thread of the worker."""
    settings = get_settings()
    return SkillRunner(PatternMemory(settings.database_url, variation_check=check_variation), settings)


def infrastructure_backoff(retries: int) -> float:
    """Exponential backoff for infrastructure retries: 0.5 s, 1 s, 2 s, ... capped at 30 s."""
    return float(min(INFRA_BACKOFF_MAX_SECONDS, INFRA_BACKOFF_BASE_SECONDS * 2**retries))


@app.task(bind=True, name="wre.execute_skill", max_retries=None)
def execute_skill(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one attempt of a skill run; retry (ReAct or infrastructure) or return the run's result.

    Kwargs: ``skill_name``, ``input_context``, optional ``agent``, ``force``, ``assignment_key``; ``react``
    is set by wre itself on a retry. Positional arguments are refused.
    """
    if args:
        raise InvalidRunError(
            f"wre.execute_skill takes keyword arguments only (got {len(args)} positional); "
            "send kwargs={'skill_name': ..., 'input_context': {...}}"
        )
    run_id = str(self.request.id)
    runner = get_runner()
    infra_retries = kwargs.get(INFRA_RETRY_KWARG, 0)
    # wre's own count, but it comes back through the broker like any kwarg: garbage here would only show
    # during an outage (a TypeError instead of a retry, or no retry at all).
    if (
        isinstance(infra_retries, bool)
        or not isinstance(infra_retries, int)
        or not 0 <= infra_retries <= INFRA_MAX_RETRIES
    ):
        raise InvalidRunError(
            f"{INFRA_RETRY_KWARG} must be an integer within 0..{INFRA_MAX_RETRIES}, got {infra_retries!r}"
        )
    state: react.ReactState | None = None
    try:
        request = runner.validate({k: v for k, v in kwargs.items() if k not in ("react", INFRA_RETRY_KWARG)})
        redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
        version, state = _version_and_state(runner, request, kwargs.get("react"), run_id, redelivered)
        outcome = runner.attempt(request, version, state, run_id)
    except INFRASTRUCTURE_ERRORS as error:
        if infra_retries >= INFRA_MAX_RETRIES:
            raise
        log.warning("run %s: infrastructure error, retrying: %s", run_id, error)
        retry_kwargs = {**kwargs, INFRA_RETRY_KWARG: infra_retries + 1}
        if state is not None:
            # The same attempt again, on the version already chosen: a promotion meanwhile must not move it.
            retry_kwargs["react"] = state.to_dict()
        # An agent may know better when to come back (an LLM server's Retry-After).
        retry_after = getattr(error, "retry_after", None)
        countdown = retry_after if isinstance(retry_after, int | float) else infrastructure_backoff(infra_retries)
        raise self.retry(exc=error, countdown=countdown, kwargs=retry_kwargs) from error
    decision = outcome.decision
    if decision.action == "retry" and decision.next_state is not None:
        retry_kwargs = {k: v for k, v in kwargs.items() if k != INFRA_RETRY_KWARG}
        retry_kwargs["react"] = decision.next_state.to_dict()
        raise self.retry(kwargs=retry_kwargs, countdown=runner.settings.react_backoff_seconds)
    if decision.evolve and outcome.recorded:
        evolve_skill_task.apply_async(kwargs={"skill_name": request.skill_name}, queue=MAINTENANCE_QUEUE)
    return runner.result(request, version, run_id, outcome)


def _version_and_state(
    runner: SkillRunner, request: RunRequest, state_data: object, run_id: str, redelivered: bool
) -> tuple[Version, react.ReactState]:
    """The version and ReAct state of this delivery: a new run's, or the ones its kwargs carry."""
    if state_data is None:
        # A redelivered first attempt keeps the version it was recorded with, if it got that far.
        version = (runner.recorded_version(run_id) if redelivered else None) or runner.resolve(request, run_id)
        return version, runner.start_state(request, version)
    try:
        state = react.ReactState.from_dict(state_data)
    except ValueError as error:
        raise InvalidRunError(f"react state is malformed: {error}") from None
    return runner.version_from_state(request, state, run_id), state


@app.task(bind=True, name="wre.evolve_skill", max_retries=INFRA_MAX_RETRIES)
def evolve_skill_task(self: Task, skill_name: str) -> dict[str, Any]:
    """Propose a variation of ``skill_name`` from its recent failures and start its A/B test."""
    runner = get_runner()
    try:
        return evolve(runner.memory, runner.settings, skill_name)
    except INFRASTRUCTURE_ERRORS as error:
        raise self.retry(exc=error, countdown=infrastructure_backoff(self.request.retries)) from error
