"""Settings: every one has a range, a value out of it is refused in one line naming the variable (never
clamped), and the promotion policies worker/ names without importing scheduler/."""

from __future__ import annotations

import subprocess
import sys

import pytest

from db.models import POLICY_NAMES
from scheduler.policies import POLICIES
from worker.app import celery_config
from worker.settings import AB_POLICIES, SMALLEST_SCREENING, Settings, SettingsError


def test_production_policies_are_the_scheduler_s_without_margin() -> None:
    assert set(AB_POLICIES) < set(POLICIES) and "margin" not in AB_POLICIES
    assert POLICY_NAMES == POLICIES  # stored tests may still name margin (the store and bench use it)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        # The seed's figures, clamped until now.
        ("WRE_REACT_MAX_ITER", "50", "WRE_REACT_MAX_ITER=50 is out of range: must be within [1, 10]"),
        ("WRE_REACT_MAX_ITER", "0", "WRE_REACT_MAX_ITER=0 is out of range: must be within [1, 10]"),
        ("WRE_REACT_FIDELITY", "1.7", "WRE_REACT_FIDELITY=1.7 is out of range: must be within [0, 1]"),
        ("WRE_REACT_FIDELITY", "nan", "WRE_REACT_FIDELITY=nan is out of range"),
        # 0 let beat send thousands of rounds a second.
        ("WRE_AB_EVAL_SECONDS", "0", "WRE_AB_EVAL_SECONDS=0 is out of range: must be within [1, 3600]"),
        ("WRE_RUN_SWEEP_SECONDS", "0.001", "WRE_RUN_SWEEP_SECONDS=0.001 is out of range: must be 0 (no sweep)"),
        ("WRE_AB_POLICY", "margin", "WRE_AB_POLICY=margin is out of range: must be 'sequential'"),
        ("WRE_AB_POLICY", "bayes", "WRE_AB_POLICY=bayes"),
        ("WRE_SCREEN_MAX_CALLS", "10", "WRE_SCREEN_MAX_CALLS=10 is out of range: must be within [90, 10000]"),
        ("WRE_GUARD_HOLDOUT_SHARE", "0.9", "WRE_GUARD_HOLDOUT_SHARE=0.9 is out of range: must be within [0, 0.5]"),
        ("WRE_MAX_CONTEXT_BYTES", "lots", "WRE_MAX_CONTEXT_BYTES=lots is not valid: Input should be a valid integer"),
        ("WRE_REACT_MODE", "maybe", "WRE_REACT_MODE=maybe is not valid"),
        ("WRE_DEFAULT_TIME_LIMIT_SECONDS", "0", "must be within (0, 86400]"),
        ("WRE_PYTHON_SKILL_MODULES", "skills, my skills", "WRE_PYTHON_SKILL_MODULES=my skills is not valid"),
        ("WRE_LLM_BASE_URL", "127.0.0.1:11434/v1", "WRE_LLM_BASE_URL=127.0.0.1:11434/v1 is not valid: must be an http"),
        ("WRE_BROKER_URL", "http://127.0.0.1:6379", "WRE_BROKER_URL: not a broker URL"),
        ("WRE_RESULT_BACKEND", "redis", "WRE_RESULT_BACKEND: expected empty"),
        ("WRE_DATABASE_URL", "mysql://root@host/wre", "WRE_DATABASE_URL: mysql:// is not supported"),
        ("WRE_DATABASE_URL", "postgresql+psycopg2://u:secret@host/wre", "postgresql+psycopg2:// is not supported"),
        ("WRE_DATABASE_URL", "not a url", "WRE_DATABASE_URL: not a database URL"),
        ("WRE_GUARD_MIN_UNITS", "6000", "WRE_GUARD_MIN_UNITS=6000 exceeds WRE_GUARD_UNITS=5000"),
        ("WRE_QUEUE_PREFIX", "amq.", "WRE_QUEUE_PREFIX, WRE_SKILLS_QUEUE, WRE_MAINTENANCE_QUEUE: queue name"),
        ("WRE_SKILLS_QUEUE", "a b", "WRE_SKILLS_QUEUE=a b is not valid: must be at most 100 letters"),
        ("WRE_MAINTENANCE_QUEUE", "skills", "the skills, maintenance and evaluation queues must differ"),
    ],
)
def test_a_value_out_of_range_is_refused_in_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as refused:
        Settings()
    message = str(refused.value)
    assert expected in message and "\n" not in message
    assert "secret" not in message  # a URL's password is never repeated


def test_every_refused_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRE_AB_EVAL_SECONDS", "0")
    monkeypatch.setenv("WRE_REACT_MAX_ITER", "11")
    with pytest.raises(SettingsError, match=r"WRE_REACT_MAX_ITER=11 .*; WRE_AB_EVAL_SECONDS=0 "):
        Settings()


def test_bounds_are_accepted_and_a_removed_setting_is_no_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in (("WRE_REACT_MAX_ITER", "10"), ("WRE_AB_EVAL_SECONDS", "1"), ("WRE_SCREEN_MAX_CALLS", "90"),
                            ("WRE_RUN_SWEEP_SECONDS", "0"), ("WRE_DATABASE_URL", "postgres://u@host/wre")):
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("WRE_REACT_FIDELITY", "")  # empty: unset, so the default
    settings = Settings()
    assert (settings.react_max_iter, settings.ab_eval_seconds, settings.screen_max_calls) == (10, 1.0, 90)
    assert settings.react_fidelity == 0.90
    with pytest.raises(SettingsError, match="WRE_LLM_MODEL= is not valid"):
        Settings(llm_model="")
    monkeypatch.setenv("WRE_AB_ALPHA", "2")  # no setting any more: the environment's extras are not read
    Settings()
    with pytest.raises(SettingsError, match="WRE_AB_ALPHA is not a setting"):
        Settings(ab_alpha=0.05)


def test_the_seed_s_defaults() -> None:
    defaults = Settings()
    assert (defaults.react_mode, defaults.react_max_iter, defaults.react_fidelity) == (True, 3, 0.90)
    assert defaults.ab_policy == "sequential"


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
    assert {q.name for q in config["task_queues"]} == {"skills", "maintenance", "evaluation"}
    # Verdicts on a queue of their own: no screening on the maintenance queue delays one.
    assert config["task_routes"]["wre.evaluate_ab_tests"] == {"queue": "evaluation"}
    assert config["beat_schedule"]["evaluate-ab-tests"]["options"]["queue"] == "evaluation"
    assert config["task_routes"]["wre.evolve_skill"] == {"queue": "maintenance"}


def test_task_events_are_off_unless_asked_for() -> None:
    quiet = celery_config(Settings())
    assert not (quiet["worker_send_task_events"] or quiet["task_send_sent_event"] or quiet["task_track_started"])
    watched = celery_config(Settings(task_events=True))
    assert watched["worker_send_task_events"] and watched["task_send_sent_event"] and watched["task_track_started"]


def test_statistical_defaults_are_the_scheduler_constants() -> None:
    """worker/ cannot import scheduler/: its defaults repeat the named constants, and must stay equal."""
    from scheduler import guard, policies

    defaults = Settings()
    assert defaults.ab_min_trials_per_arm == policies.MIN_TRIALS_PER_ARM
    assert defaults.ab_max_trials_per_arm == policies.MAX_TRIALS_PER_ARM
    assert defaults.guard_holdout_share == guard.HOLDOUT_SHARE
    assert defaults.guard_units == guard.GUARD_UNITS
    assert defaults.guard_min_units == guard.GUARD_MIN_UNITS


def test_queue_names_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRE_QUEUE_PREFIX", "acme.")
    config = celery_config(Settings())
    assert {q.name for q in config["task_queues"]} == {"acme.skills", "acme.maintenance", "acme.evaluation"}
    assert config["task_default_queue"] == "acme.skills"
    assert config["task_routes"]["wre.execute_skill"] == {"queue": "acme.skills"}
    assert {entry["options"]["queue"] for entry in config["beat_schedule"].values()} == {
        "acme.maintenance",
        "acme.evaluation",
    }
    monkeypatch.setenv("WRE_SKILLS_QUEUE", "runs")
    assert Settings().skills_queue_name == "runs" and Settings().maintenance_queue_name == "acme.maintenance"


def test_rabbitmq_queues_dead_letter_and_may_be_quorum() -> None:
    redis_config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/3"))
    assert all(not q.queue_arguments for q in redis_config["task_queues"])
    amqp = Settings(broker_url="amqp://127.0.0.1:5672//", queue_type="quorum")
    config = celery_config(amqp)
    skills, maintenance, evaluation = config["task_queues"]
    assert skills.queue_arguments == {
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": "skills.dead",
        "x-queue-type": "quorum",
    }
    # Beat's rounds expire: not dead letters.
    assert maintenance.queue_arguments == evaluation.queue_arguments == {"x-queue-type": "quorum"}
    assert amqp.effective_result_backend == "rpc://"  # RabbitMQ stores no results
    assert config["result_extended"] is False  # a result never keeps its kwargs


def test_the_smallest_screening_is_the_floor_of_the_cap() -> None:
    # Round 1: 4 candidates and the parent; rounds 2 and 3: 3 new ones, the kept survivor and the parent; 6 inputs
    # each: 6 x (5 + 5 + 5) = 90 calls.
    assert SMALLEST_SCREENING == 90 == Settings.model_fields["screen_max_calls"].metadata[0].ge


def test_the_redis_restart_workaround_is_the_workers_alone_and_checked_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kombu import transport as kombu_transport
    from kombu.transport import TRANSPORT_ALIASES, get_transport_cls, resolve_transport
    from kombu.transport import redis as kombu_redis

    from worker.app import Transport, use_worker_transport

    # A producer (it imports the app) keeps kombu's own transport.
    probe = "import worker.client; from kombu.transport import resolve_transport as r; print(r('redis').__module__)"
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.strip() == "kombu.transport.redis"
    # As kombu has them (an embedded worker of an earlier test in this process may have changed them).
    monkeypatch.setattr(kombu_transport, "_transport_cache", {})
    for scheme in ("redis", "rediss"):
        monkeypatch.setitem(TRANSPORT_ALIASES, scheme, "kombu.transport.redis:Transport")
    assert resolve_transport("redis") is kombu_redis.Transport
    assert get_transport_cls("redis") is kombu_redis.Transport  # resolved (and cached) before worker_init
    use_worker_transport()  # what the worker_init signal runs
    assert resolve_transport("redis") is Transport and resolve_transport("rediss") is Transport
    assert get_transport_cls("redis") is Transport  # what a connection made afterwards uses
    # A kombu whose channel lost the method the workaround overrides: the worker stops at start, in one line.
    monkeypatch.delattr(kombu_redis.Channel, "_connparams")
    with pytest.raises(SystemExit, match=r"^wre: cannot start: kombu .* has no Redis Channel._connparams"):
        use_worker_transport()


def test_store_connections_carry_lock_and_statement_timeouts() -> None:
    from sqlalchemy.engine import make_url

    url = make_url(Settings(database_url="postgresql://u@db/wre", db_lock_timeout_seconds=1.5).store_url)
    assert url.query["options"] == "-c lock_timeout=1500 -c statement_timeout=60000"
    # An operator's own options are theirs; SQLite has no such settings.
    own = "postgresql://u@db/wre?options=-c%20lock_timeout%3D0"
    assert Settings(database_url=own).store_url == own
    assert Settings(database_url="sqlite:///wre.db").store_url == "sqlite:///wre.db"
