"""A/B tests: schedule one (under the skill's lock, against production), read them, count trials by hand,
ask a policy, claim an evolution. What verdicts do to production lives in db/lifecycle.py.

The statistics are not here: whoever builds the store hands the promotion policy in (db/memory.py), and the
check of a treatment's content (the floor that parses skills).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, exc, select

from db.catalog import Catalog
from db.models import ARMS, EVENTS, OPEN_TEST_STATUSES, POLICY_NAMES, TESTS, VARIATIONS, utcnow
from db.outcomes import insert_event
from db.records import AbTestRecord, LearningEventRecord
from db.store import Store, require_count, require_text
from db.trials import COUNT_UPDATE, Trials, count_parameters


class Verdict(Protocol):
    """What a policy says about one open test, read from its record and its ledger's complete prefix.

    ``action`` is what to do now: ``promote``, ``archive``, ``inconclusive`` (a test); ``rollback``,
    ``confirm`` (a guard); ``pause`` (a health check failed); None to keep going. ``winner`` is the seed's
    word for it ('treatment', 'control', 'inconclusive' or None). ``guard_share`` is the holdout share of
    the guard that a promotion starts (0: no guard).
    """

    @property
    def action(self) -> str | None: ...

    @property
    def winner(self) -> str | None: ...

    @property
    def guard_share(self) -> float: ...

    def to_dict(self) -> dict[str, Any]: ...


PromotionPolicy = Callable[..., Verdict]
"""Called as ``policy(test: AbTestRecord, cohort: CohortRecord, **overrides)``."""

VariationCheck = Callable[[str, str], None]
"""Called as ``check(skill_name, content)``; raises ValueError when the content is not a valid variation of
the skill (the floor that parses skills injects it: db/ cannot parse them)."""

log = logging.getLogger(__name__)
# The events an evolution ends with, one of them always (worker/evolution.py).
EVOLUTION_ENDS = ("variation_proposed", "evolution_refused", "evolution_failed")
# How long a claim holds without an end: longer than any screening should take, short enough that a skill
# whose evolving worker was killed evolves again the same hour.
EVOLUTION_LEASE_SECONDS = 900.0


class AbTestConflictError(ValueError):
    """The skill already has an open test (the database allows one at a time, and one guard beside it)."""


class NoPolicyError(RuntimeError):
    """A decision was asked of a PatternMemory built without a promotion policy."""


class AbTests:
    def __init__(
        self, store: Store, catalog: Catalog, trials: Trials, variation_check: VariationCheck | None = None
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.trials = trials
        self.variation_check = variation_check

    def schedule_ab_test(
        self,
        skill_name: str,
        control_version: str,
        treatment_version: str,
        sample_size_target: int = 20,
        policy: str = "sequential",
    ) -> int:
        """Start a test of ``treatment_version`` against ``control_version``; returns the test id.

        Under the skill's lock: the control must be the skill's production version now (a test against
        anything else would promote over a version nobody runs), the treatment another variation of the
        skill that parses as one, and the skill must have no open test. A guard may be running: the test then
        runs inside the guard's non-holdout share (see ``worker.runner.SkillRunner.resolve``); not a paused one.
        """
        require_text(skill_name, "skill name")
        require_text(control_version, "control version", max_length=64)
        require_text(treatment_version, "treatment version", max_length=64)
        require_count(sample_size_target, "sample_size_target", minimum=1)
        if control_version == treatment_version:
            raise ValueError("control and treatment must be different variations")
        if policy not in POLICY_NAMES:
            raise ValueError(f"unknown promotion policy {policy!r}; known: {', '.join(POLICY_NAMES)}")
        try:
            with self.store.transaction() as conn:
                skill = self.catalog.lock_skill(conn, skill_name)
                if self.paused_guard(conn, skill_name) is not None:
                    raise AbTestConflictError(
                        f"the guard of {skill_name!r} is paused on a health check: production is unconfirmed "
                        "until an operator stops it (`wre ab stop`)"
                    )
                if skill.production_variation_id != control_version:
                    raise AbTestConflictError(
                        f"control {control_version} is not the production version of {skill_name!r} "
                        f"(production is {skill.production_variation_id}): production changed meanwhile"
                    )
                treatment = conn.execute(
                    select(VARIATIONS.c.skill_name, VARIATIONS.c.variation_content).where(
                        VARIATIONS.c.variation_id == treatment_version
                    )
                ).first()
                if treatment is None or treatment.skill_name != skill_name:
                    raise ValueError(
                        f"variation {treatment_version!r} is not a variation of skill {skill_name!r}"
                    )
                if self.variation_check is not None:
                    self.variation_check(skill_name, treatment.variation_content)
                test_id = conn.execute(
                    TESTS.insert()
                    .values(
                        skill_name=skill_name,
                        control_version=control_version,
                        treatment_version=treatment_version,
                        sample_size_target=sample_size_target,
                        policy=policy,
                        status="running",
                        kind="test",
                        treatment_share=0.5,
                        started_at=utcnow(),
                    )
                    .returning(TESTS.c.test_id)
                ).scalar_one()
                self.catalog.mark(conn, treatment_version, "testing")
                return int(test_id)
        except exc.IntegrityError as error:
            raise AbTestConflictError(f"skill {skill_name!r} already has an open A/B test") from error

    def get_ab_test(self, test_id: int) -> AbTestRecord | None:
        with self.store.transaction() as conn:
            row = conn.execute(select(TESTS).where(TESTS.c.test_id == test_id)).first()
        return AbTestRecord(**row._mapping) if row else None

    def running_test(self, skill_name: str) -> AbTestRecord | None:
        """The skill's running test as a record (the richer answer behind :meth:`get_active_ab_test`), else its
        running guard."""
        guard, test = self.running_routes(skill_name)
        return test or guard

    def running_routes(self, skill_name: str) -> tuple[AbTestRecord | None, AbTestRecord | None]:
        """The skill's running guard and running test (each None if there is none): what routes its runs."""
        query = select(TESTS).where(TESTS.c.skill_name == skill_name, TESTS.c.status == "running")
        with self.store.transaction() as conn:
            records = [AbTestRecord(**row._mapping) for row in conn.execute(query)]
        guard = next((record for record in records if record.is_guard), None)
        test = next((record for record in records if not record.is_guard), None)
        return guard, test

    def get_active_ab_test(self, skill_name: str) -> dict[str, Any] | None:
        """The seed's call: the skill's running test as a dict of its columns, or None.

        A guard (after a promotion) is not an A/B test of a new variation: the seed's callers, who expect no
        running test once one is decided, do not see it here (``running_test`` does).
        """
        test = self.running_test(skill_name)
        if test is None or test.is_guard:
            return None
        columns = test.to_dict()
        return {**columns, "start_time": columns["started_at"]}  # the seed's name of started_at

    def list_ab_tests(self, status: str | None = None, skill_name: str | None = None) -> list[AbTestRecord]:
        query = select(TESTS).order_by(TESTS.c.test_id)
        if status is not None:
            query = query.where(TESTS.c.status == status)
        if skill_name is not None:
            query = query.where(TESTS.c.skill_name == skill_name)
        with self.store.transaction() as conn:
            return [AbTestRecord(**row._mapping) for row in conn.execute(query)]

    def record_ab_outcome(
        self, test_id: int, variant: str, success: bool, fidelity: float | None = None
    ) -> None:
        """Count one trial for ``variant`` ('control' or 'treatment') of a running test."""
        require_count(test_id, "test_id", minimum=1)
        if not isinstance(variant, str) or variant not in ARMS:
            raise ValueError(f"variant must be exactly 'control' or 'treatment', got {variant!r}")
        if not isinstance(success, bool):
            raise ValueError(f"success must be a bool, got {success!r}")
        if fidelity is None:
            fidelity = 1.0 if success else 0.0
        if not 0.0 <= fidelity <= 1.0:
            raise ValueError(f"fidelity must be within 0..1, got {fidelity}")
        with self.store.transaction() as conn:
            if conn.execute(COUNT_UPDATE, count_parameters(test_id, [(variant, success, fidelity)])).rowcount == 0:
                raise ValueError(f"A/B test {test_id} does not exist or is not running")
            # The verdicts read the ledger: a trial counted by hand is a completed unit of its own there.
            self.trials.add_manual_trial(conn, test_id, variant, success, fidelity)

    def verdict(self, test_id: int, policy: PromotionPolicy, min_margin: float | None = None) -> dict[str, Any]:
        """Ask ``policy`` about one test, without acting; ``min_margin`` overrides its floor."""
        test = self.get_ab_test(test_id)
        if test is None:
            raise ValueError(f"unknown A/B test {test_id}")
        overrides = {} if min_margin is None else {"min_margin": min_margin}
        verdict = policy(test, self.trials.cohorts([test_id])[test_id], **overrides)
        return {
            **verdict.to_dict(),
            "test_id": test_id,
            "winner": verdict.winner,
            "should_promote": verdict.action == "promote",
        }

    def claim_evolution(
        self, skill_name: str, cooldown_seconds: float, lease_seconds: float = EVOLUTION_LEASE_SECONDS
    ) -> bool:
        """Claim the right to evolve a skill now; False while it has an open test, is cooling down, or another
        claim of it has not ended yet.

        A running guard does not hold evolution: the next candidate is screened and tested beside it, against the
        new production, while the guard's holdout keeps the last confirmed version (``LifecycleStore``). A paused
        guard does (its health check failed: nothing builds on that production until an operator acts).

        The skill's row lock serializes concurrent claims, so a burst of failed runs evolves a skill once.
        A successful claim writes an ``evolution_started`` event, which starts the cooldown. The claim holds
        until the evolution writes how it ended (:data:`EVOLUTION_ENDS`) or ``lease_seconds`` have passed (a
        worker killed mid-evolution writes nothing): a screening may outlast the cooldown, and a second one
        meanwhile would spend the same budget (``spent`` is written when a screening ends) for a test the
        first one is about to start.
        """
        with self.store.transaction() as conn:
            self.catalog.lock_skill(conn, skill_name)
            open_test = conn.execute(
                select(TESTS.c.test_id).where(
                    TESTS.c.skill_name == skill_name,
                    TESTS.c.kind == "test",
                    TESTS.c.status.in_(OPEN_TEST_STATUSES),
                )
            ).first()
            if open_test is not None or self.paused_guard(conn, skill_name) is not None:
                return False
            since = utcnow() - timedelta(seconds=cooldown_seconds)
            latest = conn.execute(
                select(EVENTS.c.event_type)
                .where(
                    EVENTS.c.skill_name == skill_name,
                    EVENTS.c.event_type.in_(("evolution_started", "evolution_failed")),
                    EVENTS.c.created_at >= since,
                )
                .order_by(EVENTS.c.event_id.desc())
                .limit(1)
            ).scalar()
            # An evolution that failed (an outage, not a refusal) gives its claim back: its retry may go on.
            if latest == "evolution_started":
                return False
            last = conn.execute(
                select(EVENTS.c.event_type, EVENTS.c.created_at)
                .where(
                    EVENTS.c.skill_name == skill_name,
                    EVENTS.c.event_type.in_(("evolution_started", *EVOLUTION_ENDS)),
                )
                .order_by(EVENTS.c.event_id.desc())
                .limit(1)
            ).first()
            if (
                last is not None
                and last.event_type == "evolution_started"
                and last.created_at >= utcnow() - timedelta(seconds=lease_seconds)
            ):
                return False
            insert_event(conn, LearningEventRecord(skill_name=skill_name, event_type="evolution_started"))
            return True

    def paused_guard(self, conn: Connection, skill_name: str) -> int | None:
        return conn.execute(
            select(TESTS.c.test_id).where(
                TESTS.c.skill_name == skill_name, TESTS.c.kind == "guard", TESTS.c.status == "paused"
            )
        ).scalar()
