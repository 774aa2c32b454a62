"""The six tables of wre, as typed SQLAlchemy 2 models.

Table and column names follow the seed plan (skill_outcomes, skill_variations, learning_events,
ab_test_assignments, telemetry_counters) plus ``skills`` and the columns DESIGN.md adds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# JSONB on Postgres (indexable, compact), plain JSON text elsewhere (SQLite for the embedded default).
JsonType = JSON().with_variant(JSONB(), "postgresql")

VARIATION_STATUSES = ("baseline", "testing", "promoted", "archived", "retired")
# "paused": a health check (sample-ratio mismatch) stopped the test's routing and verdicts until an operator acts.
TEST_STATUSES = ("running", "paused", "completed", "stopped")
# A test holds its skill's test slot while running or paused: no second test and no evolution meanwhile. A guard
# holds the guard slot: a test of the next candidate may run beside it (inside the guard's non-holdout share).
OPEN_TEST_STATUSES = ("running", "paused")
# "test": treatment vs production, decided by the promotion policy. "guard": after a promotion, the new
# production (treatment) vs a holdout on the previous production (control), watched for a regression.
TEST_KINDS = ("test", "guard")
ARMS = ("control", "treatment")
# The promotion policies scheduler/policies.py implements, by the name a test records (db/ cannot import the
# scheduler; tests/unit/test_settings.py keeps the lists equal). A test under any other name would stay open
# for ever: the evaluator refuses it each round.
POLICY_NAMES = ("sequential", "margin")
# Why production changed; one row per change in production_changes (the lineage).
PRODUCTION_REASONS = ("registration", "replace", "promotion", "manual", "rollback", "guard_rollback")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JsonType, list[Any]: JsonType}


class Skill(Base):
    """A registered skill and which variation production runs."""

    __tablename__ = "skills"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    default_agent: Mapped[str] = mapped_column(String(64))
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    production_variation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The production version before the last promotion: what `wre ab rollback` restores.
    previous_variation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class SkillVariation(Base):
    """One exact content of a skill; the id is a digest of the content, so same content, same id."""

    __tablename__ = "skill_variations"

    variation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    skill_name: Mapped[str] = mapped_column(ForeignKey("skills.name", ondelete="CASCADE"), index=True)
    parent_version: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variation_content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64), default="")
    test_status: Mapped[str] = mapped_column(String(16), default="testing")
    promoted: Mapped[bool] = mapped_column(Boolean, default=False)
    # Which runs the evolver learned from (run ids), so a variation can be traced to its evidence.
    learned_from: Mapped[list[Any]] = mapped_column(default=list)


class SkillOutcome(Base):
    """One scored attempt of one run. (run_id, attempt) is the idempotency key."""

    __tablename__ = "skill_outcomes"
    __table_args__ = (
        UniqueConstraint("run_id", "attempt", name="uq_skill_outcomes_run_attempt"),
        Index("ix_skill_outcomes_skill_time", "skill_name", "created_at"),
        Index("ix_skill_outcomes_test", "test_id"),
        # Recent failures (evolver) scan a skill's final attempts by id; windows of runs its first attempts.
        Index("ix_skill_outcomes_skill_final_id", "skill_name", "final", "id"),
        Index("ix_skill_outcomes_skill_attempt_id", "skill_name", "attempt", "id"),
        # The evolution outbox: only pending triggers are indexed, so the sweep's scan stays small.
        Index(
            "ix_skill_outcomes_evolve_pending",
            "skill_name",
            postgresql_where=text("evolve_pending"),
            sqlite_where=text("evolve_pending"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    skill_name: Mapped[str] = mapped_column(String(128))
    variation_id: Mapped[str] = mapped_column(String(64))
    agent: Mapped[str] = mapped_column(String(64))
    test_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm: Mapped[str | None] = mapped_column(String(16), nullable=True)
    success: Mapped[bool] = mapped_column(Boolean)
    execution_success: Mapped[bool] = mapped_column(Boolean)
    pattern_fidelity: Mapped[float] = mapped_column(Float)
    failed_at_step: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    step_results: Mapped[list[Any]] = mapped_column(default=list)
    input_context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    execution_time_ms: Mapped[float] = mapped_column(Float, default=0.0)
    token_usage: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    # A digest of the run's arguments: a run id reused with other arguments is refused, not answered.
    request_digest: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The final attempt's output as JSON (bounded): a repeated or redelivered run answers exactly, types kept.
    result: Mapped[Any] = mapped_column(JsonType, nullable=True)
    # The evolution outbox: a final failed attempt that should evolve its skill, until the sweep enqueues it.
    evolve_pending: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AbTestAssignment(Base):
    """An A/B test of a treatment variation against the production (control) variation."""

    __tablename__ = "ab_test_assignments"
    __table_args__ = (
        # At most one open test and one open guard per skill, enforced by the database so two concurrent
        # schedulers (or two promotions) cannot both succeed.
        Index(
            "uq_ab_test_open_per_skill_kind",
            "skill_name",
            "kind",
            unique=True,
            postgresql_where=text("status IN ('running', 'paused')"),
            sqlite_where=text("status IN ('running', 'paused')"),
        ),
        Index("ix_ab_test_status", "status"),
    )

    test_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    skill_name: Mapped[str] = mapped_column(ForeignKey("skills.name", ondelete="CASCADE"))
    control_version: Mapped[str] = mapped_column(String(64))
    treatment_version: Mapped[str] = mapped_column(String(64))
    sample_size_target: Mapped[int] = mapped_column(Integer, default=20)
    control_trials: Mapped[int] = mapped_column(Integer, default=0)
    control_successes: Mapped[int] = mapped_column(Integer, default=0)
    treatment_trials: Mapped[int] = mapped_column(Integer, default=0)
    treatment_successes: Mapped[int] = mapped_column(Integer, default=0)
    # Sums of first-attempt fidelity per arm: the before/after figures of a promotion.
    control_fidelity_sum: Mapped[float] = mapped_column(Float, default=0.0)
    treatment_fidelity_sum: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="running")
    policy: Mapped[str] = mapped_column(String(32), default="sequential")
    winner: Mapped[str | None] = mapped_column(String(16), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decision: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default="test", server_default="test")
    # The share of units routed to the treatment: 0.5 for a test, 1 - holdout share for a guard.
    treatment_share: Mapped[float] = mapped_column(Float, default=0.5, server_default="0.5")
    # A guard's test: the one whose promotion it watches.
    parent_test_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Health findings (a sample-ratio mismatch and its figures), set when the test was paused.
    health: Mapped[dict[str, Any] | None] = mapped_column(JsonType, nullable=True)


class AbTrial(Base):
    """The trial ledger: one row per run routed into a test, written when the run is assigned.

    A trial counts from assignment, not from its outcome: verdicts read the complete prefix of the ledger
    (trials assigned before the oldest one still pending), so slow outcomes cannot bias a test, and a trial
    pending past its deadline counts as a failure of its arm, so a lost run cannot stall one. ``unit_key`` is
    the unit of analysis: the producer's assignment key, or the run itself when it gave none.
    """

    __tablename__ = "ab_trials"
    __table_args__ = (
        # The evaluator's pending scan: the oldest pending trial per test, and how many there are.
        Index(
            "ix_ab_trials_pending",
            "test_id",
            "assigned_at",
            postgresql_where=text("completed_at IS NULL"),
            sqlite_where=text("completed_at IS NULL"),
        ),
        # An outcome completes every trial of its run (a guard's and the test's beside it) by run id.
        Index("ix_ab_trials_run", "run_id"),
    )

    test_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    unit_key: Mapped[str] = mapped_column(String(300))
    arm: Mapped[str] = mapped_column(String(16))
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    deadline: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    fidelity: Mapped[float | None] = mapped_column(Float, nullable=True)
    # False on a guard's trial whose run was served the candidate of the test running beside the guard: the
    # unit counts for the split (the SRM check) but its outcome is not the production version's.
    counted: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))


class ProductionChange(Base):
    """The lineage of a skill's production: every change, why, and what it replaced."""

    __tablename__ = "production_changes"
    __table_args__ = (Index("ix_production_changes_skill", "skill_name", "change_id"),)

    change_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    skill_name: Mapped[str] = mapped_column(String(128))
    variation_id: Mapped[str] = mapped_column(String(64))
    previous_variation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str] = mapped_column(String(32))
    test_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LearningEvent(Base):
    """Something the system learned or did: a promotion, an archive, a rollback, a finished ReAct run."""

    __tablename__ = "learning_events"
    __table_args__ = (Index("ix_learning_events_skill_type", "skill_name", "event_type"),)

    event_id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    skill_name: Mapped[str] = mapped_column(String(128))
    event_type: Mapped[str] = mapped_column(String(64))
    variation_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fidelity_before: Mapped[float | None] = mapped_column(Float, nullable=True)
    fidelity_after: Mapped[float | None] = mapped_column(Float, nullable=True)
    description: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TelemetryCounter(Base):
    """A counter split over shards: writers upsert a random shard, readers sum the shards.

    Every run bumps counters; a single row per counter would make every worker queue on one row lock.
    """

    __tablename__ = "telemetry_counters"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# The tables as Core objects, for the gateway's statements.
SKILLS = cast(Table, Skill.__table__)
VARIATIONS = cast(Table, SkillVariation.__table__)
OUTCOMES = cast(Table, SkillOutcome.__table__)
TESTS = cast(Table, AbTestAssignment.__table__)
EVENTS = cast(Table, LearningEvent.__table__)
COUNTERS = cast(Table, TelemetryCounter.__table__)
TRIALS = cast(Table, AbTrial.__table__)
LINEAGE = cast(Table, ProductionChange.__table__)


class RunRequest(Base):
    """A run as wre's producer enqueued it: what a sweep re-sends when the run never finished.

    Written once by the producer (``enqueue_skill``, ``wre run``); the worker never touches it (a run's progress
    is its outcome rows). ``closed_at`` is set by the sweep once the run has a final outcome or a stored result.
    """

    __tablename__ = "run_requests"
    __table_args__ = (Index("ix_run_requests_open", "closed_at", "last_sent_at"),)

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    skill_name: Mapped[str] = mapped_column(String(128))
    # The task's kwargs exactly as sent (the input context included): a re-send is the same message.
    kwargs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_sent_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    resends: Mapped[int] = mapped_column(Integer, default=0)
    closed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
