"""PatternMemory: the one gateway to wre's store, with the seed plan's method names.

A facade over small stores, one per concept, that share one ``Store`` handle (the engine): the catalog
(skills, variations, production), the outcomes (attempts and learning events), the A/B tests and their trial
ledger, the lifecycle (what verdicts do to production), the counters, and the read-only figures. Each
method is one short transaction on a process-wide engine, so one instance may be shared by every thread of a
worker. SQL goes only through SQLAlchemy statements with bound parameters.

The promotion policy comes from the floor above (db knows no statistics): whoever builds the store hands it
in; a store built with its URL only (as the seed builds it) finds the configured default that the installed
package offers under the entry point ``wre.promotion_policy``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from sqlalchemy import Engine

from db import figures
from db.abtests import AbTestConflictError, AbTests, NoPolicyError, PromotionPolicy, VariationCheck, Verdict
from db.catalog import Catalog
from db.counters import Counters
from db.lifecycle import Lifecycle
from db.outcomes import Outcomes
from db.records import AbTestRecord, CohortRecord, Conclusion, LearningEventRecord, OutcomeRecord
from db.store import Store
from db.trials import Trials

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


class PatternMemory(Store):
    """The store of skills, variations, outcomes, A/B tests, learning events and counters.

    :param url_or_engine: a SQLAlchemy URL (``postgresql://…`` uses psycopg 3) or an Engine.
    :param policy: the promotion policy, ``policy(test, cohort, **overrides) -> verdict``; needed only by the
        decisions (:meth:`check_ab_promotion`, :meth:`ab_verdict`, :meth:`evaluate_running_tests`). None: the
        configured default (``WRE_AB_POLICY`` at wre's settings), loaded at the first decision.
    :param policy_name: recorded on tests this instance schedules; None: the policy's name.
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
        self.counters = Counters(self)
        self.catalog = Catalog(self)
        self.trials = Trials(self)
        self.outcomes = Outcomes(self)
        self.tests = AbTests(self, self.catalog, self.trials, variation_check)
        self.lifecycle = Lifecycle(self, self.catalog, self.trials)
        # Delegated as they are (each store's method, its signature and its docstring).
        self.increment_counter = self.counters.increment_counter
        self.add_to_counters = self.counters.add_to_counters
        self.get_counter = self.counters.get_counter
        self.get_counters = self.counters.get_counters
        self.register_skill = self.catalog.register_skill
        self.register_skills = self.catalog.register_skills
        self.store_variation = self.catalog.store_variation
        self.lineage = self.catalog.lineage
        self.production_history = self.catalog.production_history
        self.get_skill = self.catalog.get_skill
        self.list_skills = self.catalog.list_skills
        self.get_variation = self.catalog.get_variation
        self.list_variations = self.catalog.list_variations
        self.get_production = self.catalog.get_production
        self.assign_trial = self.trials.assign_trial
        self.assign_trials = self.trials.assign_trials
        self.cohorts = self.trials.cohorts
        self.record_attempt = self.outcomes.record_attempt
        self.store_outcome = self.outcomes.store_outcome
        self.record_learning_event = self.outcomes.record_learning_event
        self.get_evolution_history = self.outcomes.get_evolution_history
        self.finished_runs = self.outcomes.finished_runs
        self.latest_event_id = self.outcomes.latest_event_id
        self.learning_events_since = self.outcomes.learning_events_since
        self.recent_failures = self.outcomes.recent_failures
        self.sweep_evolution_outbox = self.outcomes.sweep_evolution_outbox
        self.pending_evolutions = self.outcomes.pending_evolutions
        self.run_outcomes = self.outcomes.run_outcomes
        self.get_ab_test = self.tests.get_ab_test
        self.running_test = self.tests.running_test
        self.running_routes = self.tests.running_routes
        self.get_active_ab_test = self.tests.get_active_ab_test
        self.list_ab_tests = self.tests.list_ab_tests
        self.record_ab_outcome = self.tests.record_ab_outcome
        self.claim_evolution = self.tests.claim_evolution
        self.promote_variation = self.lifecycle.promote_variation
        self.archive_variation = self.lifecycle.archive_variation
        self.stop_ab_test = self.lifecycle.stop_ab_test
        self.rollback_skill = self.lifecycle.rollback_skill

    @property
    def policy_name(self) -> str:
        """The name new tests are scheduled under: as built, else the policy's own (or the default's)."""
        if self._policy_name is None:
            try:
                policy = self.require_policy()
            except NoPolicyError:
                return DEFAULT_POLICY_NAME
            self._policy_name = str(getattr(policy, "name", DEFAULT_POLICY_NAME))
        return self._policy_name

    def require_policy(self) -> PromotionPolicy:
        if self.policy is None:
            self.policy = default_policy()
        return self.policy

    def schedule_ab_test(
        self,
        skill_name: str,
        control_version: str,
        treatment_version: str,
        sample_size_target: int = 20,
        policy: str | None = None,
    ) -> int:
        """Start a test of ``treatment_version`` against ``control_version``; returns the test id (see
        ``AbTests.schedule_ab_test``). ``policy``: the policy it is decided by; None: this store's."""
        chosen = policy or self.policy_name
        return self.tests.schedule_ab_test(
            skill_name, control_version, treatment_version, sample_size_target, chosen
        )

    def check_ab_promotion(self, test_id: int, min_margin: float = 0.10) -> str | None:
        """The seed's call: ``'treatment'`` (promote), ``'control'`` (treatment lost) or None (keep going, or
        inconclusive), from the configured policy with ``min_margin`` as its margin; nothing is acted on."""
        winner = self.ab_verdict(test_id, min_margin=min_margin)["winner"]
        return winner if winner in ("control", "treatment") else None

    def ab_verdict(self, test_id: int, min_margin: float | None = None) -> dict[str, Any]:
        """Ask the configured policy about one test, without acting; ``min_margin`` overrides its floor."""
        return self.tests.verdict(test_id, self.require_policy(), min_margin)

    def evaluate_running_tests(self) -> list[Conclusion]:
        """Decide every running test and guard the policy can decide now, and apply each verdict (see
        ``Lifecycle.evaluate_running_tests``)."""
        return self.lifecycle.evaluate_running_tests(self.require_policy())

    def get_telemetry_dashboard(self, window: int = figures.DEFAULT_FIDELITY_WINDOW) -> dict[str, Any]:
        """The seed's dashboard and wre's figures (see ``figures.telemetry_dashboard``)."""
        return figures.telemetry_dashboard(self, window)

    def get_skill_dashboard(self, skill_name: str, window: int = figures.DEFAULT_FIDELITY_WINDOW) -> dict[str, Any]:
        return figures.skill_dashboard(self, skill_name, window)

    def get_skill_metrics(self, skill_name: str, days: float = 7) -> dict[str, Any]:
        """The skill's figures of the last ``days`` days; the gate's "median fidelity" (see
        ``figures.skill_metrics``)."""
        return figures.skill_metrics(self, skill_name, days)
