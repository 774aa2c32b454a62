"""Plain, typed records that PatternMemory takes and returns (no ORM objects leave db/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class OutcomeRecord:
    """One scored attempt, as the worker hands it to storage.

    ``final`` marks the attempt that ended its run (a success, or the last allowed attempt).
    ``test_id``/``arm`` are set when the run was routed through a running A/B test.
    """

    run_id: str
    attempt: int
    skill_name: str
    variation_id: str
    agent: str
    success: bool
    execution_success: bool
    pattern_fidelity: float
    failed_at_step: str | None = None
    error: str | None = None
    step_results: list[Any] = field(default_factory=list)
    input_context: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    execution_time_ms: float = 0.0
    test_id: int | None = None
    arm: str | None = None
    final: bool = False
    token_usage: dict[str, Any] | None = None
    request_digest: str | None = None
    result: Any = None
    evolve_pending: bool = False


@dataclass(frozen=True)
class LearningEventRecord:
    skill_name: str
    event_type: str
    variation_id: str | None = None
    fidelity_before: float | None = None
    fidelity_after: float | None = None
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    event_id: int | None = None
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


@dataclass(frozen=True)
class AbTestRecord:
    test_id: int
    skill_name: str
    control_version: str
    treatment_version: str
    sample_size_target: int
    control_trials: int
    control_successes: int
    treatment_trials: int
    treatment_successes: int
    control_fidelity_sum: float
    treatment_fidelity_sum: float
    status: str
    policy: str
    winner: str | None
    started_at: datetime | None
    completed_at: datetime | None
    decided_at: datetime | None
    decision: dict[str, Any] | None
    kind: str = "test"
    treatment_share: float = 0.5
    parent_test_id: int | None = None
    health: dict[str, Any] | None = None

    @property
    def is_guard(self) -> bool:
        return self.kind == "guard"

    @property
    def control_fidelity(self) -> float | None:
        """Mean first-attempt fidelity of the control arm (None before its first trial)."""
        return self.control_fidelity_sum / self.control_trials if self.control_trials else None

    @property
    def treatment_fidelity(self) -> float | None:
        return self.treatment_fidelity_sum / self.treatment_trials if self.treatment_trials else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("started_at", "completed_at", "decided_at"):
            value = data[key]
            data[key] = value.isoformat() if value else None
        data["control_fidelity"] = self.control_fidelity
        data["treatment_fidelity"] = self.treatment_fidelity
        return data


@dataclass(frozen=True)
class Conclusion:
    """What an evaluation round did to one test."""

    test_id: int
    skill_name: str
    winner: str
    promoted_variation: str | None
    archived_variation: str | None
    decision: dict[str, Any]
    action: str = ""


@dataclass(frozen=True)
class ArmAggregate:
    """One arm's units in a test's complete prefix, aggregated (``y`` successes, ``m`` trials per unit).

    ``assigned_units`` counts every unit ever assigned to the arm (the sample-ratio check reads it);
    the other figures count only the complete prefix.
    """

    assigned_units: int = 0
    units: int = 0
    trials: int = 0
    successes: int = 0
    sum_trials_sq: int = 0
    sum_successes_sq: int = 0
    sum_cross: int = 0


@dataclass(frozen=True)
class CohortRecord:
    """What the trial ledger says about one test at ``now``.

    ``cutoff``: the assignment time of the oldest pending trial still within its deadline (None when none
    is pending); only trials assigned before it count. ``expired``: trials past their deadline without an
    outcome, counted as failures of their arm (when before the cutoff). ``excluded``: trials done (an outcome,
    or expired) but assigned at or after the cutoff, waiting for the cohort before them to complete.
    """

    test_id: int
    control: ArmAggregate = field(default_factory=ArmAggregate)
    treatment: ArmAggregate = field(default_factory=ArmAggregate)
    cutoff: datetime | None = None
    pending: int = 0
    expired: int = 0
    excluded: int = 0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cutoff"] = self.cutoff.isoformat() if self.cutoff else None
        return data


@dataclass(frozen=True)
class ProductionChangeRecord:
    """One change of a skill's production version (the lineage ``wre skill history`` shows)."""

    change_id: int
    skill_name: str
    variation_id: str
    previous_variation_id: str | None
    reason: str
    test_id: int | None
    created_at: datetime | None
