"""Settings: clamps, lists, and the promotion policies worker/ names without importing scheduler/."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from db.models import POLICY_NAMES
from scheduler.policies import POLICIES
from worker.app import celery_config
from worker.settings import AB_POLICIES, Settings


def test_policy_names_match_the_scheduler() -> None:
    assert AB_POLICIES == POLICIES
    assert POLICY_NAMES == POLICIES


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


def test_task_events_are_off_unless_asked_for() -> None:
    quiet = celery_config(Settings())
    assert not (quiet["worker_send_task_events"] or quiet["task_send_sent_event"] or quiet["task_track_started"])
    watched = celery_config(Settings(task_events=True))
    assert watched["worker_send_task_events"] and watched["task_send_sent_event"] and watched["task_track_started"]


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


def test_queue_names_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRE_QUEUE_PREFIX", "acme.")
    config = celery_config(Settings())
    assert {q.name for q in config["task_queues"]} == {"acme.skills", "acme.maintenance"}
    assert config["task_default_queue"] == "acme.skills"
    assert config["task_routes"]["wre.execute_skill"] == {"queue": "acme.skills"}
    assert {entry["options"]["queue"] for entry in config["beat_schedule"].values()} == {"acme.maintenance"}
    monkeypatch.setenv("WRE_SKILLS_QUEUE", "runs")
    assert Settings().skills_queue_name == "runs" and Settings().maintenance_queue_name == "acme.maintenance"
    for bad in ({"WRE_SKILLS_QUEUE": "a b"}, {"WRE_QUEUE_PREFIX": "amq."}, {"WRE_MAINTENANCE_QUEUE": "runs"}):
        with monkeypatch.context() as scoped:
            for key, value in bad.items():
                scoped.setenv(key, value)
            with pytest.raises(ValidationError):
                Settings()


def test_rabbitmq_queues_dead_letter_and_may_be_quorum() -> None:
    redis_config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/3"))
    assert all(not q.queue_arguments for q in redis_config["task_queues"])
    from kombu.transport import resolve_transport

    from worker.app import Transport

    assert resolve_transport("redis") is Transport  # the restart workaround, under the scheme's own name
    amqp = Settings(broker_url="amqp://127.0.0.1:5672//", queue_type="quorum")
    config = celery_config(amqp)
    skills, maintenance = config["task_queues"]
    assert skills.queue_arguments == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "skills.dead",
        "x-queue-type": "quorum",
    }
    assert maintenance.queue_arguments == {"x-queue-type": "quorum"}  # beat's rounds expire: not dead letters
    assert amqp.effective_result_backend == "rpc://"  # RabbitMQ stores no results
    assert config["result_extended"] is False  # a result never keeps its kwargs


def test_a_screening_the_cap_cannot_pay_for_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # Round 1: 8 candidates and the parent; rounds 2 and 3: 7 new beside the survivor and the parent; 6 inputs
    # each: 6 x (9 + 9 + 9) = 162 calls > 100, so evolution would wait for ever.
    monkeypatch.setenv("WRE_EVOLVE_CANDIDATES", "8")
    with pytest.raises(ValidationError, match=r"WRE_SCREEN_MAX_CALLS=100 cannot pay for one screening: .* 162 calls"):
        Settings()
    monkeypatch.setenv("WRE_SCREEN_MAX_CALLS", "161")
    with pytest.raises(ValidationError, match="161 cannot pay"):
        Settings()
    monkeypatch.setenv("WRE_SCREEN_MAX_CALLS", "162")
    assert Settings().smallest_screening == 162
    # One candidate: later rounds replay it beside the kept survivor, so 6 x (2 + 3 + 3) = 48.
    monkeypatch.setenv("WRE_EVOLVE_CANDIDATES", "1")
    assert Settings().smallest_screening == 48
    monkeypatch.setenv("WRE_SCREEN_GENERATIONS", "1")
    assert Settings().smallest_screening == 12
