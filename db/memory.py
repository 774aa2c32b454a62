"""PatternMemory: the one gateway to wre's store, with the seed plan's method names.

Each method is one short transaction on a process-wide engine, so one instance may be shared by every
thread of a worker. SQL goes only through SQLAlchemy statements with bound parameters.

The parts live in their own modules (counters, catalog, outcomes, abtests, dashboard); this class only
puts them together and takes the promotion policy from the floor above (db knows no statistics): handed
in, or else the configured default that the installed package offers under the entry point
``wre.promotion_policy``.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from sqlalchemy import Engine

from db.abtests import AbTestConflictError, NoPolicyError, PromotionPolicy, VariationCheck, Verdict
from db.dashboard import DashboardStore
from db.records import AbTestRecord, CohortRecord, Conclusion, LearningEventRecord, OutcomeRecord

__all__ = [
    "AbTestConflictError",
    "AbTestRecord",
    "CohortRecord",
    "Conclusion",
    "LearningEventRecord",
    "NoPolicyError",
    "OutcomeRecord",
    "PatternMemory",
    "PromotionPolicy",
    "VariationCheck",
    "Verdict",
    "default_policy",
]

POLICY_ENTRY_POINTS = "wre.promotion_policy"
DEFAULT_POLICY_NAME = "sequential"


def default_policy() -> PromotionPolicy:
    """The configured promotion policy, found by its entry point (the floor above registers it)."""
    found = entry_points(group=POLICY_ENTRY_POINTS, name="default")
    if not found:
        raise NoPolicyError(
            "no promotion policy: build PatternMemory with policy=..., or install wre (`make install`) "
            f"so that its {POLICY_ENTRY_POINTS} entry point is found"
        )
    factory = next(iter(found)).load()
    policy: PromotionPolicy = factory()
    return policy


class PatternMemory(DashboardStore):
    """The store of skills, variations, outcomes, A/B tests, learning events and counters.

    :param url_or_engine: a SQLAlchemy URL (``postgresql://…`` uses psycopg 3) or an Engine.
    :param policy: the promotion policy, ``policy(test, **overrides) -> verdict``; needed only by the
        decisions (:meth:`check_ab_promotion`, :meth:`ab_verdict`, :meth:`evaluate_running_tests`). None: the
        configured default (``WRE_AB_POLICY`` at wre's settings), loaded at the first decision.
    :param policy_name: recorded on tests this instance schedules; None: the default policy's name.
    :param variation_check: ``check(skill_name, content)`` raising ValueError for content that is not a valid
        variation of the skill; run when a test is scheduled (the worker floor injects the skill parser).
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        policy: PromotionPolicy | None = None,
        policy_name: str | None = None,
        variation_check: VariationCheck | None = None,
    ) -> None:
        super().__init__(url_or_engine)
        self.policy = policy
        self._policy_name = policy_name
        self.variation_check = variation_check

    @property  # type: ignore[override]
    def policy_name(self) -> str:
        if self._policy_name is None:
            policy = self.policy
            if policy is None:
                try:
                    policy = self._require_policy()
                except NoPolicyError:
                    return DEFAULT_POLICY_NAME
            self._policy_name = str(getattr(policy, "name", DEFAULT_POLICY_NAME))
        return self._policy_name

    @policy_name.setter
    def policy_name(self, value: str) -> None:
        self._policy_name = value

    def _require_policy(self) -> PromotionPolicy:
        if self.policy is None:
            self.policy = default_policy()
        return self.policy
