"""Every setting wre reads, in one place (environment variables with the prefix ``WRE_``).

Each has a range, checked when a process first reads its settings: the worker, beat and Flower when Celery
imports ``worker.app``, a producer when it imports ``worker.client``, the ``wre`` command before any
command runs. A value out of range is refused in one line naming the variable, never clamped: an operator
who typed ``WRE_REACT_MAX_ITER=50`` learns it at start, not from a worker quietly running 10. What an
operator never needs to change is a named constant in the module that uses it, not a setting.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

REACT_MAX_ITER_BOUNDS = (1, 10)
# The promotion policies a test may be scheduled with in production. scheduler/policies.py also has the
# seed's ``margin`` rule, kept for comparison (bench, ``decide(policy="margin")``): it promotes equal arms
# most of the time, so it is no choice for WRE_AB_POLICY. worker/ cannot import scheduler/; a test keeps
# these among its policies.
AB_POLICIES = ("sequential",)
# SQLAlchemy drivers wre installs; a bare postgres:// or postgresql:// URL is run through psycopg 3 (db/engine.py).
DATABASE_DRIVERS = ("postgres", "postgresql", "postgresql+psycopg", "sqlite", "sqlite+pysqlite")
BROKER_SCHEMES = ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory")
# Queue names (and the prefix) as RabbitMQ and Redis both take them; RabbitMQ reserves "amq.".
QUEUE_NAME_PATTERN = r"^[A-Za-z0-9_.:-]{0,100}$"
MODULE_NAME_PATTERN = r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$"
HTTP_URL_PATTERN = r"^https?://[^/\s]+"
# What each pattern asks for, in words.
PATTERNS = {
    QUEUE_NAME_PATTERN: "at most 100 letters, digits and _.:-",
    MODULE_NAME_PATTERN: "module names, comma-separated (skills, acme.skills)",
    HTTP_URL_PATTERN: "an http(s) URL (http://host:port/v1)",
}
# The shape of a screening (worker/screening.py): candidates a first round proposes, rounds of search, and the
# fewest replay inputs that can show a difference (six wins out of six is p = 1/64 one-sided).
SCREEN_CANDIDATES = 4
SCREEN_GENERATIONS = 3
MIN_REPLAY_INPUTS = 6
# The floor of WRE_SCREEN_MAX_CALLS, 90 calls: each round replays the parent and four others on six inputs (a
# later round: three new candidates and the previous round's survivor).
SMALLEST_SCREENING = MIN_REPLAY_INPUTS * SCREEN_GENERATIONS * (SCREEN_CANDIDATES + 1)
DAY = 24 * 3600.0
# Settings whose value may hold a password: errors name them, never repeat them.
UNSHOWN = frozenset({"database_url", "broker_url", "result_backend", "llm_api_key"})


class SettingsError(ValueError):
    """Settings a process cannot start with; the message is one line naming each variable at fault."""


class Settings(BaseSettings):
    """wre's configuration. docs/OPERATIONS.md lists every setting with its range and meaning (one table, not
    repeated here); the comments below say why a bound or a default is what it is."""

    # An empty variable is an unset one: `export WRE_X=` means the default, not a parse error.
    model_config = SettingsConfigDict(env_prefix="WRE_", extra="forbid", env_ignore_empty=True)

    database_url: str = "sqlite:///wre.db"
    broker_url: str = "redis://127.0.0.1:6379/0"
    result_backend: str = ""
    react_mode: bool = True
    react_max_iter: int = Field(3, ge=REACT_MAX_ITER_BOUNDS[0], le=REACT_MAX_ITER_BOUNDS[1])
    react_fidelity: float = Field(0.90, ge=0.0, le=1.0)
    ab_policy: Literal["sequential"] = "sequential"
    # At least a second: beat sends one round per period, and a period of 0 floods the maintenance queue.
    ab_eval_seconds: float = Field(5.0, ge=1.0, le=3600.0)
    ab_min_trials_per_arm: int = Field(20, ge=1, le=100_000)
    ab_max_trials_per_arm: int = Field(1000, ge=1, le=10_000_000)
    guard_holdout_share: float = Field(0.10, ge=0.0, le=0.5)
    guard_units: int = Field(5000, ge=1, le=10_000_000)
    guard_min_units: int = Field(20, ge=1, le=1_000_000)
    # NoDecode: the environment's plain comma list reaches the validator below undecoded.
    python_skill_modules: Annotated[list[Annotated[str, Field(pattern=MODULE_NAME_PATTERN)]], NoDecode] = Field(
        default_factory=lambda: ["skills"]
    )
    max_context_bytes: int = Field(256 * 1024, ge=1024, le=64 * 1024 * 1024)
    # Must exceed the longest attempt and the longest countdown wre schedules (infrastructure backoff up to 30 s,
    # an LLM server's Retry-After up to 300 s), or a message still running is delivered twice (recorded once, but
    # an attempt spent).
    visibility_timeout_seconds: float = Field(3600.0, ge=1.0, le=7 * DAY)
    default_time_limit_seconds: float = Field(60.0, gt=0.0, le=DAY)
    production_cache_seconds: float = Field(2.0, ge=0.0, le=3600.0)
    # Every store connection's lock and statement timeouts (Postgres): a lock held elsewhere or a runaway query
    # ends as an error the retry layer retries, never a stalled worker. Migrations run without them.
    db_lock_timeout_seconds: float = Field(2.0, ge=0.1, le=3600.0)
    db_statement_timeout_seconds: float = Field(60.0, ge=1.0, le=DAY)
    evolve_cooldown_seconds: float = Field(30.0, ge=0.0, le=7 * DAY)
    run_sweep_seconds: float = Field(60.0, ge=0.0, le=DAY)
    # Unset: twice the visibility timeout (the broker redelivers first). It must exceed the longest a run waits
    # in the queue, or a queued run is sent twice.
    run_overdue_seconds: float | None = Field(None, ge=1.0, le=30 * DAY)
    run_request_retention_seconds: float = Field(7 * DAY, ge=0.0, le=366 * DAY)
    queue_prefix: str = Field("", pattern=QUEUE_NAME_PATTERN)
    skills_queue: str = Field("", pattern=QUEUE_NAME_PATTERN)
    maintenance_queue: str = Field("", pattern=QUEUE_NAME_PATTERN)
    queue_type: Literal["classic", "quorum"] = "classic"
    screen_max_calls: int = Field(100, ge=SMALLEST_SCREENING, le=10_000)
    screen_budget_share: float = Field(0.2, ge=0.0, le=10.0)
    # Off: events cost a publish per task state and a result write per task, and wre reads none (Flower turns
    # them on in the workers it sees).
    task_events: bool = False
    llm_base_url: str = Field("http://127.0.0.1:11434/v1", pattern=HTTP_URL_PATTERN)
    llm_model: str = Field("llama3.1", min_length=1)
    llm_api_key: SecretStr = SecretStr("")

    def __init__(self, **values: Any) -> None:
        """Read the environment (``values`` take precedence).

        :raises SettingsError: a setting out of range or unusable, in one line naming each variable at fault.
        """
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise SettingsError(describe(error)) from None

    @field_validator("database_url", mode="after")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # Refused here, in one line, rather than as a driver's ImportError at the first query.
        try:
            driver = make_url(value).drivername
        except ArgumentError:
            raise ValueError("not a database URL; expected postgresql://user@host/db or sqlite:///path.db") from None
        if driver not in DATABASE_DRIVERS:
            raise ValueError(
                f"{driver}:// is not supported; wre stores in Postgres through psycopg 3 or in SQLite "
                "(postgresql://user@host/db, sqlite:///path.db)"
            )
        return value

    @field_validator("broker_url", mode="after")
    @classmethod
    def _supported_broker(cls, value: str) -> str:
        if value.split("://", 1)[0] not in BROKER_SCHEMES or "://" not in value:
            raise ValueError("not a broker URL wre runs on; expected redis://host:6379/0 or amqp://user@host//")
        return value

    @field_validator("result_backend", mode="after")
    @classmethod
    def _backend_url(cls, value: str) -> str:
        if value not in ("", "disabled") and "://" not in value:
            raise ValueError("expected empty (the default), disabled, or a Celery backend URL such as redis://host/1")
        return value

    @field_validator("run_sweep_seconds", mode="after")
    @classmethod
    def _sweep_period(cls, value: float) -> float:
        if 0 < value < 1:  # a period of a few milliseconds would flood the maintenance queue
            raise ValueError("is out of range: must be 0 (no sweep) or within [1, 86400]")
        return value

    @field_validator("python_skill_modules", mode="before")
    @classmethod
    def _split_modules(cls, value: object) -> object:
        # Accept the plain comma list an operator types, as well as a JSON list.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        pairs = (
            ("ab_min_trials_per_arm", "ab_max_trials_per_arm"),
            ("guard_min_units", "guard_units"),
        )
        for low, high in pairs:
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"{env_name(low)}={getattr(self, low)} exceeds {env_name(high)}={getattr(self, high)}"
                )
        names = "WRE_QUEUE_PREFIX, WRE_SKILLS_QUEUE, WRE_MAINTENANCE_QUEUE"
        for name in (self.skills_queue_name, self.maintenance_queue_name, self.evaluation_queue_name):
            if name.startswith("amq."):
                raise ValueError(f"{names}: queue name {name!r}: RabbitMQ reserves names that start with 'amq.'")
        # One queue for two jobs would let evolution wait behind a backlog of runs, or a verdict behind either.
        queues = (self.skills_queue_name, self.maintenance_queue_name, self.evaluation_queue_name)
        if len(set(queues)) < len(queues):
            raise ValueError(f"{names}: the skills, maintenance and evaluation queues must differ, got {queues}")
        return self

    @property
    def store_url(self) -> str:
        """The database URL every store of a process uses: on Postgres, with the lock and statement timeouts in
        the connection's options (no statement per transaction). A URL that sets ``options`` itself is kept."""
        url = make_url(self.database_url)
        if url.get_backend_name() != "postgresql" or "options" in url.query:
            return self.database_url
        options = (
            f"-c lock_timeout={round(self.db_lock_timeout_seconds * 1000)} "
            f"-c statement_timeout={round(self.db_statement_timeout_seconds * 1000)}"
        )
        return url.update_query_dict({"options": options}).render_as_string(hide_password=False)

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
    def evaluation_queue_name(self) -> str:
        """Beat's deciding task alone (tests and guards), so that no evolution or screening delays a verdict."""
        return f"{self.queue_prefix}evaluation"

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


def env_name(field: str) -> str:
    return f"WRE_{field.upper()}"


def _number(value: Any) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _interval(field: str) -> str:
    """A field's range as ``[1, 10]`` or ``(0, 86400]``, read from its constraints."""
    bounds: dict[str, Any] = {}
    for constraint in Settings.model_fields[field].metadata:
        for key in ("gt", "ge", "lt", "le"):
            if getattr(constraint, key, None) is not None:
                bounds[key] = getattr(constraint, key)
    low = f"[{_number(bounds['ge'])}" if "ge" in bounds else f"({_number(bounds['gt'])}"
    high = f"{_number(bounds['le'])}]" if "le" in bounds else f"{_number(bounds['lt'])})"
    return f"{low}, {high}"


def describe(error: ValidationError) -> str:
    """One line naming every variable at fault, e.g. ``WRE_AB_EVAL_SECONDS=0 is out of range: must be within
    [1, 3600]``; a value that may hold a password is not repeated."""
    parts = []
    for item in error.errors(include_url=False):
        field = str(item["loc"][0]) if item["loc"] else ""
        message = item["msg"].removeprefix("Value error, ")
        if not field:  # a check across settings: its message names them
            parts.append(message)
            continue
        name = env_name(field)
        if field in UNSHOWN:
            parts.append(f"{name}: {message}")
            continue
        shown = f"{name}={item['input']}" if isinstance(item["input"], str | int | float) else name
        if item["type"] in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            parts.append(f"{shown} is out of range: must be within {_interval(field)}")
        elif item["type"] == "literal_error":
            parts.append(f"{shown} is out of range: must be {item['ctx']['expected']}")
        elif item["type"] == "string_pattern_mismatch":
            parts.append(f"{shown} is not valid: must be {PATTERNS[item['ctx']['pattern']]}")
        elif item["type"] == "extra_forbidden":
            parts.append(f"{name} is not a setting")
        elif item["type"] == "value_error" and message.startswith("is "):
            parts.append(f"{shown} {message}")
        else:
            parts.append(f"{shown} is not valid: {message}")
    return "; ".join(parts)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment (:class:`SettingsError` if one is refused)."""
    return Settings()
