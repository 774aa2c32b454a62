"""Producers: enqueue a skill run from any Python process that has wre installed.

Producers without wre send by name: ``app.send_task("wre.execute_skill", queue="skills", kwargs={...})`` —
kwargs only, JSON, and the queue named (``WRE_QUEUE_PREFIX`` + ``skills`` unless configured otherwise).
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from db.engine import get_engine
from db.memory import PatternMemory
from db.run_requests import record_request
from worker.app import DATABASE_URL_KEY
from worker.app import EXECUTE_TASK as EXECUTE_TASK
from worker.app import app as default_app
from worker.runner import SkillRunner
from worker.settings import get_settings


def run_request(
    skill_name: str,
    input_context: dict[str, Any],
    agent: str | None = None,
    assignment_key: str | None = None,
    *,
    force: bool = False,
    memory: PatternMemory | None = None,
    database_url: str | None = None,
) -> dict[str, Any]:
    """The task kwargs of one run, checked as the worker checks them (skill registered, agent known, context a
    JSON object under the size limit that satisfies the skill's ``input:`` schema).

    :param memory: the store to check against; else one on ``database_url``, else on ``WRE_DATABASE_URL``.
    :raises worker.runner.InvalidRunError: (a ValueError) naming what is wrong.
    """
    kwargs: dict[str, Any] = {"skill_name": skill_name, "input_context": input_context}
    if agent is not None:
        kwargs["agent"] = agent
    if assignment_key is not None:
        kwargs["assignment_key"] = assignment_key
    if force:
        kwargs["force"] = True
    runner = SkillRunner(memory, get_settings()) if memory is not None else _checker(database_url)
    runner.validate(kwargs)
    return kwargs


@lru_cache(maxsize=8)
def _checker(database_url: str | None) -> SkillRunner:
    """One runner per store, so that its short cache of skills and production serves a burst of enqueues."""
    settings = get_settings()
    return SkillRunner(PatternMemory(database_url or settings.store_url), settings)


def enqueue_skill(
    skill_name: str,
    input_context: dict[str, Any],
    agent: str | None = None,
    assignment_key: str | None = None,
    *,
    force: bool = False,
    app: Celery | None = None,
    memory: PatternMemory | None = None,
    validate: bool = True,
) -> AsyncResult:  # type: ignore[type-arg]
    """Queue one run of ``skill_name`` on ``input_context``; returns the run's AsyncResult (its id is the run id).

    The request is checked first (:func:`run_request`): bad input raises
    :class:`worker.runner.InvalidRunError` (a ValueError) here and nothing is queued.

    :param input_context: a JSON object (the worker refuses anything else, and anything over the size limit).
    :param agent: the agent to use; the skill's default when None.
    :param assignment_key: what the A/B arm is derived from (e.g. a user id, so one user always sees one
        arm); the run id when None.
    :param force: run the production version even while an A/B test is running.
    :param app: the Celery app to send through (wre's, configured from the environment, by default).
    :param memory: the store the check reads (else the app's store, ``WRE_DATABASE_URL`` for wre's app).
    :param validate: False skips the check (a producer without access to the store, or one that checked
        already; the worker checks anyway).
    """
    celery = app or default_app
    if validate:
        kwargs = run_request(
            skill_name, input_context, agent, assignment_key, force=force, memory=memory,
            database_url=celery.conf.get(DATABASE_URL_KEY),
        )
    else:
        kwargs = {"skill_name": skill_name, "input_context": input_context, "agent": agent,
                  "assignment_key": assignment_key, "force": force}
        kwargs = {key: value for key, value in kwargs.items() if value not in (None, False)}
    run_id = str(uuid.uuid4())
    # Recorded before it is sent: a message the broker loses, or a publish that fails, leaves a record that
    # the run sweep (worker/sweep.py) finds and re-sends.
    record_request(get_engine(celery.conf[DATABASE_URL_KEY]), run_id, skill_name, kwargs)
    # The queue this app's settings name (WRE_QUEUE_PREFIX, WRE_SKILLS_QUEUE), explicitly: without it a
    # message would go to Celery's default queue "celery", which no wre worker consumes.
    queue = celery.conf.task_routes[EXECUTE_TASK]["queue"]
    return celery.send_task(EXECUTE_TASK, kwargs=kwargs, queue=queue, task_id=run_id)
