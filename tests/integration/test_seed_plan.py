"""The sprint plan's validation tests, by its names, against the plan's API exactly as its callers use it:
``PatternMemory(url)`` with no policy, ``Orchestrator()`` configured by ``WRE_*`` alone, the plan's return
types (a dict or None, a winner's name or None, the counter's value)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from worker.registry import register_skill_text
from worker.runner import Orchestrator, choose_arm
from worker.settings import get_settings
from wre.context import store


@pytest.fixture
def seed_env(memory: PatternMemory, database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The environment the plan's callers run in: WRE_* settings only."""
    monkeypatch.setenv("WRE_DATABASE_URL", database_url)
    monkeypatch.setenv("WRE_REACT_MODE", "1")
    monkeypatch.setenv("WRE_PRODUCTION_CACHE_SECONDS", "0")
    monkeypatch.setenv("WRE_EVOLVE_COOLDOWN_SECONDS", "3600")
    get_settings.cache_clear()
    store.cache_clear()
    yield database_url
    get_settings.cache_clear()
    store.cache_clear()


def _two_versions(memory: PatternMemory, name: str = "seeded") -> tuple[str, str]:
    register_skill_text(memory, python_skill(name, "echo"))
    control, content = memory.get_production(name)
    treatment = memory.store_variation(name, content + "\nBe brief.\n", parent_version=control)
    return control, treatment


def test_ab_test_scheduling(seed_env: str) -> None:
    memory = PatternMemory(seed_env)  # as the plan builds it: its URL, nothing else
    control, treatment = _two_versions(memory)
    assert memory.get_active_ab_test("seeded") is None
    test_id = memory.schedule_ab_test("seeded", control, treatment)
    assert isinstance(test_id, int)
    active = memory.get_active_ab_test("seeded")
    assert isinstance(active, dict)
    assert active["test_id"] == test_id and active["status"] == "running"
    assert (active["control_version"], active["treatment_version"]) == (control, treatment)
    assert active["sample_size_target"] == 20 and active["start_time"] is not None
    assert (active["control_trials"], active["treatment_trials"]) == (0, 0)
    assert memory.check_ab_promotion(test_id) is None  # no trials: keep going


def test_ab_routing_50_50(seed_env: str) -> None:
    memory = PatternMemory(seed_env)
    control, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("seeded", control, treatment)
    orchestrator = Orchestrator()
    runs = [orchestrator.execute_skill_with_reasoning("seeded", None, {"text": "hi"}) for _ in range(40)]
    arms = [run["arm"] for run in runs]
    assert set(arms) == {"control", "treatment"}
    # Every run counted once, on the arm it ran.
    active = memory.get_active_ab_test("seeded")
    assert active is not None
    assert (active["control_trials"], active["treatment_trials"]) == (arms.count("control"), arms.count("treatment"))
    # The split itself: the arm is a hash of (test, key); over 10,000 keys it is within 3% of half.
    split = sum(choose_arm(test_id, f"user-{n}") == "treatment" for n in range(10_000)) / 10_000
    assert abs(split - 0.5) < 0.03


def test_auto_promotion_on_win(seed_env: str) -> None:
    memory = PatternMemory(seed_env)
    control, treatment = _two_versions(memory)
    test_id = memory.schedule_ab_test("seeded", control, treatment)
    for n in range(30):
        memory.record_ab_outcome(test_id, "control", n % 4 == 0)
        memory.record_ab_outcome(test_id, "treatment", True)
    assert memory.check_ab_promotion(test_id) == "treatment"
    assert memory.check_ab_promotion(test_id, min_margin=0.9) is None  # the margin is the caller's
    [conclusion] = memory.evaluate_running_tests()
    assert conclusion.winner == "treatment"
    assert memory.get_production("seeded")[0] == treatment
    assert memory.get_active_ab_test("seeded") is None
    dashboard = memory.get_telemetry_dashboard()
    assert dashboard["variations_promoted"] == 1 and dashboard["variation_win_rate"] == 1.0
    assert dashboard["avg_fidelity_delta"] == pytest.approx(1.0 - 8 / 30)


def test_early_exit_on_success(seed_env: str) -> None:
    memory = PatternMemory(seed_env)
    register_skill_text(memory, python_skill("passes", "echo"))
    result = Orchestrator().execute_skill_with_reasoning("passes", "python", {"text": "hi"})
    meta = result["_react_metadata"]
    assert result["success"] is True
    assert meta["iterations"] == 1 and meta["early_success"] is True and meta["max_iterations"] == 3
    assert [attempt["fidelity"] for attempt in meta["all_attempts"]] == [1.0]
    assert memory.get_telemetry_dashboard()["retry_count"] == 0


def test_retry_on_low_fidelity(seed_env: str) -> None:
    memory = PatternMemory(seed_env)
    register_skill_text(memory, python_skill("learner", "learns_from_feedback"))
    result = Orchestrator().execute_skill_with_reasoning("learner", "python", {"text": "hi"})
    meta = result["_react_metadata"]
    assert meta["iterations"] == 2 and meta["early_success"] is True
    assert [attempt["fidelity"] for attempt in meta["all_attempts"]] == [0.5, 1.0]
    # The retry was told what failed, in the plan's words.
    assert result["result"]["saw_previous"] == {"fidelity": 0.5, "failed_at_step": "answer",
                                                "error": result["result"]["saw_previous"]["error"]}
    assert memory.increment_counter("react_retry_count", 0) == 1
    assert memory.increment_counter("total_executions", 0) == 2


def test_max_iterations_respected(seed_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    memory = PatternMemory(seed_env)
    register_skill_text(memory, python_skill("hopeless", "always_fails"))
    explicit = Orchestrator(evolve=False).execute_skill_with_reasoning("hopeless", "python", {}, max_iterations=2)
    assert explicit["_react_metadata"]["iterations"] == 2
    assert explicit["_react_metadata"]["early_success"] is False
    monkeypatch.setenv("WRE_REACT_MAX_ITER", "4")
    get_settings.cache_clear()
    configured = Orchestrator(evolve=False).execute_skill_with_reasoning("hopeless", "python", {})
    assert configured["_react_metadata"]["iterations"] == configured["_react_metadata"]["max_iterations"] == 4
    # WRE_REACT_FIDELITY is the default threshold: at 0.5 the same answer (fidelity 0.5) succeeds at once.
    monkeypatch.setenv("WRE_REACT_FIDELITY", "0.5")
    get_settings.cache_clear()
    lenient = Orchestrator(evolve=False).execute_skill_with_reasoning("hopeless", "python", {})
    assert lenient["success"] is True and lenient["_react_metadata"]["iterations"] == 1
    assert memory.increment_counter("react_retry_count", 0) == 1 + 3


def test_integration_snippet(seed_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The plan's integration run, as written there: WRE_REACT_MODE=1, one call, print the metadata."""
    register_skill_text(PatternMemory(seed_env), python_skill("learner", "learns_from_feedback"))
    orchestrator = Orchestrator()
    result = orchestrator.execute_skill_with_reasoning(
        skill_name="learner", agent="python", input_context={"text": "hello"}
    )
    print(result["_react_metadata"])
    printed = capsys.readouterr().out
    assert "'iterations': 2" in printed and "'fidelity': 0.5" in printed and "'early_success': True" in printed
    # execute_skill is the default entry point and follows WRE_REACT_MODE.
    assert orchestrator.execute_skill("learner", "python", {"text": "x"})["_react_metadata"]["iterations"] == 2
    monkeypatch.setenv("WRE_REACT_MODE", "0")
    get_settings.cache_clear()
    single = Orchestrator().execute_skill("learner", "python", {"text": "x"})
    assert single["_react_metadata"]["iterations"] == 1 and single["success"] is False
