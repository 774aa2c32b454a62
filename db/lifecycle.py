"""What verdicts do to production: promote (and start a guard), archive, close, pause, roll back, confirm.

Every change is one transaction with its learning event and, where production changes, its lineage row. The
statistics are not here: the injected policy reads a test and its ledger's complete prefix and says what to
do (``Verdict.action``); this module applies it.

Lock order everywhere: the skill's open tests first, then the skill (see ``Catalog.lock_skill``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from db.abtests import PromotionPolicy, Verdict
from db.catalog import Catalog
from db.models import OPEN_TEST_STATUSES, TEST_KINDS, TESTS, utcnow
from db.outcomes import insert_event
from db.records import AbTestRecord, CohortRecord, Conclusion, LearningEventRecord, ProductionChangeRecord
from db.store import Store
from db.trials import Trials

log = logging.getLogger(__name__)

TEST_ACTIONS = ("promote", "archive", "inconclusive", "pause")
GUARD_ACTIONS = ("rollback", "confirm", "pause")
# The first key of the evaluators' advisory locks (the second is the skill name's hash): wre's own namespace.
EVALUATION_LOCK = 0x77726501


def _judge(policy: PromotionPolicy, test: AbTestRecord, cohort: CohortRecord) -> Verdict | None:
    """The policy's verdict on one test if it asks for an action, else None.

    A test the policy cannot judge (a policy name or parameters it refuses) is logged and left open: one
    bad test must not stop every other test's decision.
    """
    try:
        verdict = policy(test, cohort)
    except ValueError as error:
        log.error("A/B test %s of %s cannot be decided: %s", test.test_id, test.skill_name, error)
        return None
    allowed = GUARD_ACTIONS if test.is_guard else TEST_ACTIONS
    if verdict.action is None:
        return None
    if verdict.action not in allowed:
        log.error("policy asked %r of %s %s: ignored", verdict.action, test.kind, test.test_id)
        return None
    return verdict


class Lifecycle:
    def __init__(self, store: Store, catalog: Catalog, trials: Trials) -> None:
        self.store = store
        self.catalog = catalog
        self.trials = trials

    def evaluate_running_tests(self, policy: PromotionPolicy) -> list[Conclusion]:
        """Decide every running test and guard the policy can decide now, and apply each verdict.

        One unlocked read of the running tests and one of their ledgers; only skills with a verdict are then
        claimed (a transaction-scoped advisory lock per skill on Postgres, tried, never waited for: two
        evaluators never work on one skill, and never hold one of its rows each), their open tests and guards
        locked (SKIP LOCKED), judged again on what the ledger says under the lock, and concluded. Queries per
        round do not grow with the number of undecided tests.
        """
        with self.store.transaction() as conn:
            query = select(TESTS).where(TESTS.c.status == "running").order_by(TESTS.c.test_id)
            running = [AbTestRecord(**row._mapping) for row in conn.execute(query)]
        cohorts = self.trials.cohorts(test.test_id for test in running)
        decided = {test.skill_name for test in running if _judge(policy, test, cohorts[test.test_id])}
        if not decided:
            return []
        conclusions = []
        with self.store.transaction() as conn:
            decided = self._claim_skills(conn, decided)
            rows = list(
                conn.execute(
                    select(TESTS)
                    .where(TESTS.c.skill_name.in_(decided), TESTS.c.status.in_(OPEN_TEST_STATUSES))
                    .order_by(TESTS.c.test_id)
                    .with_for_update(skip_locked=True)
                )
            )
            # A skill is decided only if all its open rows were locked here: another evaluator has the rest.
            opened = self._open_tests_of(conn, decided)
            mine = {row.test_id for row in rows}
            locked = [row for row in rows if opened[row.skill_name] <= mine and row.status == "running"]
            fresh = self.trials.cohorts((row.test_id for row in locked), conn=conn)
            # A guard first: a rollback outranks a promotion decided in the same round (it stops the test).
            for row in sorted(locked, key=lambda row: (row.kind != "guard", row.test_id)):
                test = AbTestRecord(**row._mapping)
                if conn.execute(select(TESTS.c.status).where(TESTS.c.test_id == test.test_id)).scalar() != "running":
                    continue
                cohort = fresh[test.test_id]
                verdict = _judge(policy, test, cohort)
                if verdict is not None:
                    conclusions.append(self._apply(conn, test, cohort, verdict))
        return conclusions

    def _claim_skills(self, conn: Connection, skills: set[str]) -> set[str]:
        """The skills this evaluator may decide now: on Postgres those whose advisory lock it got (released at
        commit); elsewhere (SQLite: one writer at a time) all of them."""
        if conn.dialect.name != "postgresql":
            return skills
        claim = select(func.pg_try_advisory_xact_lock(EVALUATION_LOCK, func.hashtext(bindparam("skill"))))
        return {skill for skill in sorted(skills) if conn.execute(claim, {"skill": skill}).scalar()}

    def _open_tests_of(self, conn: Connection, skills: set[str]) -> dict[str, set[int]]:
        """The ids of the open tests and guards of each skill (read without a lock)."""
        opened: dict[str, set[int]] = {skill: set() for skill in skills}
        query = select(TESTS.c.skill_name, TESTS.c.test_id).where(
            TESTS.c.skill_name.in_(skills), TESTS.c.status.in_(OPEN_TEST_STATUSES)
        )
        for skill_name, test_id in conn.execute(query):
            opened[skill_name].add(test_id)
        return opened

    def _apply(self, conn: Connection, test: AbTestRecord, cohort: CohortRecord, verdict: Verdict) -> Conclusion:
        action = verdict.action or ""
        figures = {**verdict.to_dict(), "cohort": cohort.to_dict()}
        now = utcnow()
        if action == "pause":
            conn.execute(
                update(TESTS).where(TESTS.c.test_id == test.test_id).values(status="paused", health=figures)
            )
            self._event(conn, test, "ab_test_paused", f"{test.kind} {test.test_id} paused: {_reason(figures)}", figures)
            return Conclusion(test.test_id, test.skill_name, "paused", None, None, figures, action)
        winner = verdict.winner or ("treatment" if action in ("promote", "confirm") else "control")
        conn.execute(
            update(TESTS)
            .where(TESTS.c.test_id == test.test_id)
            .values(status="completed", winner=winner, decided_at=now, completed_at=now, decision=figures)
        )
        promoted = archived = None
        if action == "promote":
            skill = self.catalog.lock_skill(conn, test.skill_name)
            production, treatment = skill.production_variation_id, test.treatment_version
            self.catalog.set_production(conn, test.skill_name, treatment, production, "promotion", test.test_id)
            promoted = test.treatment_version
            holdout = self._supersede_guard(conn, test)
            guard_id = self._start_guard(conn, test, verdict.guard_share, holdout or test.control_version)
            figures["guard_test_id"] = guard_id
            self._event(conn, test, "variation_promoted", f"A/B test {test.test_id} decided: treatment", figures)
        elif action in ("archive", "inconclusive"):
            self.catalog.mark(conn, test.treatment_version, "archived")
            archived = test.treatment_version
            self._event(conn, test, "variation_archived", f"A/B test {test.test_id} decided: {winner}", figures)
        elif action == "rollback":
            skill = self.catalog.lock_skill(conn, test.skill_name)
            if skill.production_variation_id == test.treatment_version:
                self.catalog.set_production(
                    conn, test.skill_name, test.control_version, test.treatment_version, "guard_rollback", test.test_id
                )
                # The test beside the guard compared a candidate with the version just rolled back.
                self._stop_running(conn, test.skill_name, f"guard {test.test_id} rolled production back", ("test",))
            self.catalog.retire(conn, test.treatment_version)
            archived = test.treatment_version
            description = f"guard {test.test_id} found a regression: rolled back to {test.control_version}"
            self._event(conn, test, "guard_rollback", f"{description} ({_reason(figures)})", figures)
        else:  # confirm
            self._event(conn, test, "promotion_confirmed", f"guard {test.test_id} ended clean", figures)
        return Conclusion(test.test_id, test.skill_name, winner, promoted, archived, figures, action)

    def _supersede_guard(self, conn: Connection, test: AbTestRecord) -> str | None:
        """Close the guard open beside a test that is promoted now; returns the version its holdout kept.

        The guard watched the production version this promotion replaces; the next guard keeps the same
        holdout version (the last one confirmed), so a chain of promotions made while guarded is watched as a
        whole: if the new production turns out worse than the holdout, the rollback goes back past them all.
        """
        guard = conn.execute(
            select(TESTS).where(
                TESTS.c.skill_name == test.skill_name,
                TESTS.c.kind == "guard",
                TESTS.c.status.in_(OPEN_TEST_STATUSES),
            )
        ).first()
        if guard is None:
            return None
        reason = f"superseded: A/B test {test.test_id} promoted {test.treatment_version} over it"
        self._stop(conn, test.skill_name, guard.test_id, guard.treatment_version, "guard", reason)
        return str(guard.control_version)

    def _start_guard(self, conn: Connection, test: AbTestRecord, holdout_share: float, holdout: str) -> int | None:
        """After a promotion: the new production serves 1 - holdout_share, the ``holdout`` version the rest."""
        if not 0.0 < holdout_share < 1.0:
            return None
        guard_id = conn.execute(
            TESTS.insert()
            .values(
                skill_name=test.skill_name,
                control_version=holdout,
                treatment_version=test.treatment_version,
                sample_size_target=test.sample_size_target,
                policy="guard",
                status="running",
                kind="guard",
                treatment_share=1.0 - holdout_share,
                parent_test_id=test.test_id,
                started_at=utcnow(),
            )
            .returning(TESTS.c.test_id)
        ).scalar_one()
        return int(guard_id)

    def _event(
        self, conn: Connection, test: AbTestRecord, event_type: str, description: str, figures: dict[str, Any]
    ) -> None:
        insert_event(
            conn,
            LearningEventRecord(
                skill_name=test.skill_name,
                event_type=event_type,
                variation_id=test.treatment_version,
                fidelity_before=test.control_fidelity,
                fidelity_after=test.treatment_fidelity,
                description=description,
                details={"test_id": test.test_id, "kind": test.kind, "decision": figures},
            ),
        )

    def _stop_running(
        self, conn: Connection, skill_name: str, reason: str, kinds: tuple[str, ...] = TEST_KINDS
    ) -> None:
        """Stop the skill's open tests and guards of ``kinds``, if any. A test's treatment is archived; a guard's
        treatment is production, so it stays as it is (the caller decides what production becomes)."""
        running = conn.execute(
            select(TESTS.c.test_id, TESTS.c.treatment_version, TESTS.c.kind)
            .where(
                TESTS.c.skill_name == skill_name,
                TESTS.c.status.in_(OPEN_TEST_STATUSES),
                TESTS.c.kind.in_(kinds),
            )
            .order_by(TESTS.c.test_id)
            .with_for_update()
        ).all()
        for row in running:
            self._stop(conn, skill_name, row.test_id, row.treatment_version, row.kind, reason)

    def _stop(
        self, conn: Connection, skill_name: str, test_id: int, treatment_version: str, kind: str, reason: str
    ) -> None:
        conn.execute(update(TESTS).where(TESTS.c.test_id == test_id).values(status="stopped", completed_at=utcnow()))
        if kind == "test":
            self.catalog.mark(conn, treatment_version, "archived")
        insert_event(
            conn,
            LearningEventRecord(
                skill_name=skill_name,
                event_type="ab_test_stopped",
                variation_id=treatment_version,
                description=reason,
                details={"test_id": test_id, "kind": kind},
            ),
        )

    def promote_variation(self, variation_id: str) -> None:
        """Make a variation its skill's production version by hand; the old one is kept for rollback."""
        with self.store.transaction() as conn:
            variation = self.catalog.variation(conn, variation_id)
            skill = self.catalog.lock_skill(conn, variation.skill_name)
            if skill.production_variation_id == variation_id:
                return
            # The open comparison was against the old production version: it no longer means anything.
            self._stop_running(conn, variation.skill_name, "production changed by hand")
            self.catalog.set_production(conn, variation.skill_name, variation_id, skill.production_variation_id, "manual")
            insert_event(
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
        with self.store.transaction() as conn:
            variation = self.catalog.variation(conn, variation_id)
            skill = self.catalog.lock_skill(conn, variation.skill_name)
            if skill.production_variation_id == variation_id:
                raise ValueError(f"variation {variation_id} is production for {skill.name!r}; roll back first")
            active = conn.execute(
                select(TESTS.c.test_id).where(
                    TESTS.c.treatment_version == variation_id, TESTS.c.status.in_(OPEN_TEST_STATUSES)
                )
            ).scalar()
            if active is not None:
                self._stop_running(conn, variation.skill_name, "treatment archived", kinds=("test",))
            self.catalog.mark(conn, variation_id, "archived")
            insert_event(
                conn,
                LearningEventRecord(
                    skill_name=variation.skill_name,
                    event_type="variation_archived",
                    variation_id=variation_id,
                    description="archived by hand",
                ),
            )

    def stop_ab_test(self, test_id: int) -> None:
        """Stop an open test or guard without a verdict. A test's treatment is archived; stopping a guard
        leaves the promotion in place, unwatched."""
        with self.store.transaction() as conn:
            row = conn.execute(select(TESTS).where(TESTS.c.test_id == test_id).with_for_update()).first()
            if row is None or row.status not in OPEN_TEST_STATUSES:
                raise ValueError(f"A/B test {test_id} does not exist or is not open (running or paused)")
            self._stop(conn, row.skill_name, test_id, row.treatment_version, row.kind, "stopped by hand")

    def rollback_skill(
        self, skill_name: str, to: str | None = None, expected_current: str | None = None
    ) -> tuple[str, str]:
        """Restore an earlier production version; returns (from, to).

        :param to: a version that was production before (default: the one the current version replaced).
        :param expected_current: the production version the operator saw; refused if production changed
            since (a beat promotion or another rollback), so nobody undoes a change they never saw.
        """
        with self.store.transaction() as conn:
            skill = self.catalog.lock_skill(conn, skill_name)
            current = skill.production_variation_id
            if current is None:
                raise ValueError(f"skill {skill_name!r} has no production version")
            if expected_current is not None and expected_current != current:
                raise ValueError(
                    f"production of {skill_name!r} is now {current}, not {expected_current}: it changed since "
                    "you looked; check `wre skill history` and try again"
                )
            lineage = self.catalog.production_history(skill_name)
            earlier = [change.variation_id for change in lineage if change.variation_id != current]
            if to is None:
                to = _default_target(lineage, current)
                if to is None:
                    raise ValueError(f"skill {skill_name!r} has no previous production version to roll back to")
            elif to == current:
                raise ValueError(f"{to} is already production of {skill_name!r}")
            elif to not in earlier:
                raise ValueError(
                    f"{to} was never production of {skill_name!r}; earlier versions: {', '.join(earlier) or 'none'}"
                )
            self._stop_running(conn, skill_name, "rollback")
            self.catalog.set_production(conn, skill_name, to, current, "rollback")
            self.catalog.retire(conn, current)
            insert_event(
                conn,
                LearningEventRecord(
                    skill_name=skill_name,
                    event_type="rollback",
                    variation_id=to,
                    description=f"rolled back from {current} to {to}",
                    details={"from": current, "to": to},
                ),
            )
        return current, to


def _default_target(lineage: list[ProductionChangeRecord], current: str) -> str | None:
    """The newest version that production replaced and that was not itself rolled back for cause.

    Rolling back twice must not re-promote what the first rollback removed.
    """
    # Walked in order: a version rolled back for cause stays out until a later change makes it production again.
    rolled_back: set[str] = set()
    became: dict[str, int] = {}  # each version's latest change that made it production
    for index, change in enumerate(lineage):
        if change.reason in ("rollback", "guard_rollback") and change.previous_variation_id is not None:
            rolled_back.add(change.previous_variation_id)
            if change.reason == "guard_rollback" and change.variation_id in became:
                # A guard rolls back the whole chain promoted beside it, down to its holdout version.
                rolled_back.update(c.variation_id for c in lineage[became[change.variation_id] + 1 : index])
        elif change.reason not in ("rollback", "guard_rollback"):
            rolled_back.discard(change.variation_id)
        became[change.variation_id] = index
    for change in reversed(lineage):
        previous = change.previous_variation_id
        if previous is not None and previous != current and previous not in rolled_back:
            return previous
    return None


def _reason(figures: dict[str, Any]) -> str:
    return str(figures.get("reason", ""))
