"""The Celery tasks of worker/: ``wre.execute_skill`` (one attempt per delivery) and ``wre.evolve_skill``.

Thin drivers: the message is checked at the boundary (worker/messages.py), the steps run in worker/runner.py,
and every retry — ReAct, infrastructure, a retry that cannot be published — is worker/retries.py's.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

from celery import Task

from db.memory import PatternMemory
from worker import retries
from worker.app import MAINTENANCE_QUEUE, app
from worker.evolution import evolve_skill as evolve
from worker.messages import MessageError, check_run_id
from worker.runner import InvalidRunError, SkillRunner
from worker.screening import EVOLVE_SOFT_TIME_LIMIT, EVOLVE_TIME_LIMIT
from worker.settings import get_settings
from worker.skills import check_variation

log = logging.getLogger(__name__)

# What the worker's log line and the task-succeeded event show of a run's result: its id, skill, agent and
# verdict. Celery renders the return value with saferepr on every task; rendering the whole result (its
# step results and ReAct metadata) cost more CPU than scoring the attempt. The stored result is whole.
RESULT_REPR_CHARS = 200
# A ReAct retry runs at once: its feedback is ready, and waiting would only hold the message unacked longer.
REACT_BACKOFF_SECONDS = 0.0


@lru_cache(maxsize=1)
def get_runner() -> SkillRunner:
    """The process's runner: one store (one engine, pooled) shared by every thread of the worker."""
    settings = get_settings()
    return SkillRunner(PatternMemory(settings.store_url, variation_check=check_variation), settings)


@app.task(bind=True, name="wre.execute_skill", max_retries=None, resultrepr_maxsize=RESULT_REPR_CHARS)
def execute_skill(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one attempt of a skill run; the retry layer retries it (ReAct or infrastructure) or returns it.

    Kwargs: ``skill_name``, ``input_context``, optional ``agent``, ``force``, ``assignment_key``. Positional
    arguments are refused; so is anything else (retry bookkeeping travels in wre's headers).
    """
    if args:
        raise InvalidRunError(
            f"wre.execute_skill takes keyword arguments only (got {len(args)} positional); "
            "send kwargs={'skill_name': ..., 'input_context': {...}}"
        )
    try:
        # Checked before any agent runs: an id that cannot be stored would otherwise fail after the work.
        run_id = check_run_id(self.request.id)
        bookkeeping = retries.parse_bookkeeping(self.request.headers)
    except MessageError as error:
        raise InvalidRunError(str(error)) from None
    # A redelivery, or a retry after an outage, may find its attempt recorded already: read the store first.
    reread = bool((self.request.delivery_info or {}).get("redelivered")) or bookkeeping.infra_retries > 0

    def steps() -> dict[str, Any] | retries.NextAttempt:
        runner = get_runner()
        request = runner.validate(kwargs)
        version, state, recorded = runner.resume(request, run_id, bookkeeping.attempt, read_store=reread)
        if recorded is not None:
            outcome = runner.recorded_attempt(state, recorded)
        else:
            outcome = runner.attempt(request, version, state, run_id)
        decision = outcome.decision
        if decision.action == "retry" and decision.next_state is not None:
            return retries.NextAttempt(decision.next_state.attempt, REACT_BACKOFF_SECONDS)
        if decision.evolve and outcome.recorded:
            enqueue_evolution(request.skill_name)
        return runner.result(request, version, run_id, outcome)

    return retries.around(self, bookkeeping, steps)


def enqueue_evolution(skill_name: str) -> None:
    """Ask for an evolution now. Best effort: the trigger is stored with the final attempt (the outbox), and
    the beat's sweep (``wre.sweep_evolution_outbox``) enqueues whatever this could not."""
    try:
        evolve_skill_task.apply_async(kwargs={"skill_name": skill_name}, queue=MAINTENANCE_QUEUE)
    except Exception as error:  # the outbox has it; the run's result must not fail for it
        log.warning("evolution of %s not enqueued now (%s); the outbox sweep will", skill_name, error)


# Time limits sized from a screening's (worker/screening.py); a prefork worker kills the task at the hard one.
@app.task(name="wre.evolve_skill", soft_time_limit=EVOLVE_SOFT_TIME_LIMIT, time_limit=EVOLVE_TIME_LIMIT,
          **retries.EVOLVE_RETRY_OPTIONS)
def evolve_skill_task(skill_name: str) -> dict[str, Any]:
    """Propose a variation of ``skill_name`` from its recent failures and start its A/B test."""
    runner = get_runner()
    return evolve(runner.memory, runner.settings, skill_name)
