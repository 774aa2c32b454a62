"""Deciding open A/B tests and guards: the configured policies bound to wre's settings, and one round.

For each running test the ledger's complete prefix (db/trials.py) comes in as per-arm unit aggregates; the
judge checks health first (a sample-ratio mismatch pauses the test, whatever its figures say), then asks the
promotion policy (a test) or the guard (after a promotion) and says what to do. db/lifecycle.py applies it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from db.memory import AbTestRecord, CohortRecord, Conclusion, PatternMemory, VariationCheck
from db.records import ArmAggregate
from scheduler.guard import guard_decide
from scheduler.health import srm_check
from scheduler.policies import decide_units
from scheduler.units import ArmUnits
from worker.settings import Settings

log = logging.getLogger(__name__)

# The policy's winner, as the action the store applies.
TEST_ACTIONS = {"treatment": "promote", "control": "archive", "inconclusive": "inconclusive"}
GUARD_ACTIONS = {"rollback": ("rollback", "control"), "confirm": ("confirm", "treatment")}


@dataclass(frozen=True)
class Judgement:
    """What to do with one open test now (``action`` None: keep going), and the figures behind it."""

    action: str | None
    winner: str | None
    guard_share: float = 0.0
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.figures)


def arm_units(arm: ArmAggregate) -> ArmUnits:
    return ArmUnits(**{f.name: getattr(arm, f.name) for f in fields(ArmUnits)})


class PromotionPolicy:
    """``policy(test, cohort, **overrides) -> Judgement``: health, then the test's policy or the guard.

    :param settings: supplies the per-arm minimum and maximum and the guard's sizes; the error rates are the
        scheduler's constants (policies.ALPHA, guard.GUARD_ALPHA, health.SRM_P_VALUE).
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def name(self) -> str:
        """The policy new tests are scheduled with, as ``WRE_AB_POLICY`` names it."""
        return self.settings.ab_policy

    def __call__(self, test: AbTestRecord, cohort: CohortRecord, **overrides: Any) -> Judgement:
        s = self.settings
        srm = srm_check(cohort.control.assigned_units, cohort.treatment.assigned_units, test.treatment_share)
        health = {"srm": srm.to_dict(), "cohort": cohort.to_dict()}
        if srm.mismatch:
            reason = (
                f"sample-ratio mismatch: {srm.control_units} control vs {srm.treatment_units} treatment units, "
                f"expected a treatment share of {test.treatment_share:.2f} "
                f"(e-value {srm.e_value:.3g}, anytime-valid p = {srm.p_value:.2g})"
            )
            return Judgement("pause", None, 0.0, {"reason": reason, **health})
        control, treatment = arm_units(cohort.control), arm_units(cohort.treatment)
        if test.is_guard:
            guard = guard_decide(
                production=treatment,
                holdout=control,
                holdout_share=1.0 - test.treatment_share,
                min_units=s.guard_min_units,
                guard_units=s.guard_units,
            )
            action, winner = GUARD_ACTIONS.get(guard.verdict or "", (None, None))
            return Judgement(action, winner, 0.0, {**guard.to_dict(), **health})
        params: dict[str, Any] = {"max_trials_per_arm": s.ab_max_trials_per_arm}
        if test.policy == "margin":
            # The seed's rule keeps its own figures: per-arm target and a 10-point margin.
            params["sample_size_target"] = test.sample_size_target
        else:
            params["min_trials_per_arm"] = s.ab_min_trials_per_arm
        decision = decide_units(control, treatment, policy=test.policy, **{**params, **overrides})
        action = TEST_ACTIONS.get(decision.winner or "")
        return Judgement(action, decision.winner, s.guard_holdout_share, {**decision.to_dict(), **health})


def promotion_memory(settings: Settings, variation_check: VariationCheck | None = None) -> PatternMemory:
    """A store that decides tests with the configured policy; one that schedules tests is handed the check of
    a treatment's content by its builder (the worker's skill parser: this floor does not import it)."""
    return PatternMemory(
        settings.store_url,
        policy=PromotionPolicy(settings),
        policy_name=settings.ab_policy,
        variation_check=variation_check,
    )


def run_evaluation_round(memory: PatternMemory) -> list[Conclusion]:
    """Decide what can be decided now; log and return each conclusion."""
    conclusions = memory.evaluate_running_tests()
    for conclusion in conclusions:
        log.info("A/B test %s of %s: %s", conclusion.test_id, conclusion.skill_name, conclusion.action)
    return conclusions
