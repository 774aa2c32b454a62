"""Plain, typed records that PatternMemory takes and returns (no ORM objects leave db/)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class SkillRecord:
    name: str
    description: str
    default_agent: str
    threshold: float | None
    production_variation_id: str | None
    previous_variation_id: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class VariationRecord:
    variation_id: str
    skill_name: str
    parent_version: str | None
    variation_content: str
    created_by: str
    test_status: str
    promoted: bool
    learned_from: list[Any]
    created_at: datetime | None = None


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
