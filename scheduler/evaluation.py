"""Deciding running A/B tests: the configured policy bound to wre's settings, and one evaluation round."""

from __future__ import annotations

import logging
from typing import Any

from db.memory import AbTestRecord, Conclusion, PatternMemory
from scheduler.policies import Decision, decide
from worker.settings import Settings

log = logging.getLogger(__name__)


class PromotionPolicy:
    """``policy(test, **overrides) -> Decision``: the policy a test was scheduled with, at wre's settings.

    :param settings: supplies alpha, the per-arm minimum and maximum, and the margin floor.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def __call__(self, test: AbTestRecord, **overrides: Any) -> Decision:
        params = self.parameters(test.policy, test.sample_size_target)
        params.update(overrides)
        return decide(
            test.control_successes,
            test.control_trials,
            test.treatment_successes,
            test.treatment_trials,
            policy=test.policy,
            **params,
        )

    def parameters(self, policy: str, sample_size_target: int) -> dict[str, Any]:
        s = self.settings
        if policy == "margin":
            # The seed's rule keeps its own figures: per-arm target and a 10-point margin.
            return {"sample_size_target": sample_size_target, "max_trials_per_arm": s.ab_max_trials_per_arm}
        return {
            "alpha": s.ab_alpha,
            "min_trials_per_arm": s.ab_min_trials_per_arm,
            "max_trials_per_arm": s.ab_max_trials_per_arm,
            "min_margin": s.ab_min_margin,
        }


def promotion_memory(settings: Settings) -> PatternMemory:
    """A store that can decide tests with the configured policy."""
    return PatternMemory(
        settings.database_url, policy=PromotionPolicy(settings), policy_name=settings.ab_policy
    )


def run_evaluation_round(memory: PatternMemory) -> list[Conclusion]:
    """Decide what can be decided now; log and return each conclusion."""
    conclusions = memory.evaluate_running_tests()
    for conclusion in conclusions:
        log.info(
            "A/B test %s of %s decided: %s", conclusion.test_id, conclusion.skill_name, conclusion.winner
        )
    return conclusions
