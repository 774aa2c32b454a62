"""Every setting wre reads, in one place (environment variables with the prefix ``WRE_``).

Out-of-range ReAct figures are clamped rather than refused: an operator who sets ``WRE_REACT_MAX_ITER=50``
gets the documented ceiling (10), not a worker that will not start.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

DEFAULT_DATABASE_URL = "sqlite:///wre.db"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
REACT_MAX_ITER_BOUNDS = (1, 10)
# The promotion policies scheduler/policies.py implements (worker/ cannot import it; a test keeps them equal).
AB_POLICIES = ("sequential", "margin")
DEFAULT_MAX_CONTEXT_BYTES = 256 * 1024
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 3600.0
DATABASE_BACKENDS = ("postgresql", "sqlite")
# Queue names (and the prefix) as RabbitMQ and Redis both take them; RabbitMQ reserves "amq.".
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{0,100}$"
# Fewer replay inputs than this cannot show a difference: six wins out of six is p = 1/64 one-sided.
MIN_REPLAY_INPUTS = 6


def smallest_screening(candidates: int, generations: int) -> int:
    """Agent calls of the smallest screening: each round replays the parent and its candidates on six inputs.

    A later round has one fewer new candidate beside the kept survivor, and at least one (so two in all).
    """
    later = max(candidates, 2) + 1
    return MIN_REPLAY_INPUTS * (candidates + 1 + (generations - 1) * later)


class Settings(BaseSettings):
    """wre's configuration.

    :param database_url: SQLAlchemy URL of the store (Postgres in production, a SQLite file embedded).
    :param broker_url: Celery broker URL: ``redis://`` or ``amqp://`` (RabbitMQ); docs/OPERATIONS.md compares them.
    :param result_backend: Celery result backend; empty means the broker's Redis, or ``rpc://`` (results sent
        back to their producer) on RabbitMQ; ``disabled`` for none.
    :param react_mode: 1 retries low-fidelity attempts (ReAct), 0 gives every run one attempt.
    :param react_max_iter: attempts per run, clamped to 1..10.
    :param react_fidelity: default fidelity threshold of a skill, clamped to 0..1.
    :param react_backoff_seconds: countdown before a ReAct retry.
    :param ab_policy: promotion policy, ``sequential`` (default) or ``margin`` (the seed's rule).
    :param ab_eval_seconds: period of the beat task that decides running A/B tests.
    :param ab_alpha: the sequential test's error budget for a wrong promotion.
    :param ab_min_trials_per_arm: no verdict before each arm has this many trials.
    :param ab_max_trials_per_arm: a test still undecided here closes as inconclusive.
    :param ab_min_margin: a floor on the observed lift for promotion.
    :param ab_min_detectable_lift: the futility stop: a test closes as inconclusive once the evidence rules
        out a lift of at least this much (0: never).
    :param ab_srm_p_value: a test whose arms' unit counts depart from the routing share with an anytime-valid
        p-value below this is paused (sample-ratio mismatch) and never promoted; the chance of pausing a
        healthy test at any look over its life.
    :param ab_trial_slack_seconds: a trial's deadline is its first attempt's time limit plus this; a trial
        still without an outcome then counts as a failure of its arm.
    :param guard_holdout_share: after a promotion, the share of units kept on the last confirmed production version
        while the guard watches the new one (0: no guard).
    :param guard_alpha: the guard's error budget for a wrong rollback.
    :param guard_units: the guard period, in units; a guard that found no regression by then confirms.
    :param guard_min_units: no guard verdict before the holdout has this many units.
    :param python_skill_modules: modules (and their submodules) a python skill may name as entrypoint or check.
    :param max_context_bytes: largest JSON input context a run accepts.
    :param visibility_timeout_seconds: how long Redis waits for a delivered message's ack before it hands the
        message to another worker. This is how the runs of a worker that died without acking (SIGKILL, OOM,
        a lost node) come back: after this long, plus at most one restore sweep. It must exceed the longest
        a healthy worker can hold a message unacked: the longest attempt (a skill's ``time_limit``, else
        ``default_time_limit_seconds``) and the longest countdown wre schedules (the infrastructure backoff,
        up to 30 s; an LLM server's Retry-After, capped at 300 s; ``react_backoff_seconds``), because a
        message held longer is delivered a second time while the first delivery still runs. A duplicate
        records nothing twice, but it costs an attempt.
    :param default_time_limit_seconds: an attempt's time limit when the skill declares none.
    :param production_cache_seconds: how long a worker trusts its view of a skill's production version and
        running test; a promotion reaches every worker within this (0: read on every run).
    :param evolve_cooldown_seconds: least time between two evolutions of one skill.
    :param evolve_failure_window: how many recent failed runs the evolver learns from.
    :param outbox_sweep_seconds: period of the beat task that enqueues the evolutions failed runs stored
        (the outbox): the longest an evolution waits when its run could not enqueue it.
    :param run_sweep_seconds: period of the beat task that re-sends overdue runs (0: no sweep).
    :param run_overdue_seconds: a run with no final outcome and no news (no send, no outcome row) for this long
        is overdue: the sweep re-sends it and ``wre runs stuck`` lists it. Unset: twice the visibility timeout,
        so that a killed worker's runs come back through the broker first. It must exceed the longest a run
        waits in the queue, or a run still queued is sent twice (which records nothing twice, but costs an
        attempt).
    :param run_max_resends: re-sends of one run before the sweep gives up on it (``wre runs stuck`` still
        lists it).
    :param run_request_retention_seconds: the sweep deletes the producer's record of a run this long after it
        closed (the record holds the run's input; its outcomes stay). 0: kept for ever.
    :param queue_prefix: prepended to both queue names (``{prefix}skills``, ``{prefix}maintenance``), so that
        two deployments can share one broker.
    :param skills_queue: the runs' queue name; when set it replaces ``{prefix}skills``.
    :param maintenance_queue: the evolution and beat queue's name; when set it replaces ``{prefix}maintenance``.
    :param queue_type: RabbitMQ only: ``classic`` or ``quorum`` (replicated; declared with
        ``x-queue-type``). An existing queue keeps the type it was declared with.
    :param evolve_candidates: candidates a round of screening proposes (a later round: one fewer beside the
        previous survivor, at least one); 1 with one round skips the choice, not the screen.
    :param screen_failures: recent failed runs whose inputs make the replay set.
    :param screen_passes: recent passing runs whose inputs join the failed ones in the replay set (to catch
        regressions).
    :param screen_max_calls: agent calls one screening may spend (the parent's replays included); the replay
        set is cut to fit. It must pay for the smallest screening (:func:`smallest_screening`: 90 calls at
        the defaults).
    :param screen_generations: rounds of search in one screening: each later round proposes its candidates
        from the previous round's survivor (when it beat the parent on its replays) and keeps that survivor
        among them; the calls are split between the rounds.
    :param screen_budget_share: screening calls stay within this share of live runs; an evolution that would
        exceed it waits for more live traffic.
    :param screen_budget_scope: whose live runs pay: ``fleet`` (default) the share of every skill's live runs,
        less every skill's screening calls, so a failing skill can spend what skills that need no screening
        leave (one skill at most twice its own share plus one screening); ``skill`` its own runs only.
    :param screen_alpha: the one-sided sign test's level: a candidate enters the live test only if it beats
        its parent on the replay set at this level (a filter; the live test keeps the error guarantee).
    :param task_events: Celery task events (sent, received, started, succeeded, ...) and the ``STARTED`` state in
        the result backend, for Flower and ``celery events``. Off by default: they cost a broker publish per task
        state and a result-backend write per task, and nothing in wre reads them. Flower turns events on in the
        workers it sees by itself (its ``enable_events`` option, on by default, every few seconds); set this to
        1 to have them from a worker's first task (docker-compose.yml does, since it runs Flower).
    :param llm_base_url: OpenAI-compatible server for the ``llm`` agent and evolver.
    :param llm_model: default model name.
    :param llm_api_key: API key; never logged, never in kwargs or rows.
    """

    model_config = SettingsConfigDict(env_prefix="WRE_", extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    result_backend: str = ""
    react_mode: bool = True
    react_max_iter: int = 3
    react_fidelity: float = 0.90
    react_backoff_seconds: float = 0.0
    ab_policy: str = "sequential"
    ab_eval_seconds: float = 5.0
    ab_alpha: float = 0.05
    ab_min_trials_per_arm: int = 20
    ab_max_trials_per_arm: int = 1000
    ab_min_margin: float = 0.0
    ab_min_detectable_lift: float = 0.05
    ab_srm_p_value: float = 0.001
    ab_trial_slack_seconds: float = 30.0
    guard_holdout_share: float = 0.10
    guard_alpha: float = 0.01
    guard_units: int = 5000
    guard_min_units: int = 20
    # NoDecode: the environment's plain comma list reaches the validator below undecoded.
    python_skill_modules: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["skills"])
    max_context_bytes: int = DEFAULT_MAX_CONTEXT_BYTES
    visibility_timeout_seconds: float = DEFAULT_VISIBILITY_TIMEOUT_SECONDS
    default_time_limit_seconds: float = 60.0
    production_cache_seconds: float = 2.0
    evolve_cooldown_seconds: float = 30.0
    evolve_failure_window: int = 20
    outbox_sweep_seconds: float = 10.0
    run_sweep_seconds: float = Field(default=60.0, ge=0)
    run_overdue_seconds: float | None = Field(default=None, gt=0)
    run_max_resends: int = Field(default=3, ge=0)
    run_request_retention_seconds: float = Field(default=7 * 24 * 3600.0, ge=0)
    queue_prefix: Annotated[str, Field(pattern=QUEUE_NAME_PATTERN)] = ""
    skills_queue: Annotated[str, Field(pattern=QUEUE_NAME_PATTERN)] = ""
    maintenance_queue: Annotated[str, Field(pattern=QUEUE_NAME_PATTERN)] = ""
    queue_type: Literal["classic", "quorum"] = "classic"
    evolve_candidates: int = Field(default=4, ge=1, le=16)
    screen_failures: int = Field(default=20, ge=1, le=1000)
    screen_passes: int = Field(default=5, ge=0, le=1000)
    screen_max_calls: int = Field(default=100, ge=2, le=10_000)
    screen_generations: int = Field(default=3, ge=1, le=8)
    screen_budget_share: float = Field(default=0.2, ge=0.0, le=10.0)
    screen_budget_scope: Literal["fleet", "skill"] = "fleet"
    screen_alpha: float = Field(default=0.2, gt=0.0, lt=1.0)
    task_events: bool = False
    llm_base_url: str = "http://127.0.0.1:11434/v1"
    llm_model: str = "llama3.1"
    llm_api_key: SecretStr = SecretStr("")

    @field_validator("database_url", mode="after")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # Refused here, in one line, rather than as a driver's ImportError at the first query.
        try:
            backend = make_url(value).get_backend_name()
        except ArgumentError:
            raise ValueError(
                "not a database URL; expected postgresql://user@host/db or sqlite:///path.db"
            ) from None
        if backend not in DATABASE_BACKENDS:
            raise ValueError(
                f"{backend}:// is not supported; wre stores in {' or '.join(DATABASE_BACKENDS)} "
                "(postgresql://user@host/db, sqlite:///path.db)"
            )
        return value

    @field_validator("ab_policy", mode="after")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        # A test scheduled with a policy the evaluator refuses would never be decided.
        if value not in AB_POLICIES:
            raise ValueError(f"WRE_AB_POLICY must be one of {', '.join(AB_POLICIES)}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _usable_queues(self) -> Settings:
        for name in (self.skills_queue_name, self.maintenance_queue_name):
            if name.startswith("amq."):
                raise ValueError(f"queue name {name!r}: RabbitMQ reserves names that start with 'amq.'")
        # One queue for both would let evolution wait behind a backlog of runs, or the reverse.
        if self.skills_queue_name == self.maintenance_queue_name:
            raise ValueError(f"the skills and maintenance queues must differ, both are {self.skills_queue_name!r}")
        return self

    @model_validator(mode="after")
    def _screening_fits(self) -> Settings:
        # A screening that its own cap cannot pay for would never run: evolution would wait for ever.
        if self.screen_max_calls < self.smallest_screening:
            raise ValueError(
                f"WRE_SCREEN_MAX_CALLS={self.screen_max_calls} cannot pay for one screening: "
                f"{self.screen_generations} round(s) of {self.evolve_candidates} candidate(s) and the parent, "
                f"{MIN_REPLAY_INPUTS} inputs each, take {self.smallest_screening} calls"
            )
        return self

    @property
    def smallest_screening(self) -> int:
        return smallest_screening(self.evolve_candidates, self.screen_generations)

    @field_validator("react_max_iter", mode="after")
    @classmethod
    def _clamp_iterations(cls, value: int) -> int:
        low, high = REACT_MAX_ITER_BOUNDS
        return max(low, min(high, value))

    @field_validator("react_fidelity", mode="after")
    @classmethod
    def _clamp_fidelity(cls, value: float) -> float:
        return max(0.0, min(1.0, value))

    @field_validator("python_skill_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        # Accept the plain comma list an operator types, as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def effective_run_overdue_seconds(self) -> float:
        return self.run_overdue_seconds or 2 * self.visibility_timeout_seconds

    @property
    def skills_queue_name(self) -> str:
        return self.skills_queue or f"{self.queue_prefix}skills"

    @property
    def maintenance_queue_name(self) -> str:
        return self.maintenance_queue or f"{self.queue_prefix}maintenance"

    @property
    def dead_letter_queue_name(self) -> str:
        """Where RabbitMQ puts the messages a worker rejected as malformed (docs/OPERATIONS.md)."""
        return f"{self.skills_queue_name}.dead"

    @property
    def effective_result_backend(self) -> str | None:
        if self.result_backend == "disabled":
            return None
        if self.result_backend:
            return self.result_backend
        # RabbitMQ stores no results: Celery's rpc backend sends each back to its producer (docs/OPERATIONS.md).
        if self.broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
            return "rpc://"
        return self.broker_url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
