"""Settings: clamps, lists, and the promotion policies worker/ names without importing scheduler/."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from scheduler.policies import POLICIES
from worker.app import celery_config
from worker.settings import AB_POLICIES, Settings


def test_policy_names_match_the_scheduler() -> None:
    assert AB_POLICIES == POLICIES


def test_unknown_policy_is_refused() -> None:
    with pytest.raises(ValidationError, match="WRE_AB_POLICY"):
        Settings(ab_policy="bayes")


def test_react_figures_are_clamped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRE_REACT_MAX_ITER", "1000")
    monkeypatch.setenv("WRE_REACT_FIDELITY", "1.7")
    settings = Settings()
    assert settings.react_max_iter == 10 and settings.react_fidelity == 1.0
    monkeypatch.setenv("WRE_REACT_MAX_ITER", "0")
    monkeypatch.setenv("WRE_REACT_FIDELITY", "-2")
    settings = Settings()
    assert settings.react_max_iter == 1 and settings.react_fidelity == 0.0


def test_skill_modules_take_a_comma_list_or_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRE_PYTHON_SKILL_MODULES", "skills, acme.skills")
    assert Settings().python_skill_modules == ["skills", "acme.skills"]
    monkeypatch.setenv("WRE_PYTHON_SKILL_MODULES", '["a", "b"]')
    assert Settings().python_skill_modules == ["a", "b"]


def test_celery_config_is_json_only_with_late_acks() -> None:
    config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/3"))
    assert config["accept_content"] == ["json"] and config["task_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1
    assert config["beat_schedule"]["evaluate-ab-tests"]["task"] == "wre.evaluate_ab_tests"
    assert config["beat_schedule"]["evaluate-ab-tests"]["options"]["expires"] > 0
    assert {q.name for q in config["task_queues"]} == {"skills", "maintenance"}


def test_statistical_defaults_are_the_scheduler_constants() -> None:
    """worker/ cannot import scheduler/: its defaults repeat the named constants, and must stay equal."""
    from scheduler import guard, health, policies

    defaults = Settings()
    assert defaults.ab_alpha == policies.ALPHA
    assert defaults.ab_min_trials_per_arm == policies.MIN_TRIALS_PER_ARM
    assert defaults.ab_max_trials_per_arm == policies.MAX_TRIALS_PER_ARM
    assert defaults.ab_min_margin == policies.MIN_MARGIN
    assert defaults.ab_min_detectable_lift == policies.MIN_DETECTABLE_LIFT
    assert defaults.ab_srm_p_value == health.SRM_P_VALUE
    assert defaults.guard_holdout_share == guard.HOLDOUT_SHARE
    assert defaults.guard_alpha == guard.GUARD_ALPHA
    assert defaults.guard_units == guard.GUARD_UNITS
    assert defaults.guard_min_units == guard.GUARD_MIN_UNITS
