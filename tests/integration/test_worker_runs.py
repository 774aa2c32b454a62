"""Skill runs through a real worker process, real Postgres, on Redis and on RabbitMQ (delivery, ReAct retries
and the evolution task all go through the broker)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from db.memory import PatternMemory
from tests.brokers import TestBroker
from tests.integration.skills_for_tests import python_skill
from tests.processes import Process, broker_app, service_env, start_worker, wait_until
from worker.client import enqueue_skill
from worker.registry import register_skill_text
from worker.runner import choose_arm

RESULT_TIMEOUT = 30
# Fails every attempt until an evolver moves `mode` to lenient.
TUNABLE_PARAMS = "params:\n  mode: {value: strict, choices: [strict, lenient]}\n"


@pytest.fixture(scope="module")
def app(database_url: str, any_broker: TestBroker) -> Celery:
    return broker_app(database_url, any_broker.url, any_broker.result_backend)


@pytest.fixture(scope="module")
def worker(
    app: Celery, database_url: str, any_broker: TestBroker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    # A handful of runs pays for a screening (the default share needs hundreds).
    env = service_env(database_url, any_broker.url, WRE_SCREEN_BUDGET_SHARE="10", **any_broker.env())
    process = start_worker(app, env, tmp_path_factory.mktemp("worker"))
    yield process
    process.stop()


@pytest.fixture
def skills(memory: PatternMemory) -> PatternMemory:
    for name, entrypoint in [
        ("echo", "echo"),
        ("learner", "learns_from_feedback"),
        ("hopeless", "always_fails"),
        ("crasher", "raises"),
    ]:
        register_skill_text(memory, python_skill(name, entrypoint))
    register_skill_text(memory, python_skill("tunable", "tunable", params=TUNABLE_PARAMS))
    return memory


def _run(
    app: Celery, skill: str, context: dict[str, object] | None = None, **kwargs: object
) -> dict[str, object]:
    result = enqueue_skill(skill, context or {"text": "hi"}, app=app, **kwargs)  # type: ignore[arg-type]
    return result.get(timeout=RESULT_TIMEOUT)  # type: ignore[no-any-return]


def test_early_exit_on_first_success(app: Celery, worker: Process, skills: PatternMemory) -> None:
    result = _run(app, "echo", {"text": "hello"})
    assert result["success"] is True
    assert result["result"] == {"answer": "hello", "saw_retry": False}
    meta = result["_react_metadata"]
    assert meta["iterations"] == 1 and meta["early_success"] is True
    assert len(skills.run_outcomes(str(result["execution_id"]))) == 1


def test_retry_carries_the_failure_context(app: Celery, worker: Process, skills: PatternMemory) -> None:
    result = _run(app, "learner")
    assert result["success"] is True
    assert result["_react_metadata"]["iterations"] == 2
    seen = result["result"]["saw_previous"]  # type: ignore[index]
    assert seen["failed_at_step"] == "answer"
    assert seen["fidelity"] == pytest.approx(0.5)
    assert "error" in seen
    rows = skills.run_outcomes(str(result["execution_id"]))
    assert [(r["attempt"], r["success"], r["final"]) for r in rows] == [(1, False, False), (2, True, True)]
    assert skills.get_counter("react_retry_count") == 1


def test_max_iterations_then_evolution(app: Celery, worker: Process, skills: PatternMemory) -> None:
    result = _run(app, "tunable")
    assert result["success"] is False
    meta = result["_react_metadata"]
    assert meta["iterations"] == meta["max_iterations"] == 3
    assert meta["early_success"] is False
    assert result["evolution_triggered"] is True
    assert len(skills.run_outcomes(str(result["execution_id"]))) == 3
    # Screening waits until the budget (10 calls per live run here) pays for the smallest screening, 90 calls;
    # it claims nothing meanwhile, so the ninth failure evolves.
    for n in range(8):
        _run(app, "tunable", {"text": f"run {n}"})
    wait_until(lambda: skills.get_active_ab_test("tunable") is not None, what="the evolved variation's test")
    # The proposal's event is written just after its test is scheduled.
    wait_until(
        lambda: "variation_proposed" in [e.event_type for e in skills.get_evolution_history("tunable")],
        what="the proposal's event",
    )
    events = [e.event_type for e in skills.get_evolution_history("tunable")]
    assert "react_execution" in events and "candidates_screened" in events and "variation_proposed" in events


def test_agent_exception_is_a_scored_attempt(app: Celery, worker: Process, skills: PatternMemory) -> None:
    result = _run(app, "crasher")
    assert result["success"] is False
    assert result["pattern_fidelity"] == 0.0
    assert "RuntimeError" in str(result["error"])
    rows = skills.run_outcomes(str(result["execution_id"]))
    assert len(rows) == 3 and all(r["execution_success"] is False for r in rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"skill_name": "nope", "input_context": {}}, "unknown skill"),
        ({"skill_name": "echo", "agent": "gpt-9", "input_context": {}}, "unknown agent"),
        ({"skill_name": "echo", "input_context": [1, 2]}, "JSON object"),
        ({"skill_name": "echo", "input_context": "text"}, "JSON object"),
        ({"skill_name": "echo", "input_context": {"blob": "x" * 300_000}}, "over the limit"),
        ({"skill_name": "echo", "input_context": {}, "max_iterations": 1000}, "unknown argument"),
    ],
)
def test_bad_input_fails_at_once_and_writes_nothing(
    app: Celery, worker: Process, skills: PatternMemory, kwargs: dict[str, object], message: str
) -> None:
    result = app.send_task("wre.execute_skill", kwargs=kwargs)
    with pytest.raises(Exception, match=message):
        result.get(timeout=RESULT_TIMEOUT)
    assert result.state == "FAILURE"
    assert skills.run_outcomes(result.id) == []
    assert skills.get_counter("total_executions") == 0


def test_positional_args_are_refused(app: Celery, worker: Process, skills: PatternMemory) -> None:
    result = app.send_task("wre.execute_skill", args=["echo", "python", {}])
    with pytest.raises(Exception, match="keyword arguments only"):
        result.get(timeout=RESULT_TIMEOUT)
    assert skills.get_counter("total_executions") == 0


def test_forbidden_entrypoint_stored_behind_our_back_fails_cleanly(
    app: Celery, worker: Process, skills: PatternMemory
) -> None:
    # Registration refuses it; a row written around wre's API must still not run os.system.
    sneaky = python_skill("echo", "echo").replace("tests.fixtures.entrypoints:echo", "os:system")
    variation = skills.store_variation("echo", sneaky, created_by="test")
    skills.promote_variation(variation)
    result = app.send_task("wre.execute_skill", kwargs={"skill_name": "echo", "input_context": {}})
    with pytest.raises(Exception, match="not allowed"):
        result.get(timeout=RESULT_TIMEOUT)
    assert skills.run_outcomes(result.id) == []


def test_worker_survives_bad_input(app: Celery, worker: Process, skills: PatternMemory) -> None:
    bad = [app.send_task("wre.execute_skill", kwargs={"skill_name": "echo", "input_context": 5}) for _ in range(3)]
    for result in bad:  # each has failed, cleanly, before the good run is sent
        with pytest.raises(Exception, match="JSON object"):
            result.get(timeout=RESULT_TIMEOUT)
    assert _run(app, "echo")["success"] is True
    assert worker.popen.poll() is None


def test_routing_is_sticky_and_balanced(app: Celery, worker: Process, skills: PatternMemory) -> None:
    register_skill_text(skills, python_skill("ab", "learns_from_feedback"))
    control, _ = skills.get_production("ab")
    treatment = skills.store_variation("ab", python_skill("ab", "learns_from_feedback", body="Answer well."))
    test_id = skills.schedule_ab_test("ab", control, treatment, policy="margin", sample_size_target=500)
    results = [enqueue_skill("ab", {"i": i}, app=app) for i in range(400)]
    finished = [r.get(timeout=120) for r in results]
    arms = {"control": 0, "treatment": 0}
    for run in finished:
        rows = skills.run_outcomes(str(run["execution_id"]))
        assert len(rows) == 2  # every run needed one retry
        assert (
            len({(r["arm"], r["variation_id"], r["test_id"]) for r in rows}) == 1
        )  # the same arm throughout
        arms[str(rows[0]["arm"])] += 1
    assert 160 <= arms["treatment"] <= 240, arms
    test = skills.get_ab_test(test_id)
    assert test is not None
    # One trial per run, judged on its first attempt.
    assert (test.control_trials, test.treatment_trials) == (arms["control"], arms["treatment"])
    assert test.control_successes == test.treatment_successes == 0


def test_assignment_key_pins_the_arm(app: Celery, worker: Process, skills: PatternMemory) -> None:
    register_skill_text(skills, python_skill("pinned", "echo"))
    control, _ = skills.get_production("pinned")
    treatment = skills.store_variation("pinned", python_skill("pinned", "echo", body="Other."))
    test_id = skills.schedule_ab_test("pinned", control, treatment, policy="margin", sample_size_target=500)
    # Two keys on different arms: each run of a key must land where choose_arm says, every time.
    keys = {choose_arm(test_id, f"user-{i}"): f"user-{i}" for i in range(20)}
    assert set(keys) == {"control", "treatment"}
    for arm, key in keys.items():
        for _ in range(3):
            result = _run(app, "pinned", assignment_key=key)
            assert result["arm"] == arm
            assert result["variation_id"] == (treatment if arm == "treatment" else control)


def test_burst_of_failures_evolves_once(
    app: Celery, worker: Process, skills: PatternMemory, any_broker: TestBroker
) -> None:
    results = [enqueue_skill("tunable", {"i": i}, app=app) for i in range(20)]
    for result in results:
        assert result.get(timeout=60)["evolution_triggered"] is True
    wait_until(lambda: skills.get_active_ab_test("tunable") is not None, what="one A/B test")
    wait_until(lambda: any_broker.held("maintenance") == 0, timeout=30, what="the evolve tasks to finish")
    assert len(skills.list_ab_tests(skill_name="tunable")) == 1
    assert len(skills.list_variations("tunable")) == 2

