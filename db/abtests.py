"""A/B tests and the production lifecycle: schedule, count trials, decide, promote, archive, roll back.

The statistics are not here: a promotion policy (a callable from the scheduler floor) is handed in, and
this module only applies its verdicts, each in one transaction with its learning event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, exc, select, update

from db.base import require_count, require_text
from db.catalog import CatalogStore
from db.models import ARMS, EVENTS, SKILLS, TESTS, VARIATIONS, utcnow
from db.outcomes import OutcomeStore, _add_trial, _insert_event
from db.records import AbTestRecord, Conclusion, LearningEventRecord


class Verdict(Protocol):
    """What a promotion policy returns: a winner (or None to keep going) and its figures."""

    @property
    def winner(self) -> str | None: ...

    def to_dict(self) -> dict[str, Any]: ...


PromotionPolicy = Callable[..., Verdict]
"""Called as ``policy(test: AbTestRecord, **overrides)``."""

log = logging.getLogger(__name__)


def _verdict(policy: PromotionPolicy, test: AbTestRecord) -> Verdict | None:
    """The policy's verdict on one test, or None to keep going.

    A test the policy cannot judge (a policy name or parameters it refuses) is logged and left running: one
    bad test must not stop every other test's decision.
    """
    try:
        verdict = policy(test)
    except ValueError as error:
        log.error("A/B test %s of %s cannot be decided: %s", test.test_id, test.skill_name, error)
        return None
    return verdict if verdict.winner else None


class AbTestConflictError(ValueError):
    """The skill already has a running test (the database allows one at a time)."""


class NoPolicyError(RuntimeError):
    """A decision was asked of a PatternMemory built without a promotion policy."""


class AbTestStore(CatalogStore, OutcomeStore):
    policy: PromotionPolicy | None = None
    policy_name: str = "sequential"

    def schedule_ab_test(
        self,
        skill_name: str,
        control_version: str,
        treatment_version: str,
        sample_size_target: int = 20,
        policy: str | None = None,
    ) -> int:
        """Start a test of ``treatment_version`` against ``control_version``; returns the test id."""
        require_text(skill_name, "skill name")
        require_text(control_version, "control version", max_length=64)
        require_text(treatment_version, "treatment version", max_length=64)
        require_count(sample_size_target, "sample_size_target", minimum=1)
        if control_version == treatment_version:
            raise ValueError("control and treatment must be different variations")
        try:
            with self.transaction() as conn:
                for version in (control_version, treatment_version):
                    owner = conn.execute(
                        select(VARIATIONS.c.skill_name).where(VARIATIONS.c.variation_id == version)
                    ).scalar()
                    if owner != skill_name:
                        raise ValueError(f"variation {version!r} is not a variation of skill {skill_name!r}")
                test_id = conn.execute(
                    TESTS.insert()
                    .values(
                        skill_name=skill_name,
                        control_version=control_version,
                        treatment_version=treatment_version,
                        sample_size_target=sample_size_target,
                        policy=policy or self.policy_name,
                        status="running",
                        started_at=utcnow(),
                    )
                    .returning(TESTS.c.test_id)
                ).scalar_one()
                conn.execute(
                    update(VARIATIONS)
                    .where(VARIATIONS.c.variation_id == treatment_version, ~VARIATIONS.c.promoted)
                    .values(test_status="testing")
                )
                return int(test_id)
        except exc.IntegrityError as error:
            raise AbTestConflictError(f"skill {skill_name!r} already has a running A/B test") from error

    def get_ab_test(self, test_id: int) -> AbTestRecord | None:
        with self.transaction() as conn:
            row = conn.execute(select(TESTS).where(TESTS.c.test_id == test_id)).first()
        return AbTestRecord(**row._mapping) if row else None

    def running_test(self, skill_name: str) -> AbTestRecord | None:
        """The skill's running test as a record (the richer answer behind :meth:`get_active_ab_test`)."""
        query = select(TESTS).where(TESTS.c.skill_name == skill_name, TESTS.c.status == "running")
        with self.transaction() as conn:
            row = conn.execute(query).first()
        return AbTestRecord(**row._mapping) if row else None

    def get_active_ab_test(self, skill_name: str) -> dict[str, Any] | None:
        """The seed's call: the skill's running test as a dict of its columns, or None."""
        test = self.running_test(skill_name)
        if test is None:
            return None
        columns = test.to_dict()
        return {**columns, "start_time": columns["started_at"]}  # the seed's name of started_at

    def list_ab_tests(self, status: str | None = None, skill_name: str | None = None) -> list[AbTestRecord]:
        query = select(TESTS).order_by(TESTS.c.test_id)
        if status is not None:
            query = query.where(TESTS.c.status == status)
        if skill_name is not None:
            query = query.where(TESTS.c.skill_name == skill_name)
        with self.transaction() as conn:
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
        with self.transaction() as conn:
            if _add_trial(conn, test_id, variant, success, fidelity) == 0:
                raise ValueError(f"A/B test {test_id} does not exist or is not running")

    def check_ab_promotion(self, test_id: int, min_margin: float = 0.10) -> str | None:
        """The seed's call: ``'treatment'`` (promote), ``'control'`` (treatment lost) or None (keep going, or
        inconclusive), from the configured policy with ``min_margin`` as its margin; nothing is acted on."""
        winner = self.ab_verdict(test_id, min_margin=min_margin)["winner"]
        return winner if winner in ARMS else None

    def ab_verdict(self, test_id: int, min_margin: float | None = None) -> dict[str, Any]:
        """Ask the configured policy about one test, without acting; ``min_margin`` overrides its floor."""
        test = self.get_ab_test(test_id)
        if test is None:
            raise ValueError(f"unknown A/B test {test_id}")
        overrides = {} if min_margin is None else {"min_margin": min_margin}
        verdict = self._require_policy()(test, **overrides)
        return {
            **verdict.to_dict(),
            "test_id": test_id,
            "winner": verdict.winner,
            "should_promote": verdict.winner == "treatment",
        }

    def evaluate_running_tests(self) -> list[Conclusion]:
        """Decide every running test the policy can decide now, and apply each verdict.

        The read is one unlocked query; only tests with a verdict are then locked (SKIP LOCKED, so two
        evaluators never decide one test and never wait on each other), re-decided on the locked counts,
        and concluded. Queries per round do not grow with the number of undecided tests.
        """
        policy = self._require_policy()
        decided = [test.test_id for test in self.list_ab_tests(status="running") if _verdict(policy, test)]
        if not decided:
            return []
        conclusions = []
        with self.transaction() as conn:
            locked = conn.execute(
                select(TESTS)
                .where(TESTS.c.test_id.in_(decided), TESTS.c.status == "running")
                .with_for_update(skip_locked=True)
            )
            for row in list(locked):
                test = AbTestRecord(**row._mapping)
                verdict = _verdict(policy, test)
                if verdict is not None:
                    conclusions.append(self._conclude(conn, test, verdict.winner or "", verdict.to_dict()))
        return conclusions

    def _conclude(
        self, conn: Connection, test: AbTestRecord, winner: str, figures: dict[str, Any]
    ) -> Conclusion:
        now = utcnow()
        conn.execute(
            update(TESTS)
            .where(TESTS.c.test_id == test.test_id)
            .values(status="completed", winner=winner, decided_at=now, completed_at=now, decision=figures)
        )
        details = {"test_id": test.test_id, "decision": figures}
        if winner == "treatment":
            production = self._lock_skill(conn, test.skill_name).production_variation_id
            self._set_production(conn, test.skill_name, test.treatment_version, production)
            event_type, promoted, archived = "variation_promoted", test.treatment_version, None
        else:
            self._mark(conn, test.treatment_version, "archived")
            event_type, promoted, archived = "variation_archived", None, test.treatment_version
        _insert_event(
            conn,
            LearningEventRecord(
                skill_name=test.skill_name,
                event_type=event_type,
                variation_id=test.treatment_version,
                fidelity_before=test.control_fidelity,
                fidelity_after=test.treatment_fidelity,
                description=f"A/B test {test.test_id} decided: {winner}",
                details=details,
            ),
        )
        return Conclusion(test.test_id, test.skill_name, winner, promoted, archived, figures)

    def promote_variation(self, variation_id: str) -> None:
        """Make a variation its skill's production version by hand; the old one is kept for rollback."""
        with self.transaction() as conn:
            variation = self._variation(conn, variation_id)
            skill = self._lock_skill(conn, variation.skill_name)
            if skill.production_variation_id == variation_id:
                return
            # The running comparison was against the old production version: it no longer means anything.
            self._stop_running(conn, variation.skill_name, "production changed by hand")
            self._set_production(conn, variation.skill_name, variation_id, skill.production_variation_id)
            _insert_event(
                conn,
                LearningEventRecord(
                    skill_name=variation.skill_name,
                    event_type="variation_promoted",
                    variation_id=variation_id,
                    description="promoted by hand",
                    details={"manual": True, "previous": skill.production_variation_id},
                ),
            )

    def archive_variation(self, variation_id: str) -> None:
        """Take a variation out of testing for good; production cannot be archived (roll back first)."""
        with self.transaction() as conn:
            variation = self._variation(conn, variation_id)
            skill = self._lock_skill(conn, variation.skill_name)
            if skill.production_variation_id == variation_id:
                raise ValueError(
                    f"variation {variation_id} is production for {skill.name!r}; roll back first"
                )
            active = conn.execute(
                select(TESTS.c.test_id).where(
                    TESTS.c.treatment_version == variation_id, TESTS.c.status == "running"
                )
            ).scalar()
            if active is not None:
                self._stop_running(conn, variation.skill_name, "treatment archived")
            self._mark(conn, variation_id, "archived")
            _insert_event(
                conn,
                LearningEventRecord(
                    skill_name=variation.skill_name,
                    event_type="variation_archived",
                    variation_id=variation_id,
                    description="archived by hand",
                ),
            )

    def stop_ab_test(self, test_id: int) -> None:
        """Stop a running test without a verdict; its treatment is archived."""
        with self.transaction() as conn:
            row = conn.execute(select(TESTS).where(TESTS.c.test_id == test_id).with_for_update()).first()
            if row is None or row.status != "running":
                raise ValueError(f"A/B test {test_id} does not exist or is not running")
            self._stop_running(conn, row.skill_name, "stopped by hand")

    def rollback_skill(self, skill_name: str) -> tuple[str, str]:
        """Restore the production version before the last promotion; returns (from, to)."""
        with self.transaction() as conn:
            skill = self._lock_skill(conn, skill_name)
            current, previous = skill.production_variation_id, skill.previous_variation_id
            if previous is None or current is None:
                raise ValueError(f"skill {skill_name!r} has no previous production version to roll back to")
            self._stop_running(conn, skill_name, "rollback")
            self._set_production(conn, skill_name, previous, None)
            conn.execute(
                update(VARIATIONS)
                .where(VARIATIONS.c.variation_id == current)
                .values(test_status="archived", promoted=False)
            )
            _insert_event(
                conn,
                LearningEventRecord(
                    skill_name=skill_name,
                    event_type="rollback",
                    variation_id=previous,
                    description=f"rolled back from {current} to {previous}",
                    details={"from": current, "to": previous},
                ),
            )
        return current, previous

    def claim_evolution(self, skill_name: str, cooldown_seconds: float) -> bool:
        """Claim the right to evolve a skill now; False while it has a test running or is cooling down.

        The skill's row lock serializes concurrent claims, so a burst of failed runs evolves a skill once.
        A successful claim writes an ``evolution_started`` event, which starts the cooldown.
        """
        with self.transaction() as conn:
            self._lock_skill(conn, skill_name)
            running = conn.execute(
                select(TESTS.c.test_id).where(TESTS.c.skill_name == skill_name, TESTS.c.status == "running")
            ).first()
            if running is not None:
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
            _insert_event(conn, LearningEventRecord(skill_name=skill_name, event_type="evolution_started"))
            return True

    def _require_policy(self) -> PromotionPolicy:
        if self.policy is None:
            raise NoPolicyError("this PatternMemory has no promotion policy; build it with policy=...")
        return self.policy

    def _stop_running(self, conn: Connection, skill_name: str, reason: str) -> None:
        running = conn.execute(
            select(TESTS.c.test_id, TESTS.c.treatment_version)
            .where(TESTS.c.skill_name == skill_name, TESTS.c.status == "running")
            .with_for_update()
        ).first()
        if running is None:
            return
        conn.execute(
            update(TESTS)
            .where(TESTS.c.test_id == running.test_id)
            .values(status="stopped", completed_at=utcnow())
        )
        self._mark(conn, running.treatment_version, "archived")
        _insert_event(
            conn,
            LearningEventRecord(
                skill_name=skill_name,
                event_type="ab_test_stopped",
                variation_id=running.treatment_version,
                description=reason,
                details={"test_id": running.test_id},
            ),
        )

    def _mark(self, conn: Connection, variation_id: str, status: str) -> None:
        conn.execute(
            update(VARIATIONS)
            .where(VARIATIONS.c.variation_id == variation_id, ~VARIATIONS.c.promoted)
            .values(test_status=status)
        )

    def _variation(self, conn: Connection, variation_id: str) -> Any:
        row = conn.execute(select(VARIATIONS).where(VARIATIONS.c.variation_id == variation_id)).first()
        if row is None:
            raise ValueError(f"unknown variation {variation_id!r}")
        return row

    def _lock_skill(self, conn: Connection, skill_name: str) -> Any:
        # One lock order everywhere: the skill's running test first, then the skill. The evaluator holds a
        # test's lock when it promotes; taking them the other way round here could deadlock with it.
        conn.execute(
            select(TESTS.c.test_id)
            .where(TESTS.c.skill_name == skill_name, TESTS.c.status == "running")
            .with_for_update()
        ).all()
        row = conn.execute(select(SKILLS).where(SKILLS.c.name == skill_name).with_for_update()).first()
        if row is None:
            raise ValueError(f"unknown skill {skill_name!r}")
        return row
