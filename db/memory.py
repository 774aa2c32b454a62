"""PatternMemory: the one gateway to wre's store, with the seed plan's method names.

Each method is one short transaction on a process-wide engine, so one instance may be shared by every
thread of a worker. SQL goes only through SQLAlchemy statements with bound parameters.

The parts live in their own modules (counters, catalog, outcomes, abtests, dashboard); this class only
puts them together and takes the promotion policy from the floor above (db knows no statistics).
"""

from __future__ import annotations

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
]


class PatternMemory(DashboardStore):
    """The store of skills, variations, outcomes, A/B tests, learning events and counters.

    :param url_or_engine: a SQLAlchemy URL (``postgresql://…`` uses psycopg 3) or an Engine.
    :param policy: the promotion policy, ``policy(test, **overrides) -> verdict``; needed only by
        :meth:`check_ab_promotion` and :meth:`evaluate_running_tests`.
    :param policy_name: recorded on tests this instance schedules.
    :param variation_check: ``check(skill_name, content)`` raising ValueError for content that is not a valid
        variation of the skill; run when a test is scheduled (the worker floor injects the skill parser).
    """

    def __init__(
        self,
        url_or_engine: str | Engine,
        policy: PromotionPolicy | None = None,
        policy_name: str = "sequential",
        variation_check: VariationCheck | None = None,
    ) -> None:
        super().__init__(url_or_engine)
        self.policy = policy
        self.policy_name = policy_name
        self.variation_check = variation_check
