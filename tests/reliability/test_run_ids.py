"""Run ids and retry bookkeeping against a real prefork worker: a reused id, a forged attempt, an id too long."""

from __future__ import annotations

import json
import uuid

import pytest
from celery import Celery

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import Process
from tests.reliability.checks import row_counts
from worker.registry import register_skill_text
from worker.retries import ATTEMPT_HEADER, INFRA_RETRIES_HEADER

RESULT_TIMEOUT = 60


@pytest.fixture
def skills(memory: PatternMemory) -> PatternMemory:
    register_skill_text(memory, python_skill("echo", "echo"))
    register_skill_text(memory, python_skill("long", "long_answer", threshold=0.0))
    register_skill_text(memory, python_skill("fails", "always_fails"))
    return memory


def _send(app: Celery, run_id: str, **kwargs: object) -> object:
    result = app.AsyncResult(run_id)
    result.forget()  # a run id sent again must not find the first send's result
    return app.send_task("wre.execute_skill", kwargs=kwargs, task_id=run_id).get(timeout=RESULT_TIMEOUT)


def test_a_reused_run_id(serving_app: Celery, serving_worker: Process, skills: PatternMemory) -> None:
    app = serving_app
    run_id = f"reuse-{uuid.uuid4().hex}"
    first = _send(app, run_id, skill_name="long", input_context={"chars": 9_000})
    assert isinstance(first, dict) and len(first["result"]["answer"]) == 9_000
    # The same id and the same arguments: the same result, exactly (not the 8,000-character preview).
    again = _send(app, run_id, skill_name="long", input_context={"chars": 9_000})
    assert json.dumps(again, sort_keys=True) == json.dumps(first, sort_keys=True)
    # The same id, other arguments: refused with a clear error, whichever argument differs.
    for kwargs in (
        {"skill_name": "echo", "input_context": {"chars": 9_000}},
        {"skill_name": "long", "input_context": {"chars": 10}},
    ):
        with pytest.raises(Exception, match="already recorded with other arguments"):
            _send(app, run_id, **kwargs)
    assert [row["attempt"] for row in skills.run_outcomes(run_id)] == [1]


def test_forged_bookkeeping_is_refused(serving_app: Celery, serving_worker: Process, skills: PatternMemory) -> None:
    app = serving_app
    before = row_counts(skills)
    # Attempt 2 of a run that never had an attempt 1 (it would skip an A/B test, or start an evolution).
    forged = app.send_task(
        "wre.execute_skill", kwargs={"skill_name": "fails", "input_context": {}}, headers={ATTEMPT_HEADER: 3}
    )
    with pytest.raises(Exception, match="forged"):
        forged.get(timeout=RESULT_TIMEOUT)
    garbage = app.send_task(
        "wre.execute_skill", kwargs={"skill_name": "echo", "input_context": {}}, headers={ATTEMPT_HEADER: "2"}
    )
    with pytest.raises(Exception, match=f"{ATTEMPT_HEADER} must be"):
        garbage.get(timeout=RESULT_TIMEOUT)
    too_long = app.send_task("wre.execute_skill", kwargs={"skill_name": "echo", "input_context": {}}, task_id="r" * 65)
    with pytest.raises(Exception, match="at most 64 characters"):
        too_long.get(timeout=RESULT_TIMEOUT)
    assert row_counts(skills) == before  # nothing written by any of them
    # A producer's retry count only spends the run's own outage budget: the run itself is served.
    spent = app.send_task(
        "wre.execute_skill",
        kwargs={"skill_name": "echo", "input_context": {"text": "hi"}},
        headers={INFRA_RETRIES_HEADER: 30},
    )
    assert spent.get(timeout=RESULT_TIMEOUT)["result"]["answer"] == "hi"
