"""Skills and their variations: what is registered, which content production runs, its lineage; the skill lock."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, case, select, update

from db.models import LINEAGE, OPEN_TEST_STATUSES, SKILLS, TESTS, VARIATION_STATUSES, VARIATIONS, utcnow
from db.records import ProductionChangeRecord
from db.store import Store, require_text

VARIATION_ID_LENGTH = 16


def variation_id_for(content: str) -> str:
    """The id of a variation: a digest of its exact content (same content, same id)."""
    return hashlib.sha256(content.encode("utf-8")).hexdigest()[:VARIATION_ID_LENGTH]


@dataclass(frozen=True)
class SkillRegistration:
    """A skill file's content and the skill row's fields, as registration stores them."""

    name: str
    content: str
    default_agent: str
    description: str = ""
    threshold: float | None = None

    def check(self) -> None:
        require_text(self.name, "skill name")
        require_text(self.content, "skill content", max_length=1_000_000)
        require_text(self.default_agent, "default agent", max_length=64)
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {self.threshold}")


@dataclass(frozen=True)
class RegistrationResult:
    """What registering one skill did: ``added``, ``unchanged`` or ``replaced`` (``previous`` production)."""

    name: str
    variation_id: str
    action: str
    previous: str | None


class Catalog:
    def __init__(self, store: Store) -> None:
        self.store = store

    def register_skill(
        self,
        name: str,
        content: str,
        *,
        default_agent: str,
        description: str = "",
        threshold: float | None = None,
        replace: bool = False,
    ) -> str:
        """Register a skill with ``content`` as its baseline variation; returns the variation id.

        Registering the same content again changes nothing, also after an evolved variation was promoted
        (production descends from it). Other content for a known skill is refused unless ``replace`` (an
        operator's explicit act), which makes it production and keeps the old version for rollback.
        """
        registration = SkillRegistration(name, content, default_agent, description, threshold)
        return self.register_skills([registration], replace=replace)[0].variation_id

    def register_skills(
        self, registrations: Sequence[SkillRegistration], replace: bool = False
    ) -> list[RegistrationResult]:
        """Register several skills in one transaction: all of them, or (on any refusal) none."""
        for registration in registrations:
            registration.check()
        with self.store.transaction() as conn:
            return [self._register(conn, registration, replace) for registration in registrations]

    def lineage(self, skill_name: str, conn: Connection | None = None) -> list[str]:
        """Production's variation id, then its parent, grandparent...: the contents production came from."""
        if conn is None:
            with self.store.transaction() as own:
                return self.lineage(skill_name, own)
        current = conn.execute(
            select(SKILLS.c.production_variation_id).where(SKILLS.c.name == skill_name)
        ).scalar()
        chain: list[str] = []
        while current is not None and current not in chain:
            chain.append(current)
            current = conn.execute(
                select(VARIATIONS.c.parent_version).where(VARIATIONS.c.variation_id == current)
            ).scalar()
        return chain

    def _register(self, conn: Connection, registration: SkillRegistration, replace: bool) -> RegistrationResult:
        name, content = registration.name, registration.content
        variation_id = variation_id_for(content)
        current = conn.execute(select(SKILLS).where(SKILLS.c.name == name).with_for_update()).first()
        if current is not None and variation_id in self.lineage(name, conn):
            # The file production is, or descends from: nothing to do (re-running `skill add` is safe).
            return RegistrationResult(name, variation_id, "unchanged", current.production_variation_id)
        if current is not None and not replace:
            raise ValueError(
                f"skill {name!r} is already registered with other content "
                f"(production {current.production_variation_id}); `wre skill add --replace` makes this "
                "content production"
            )
        if replace and current is not None:
            running = conn.execute(
                select(TESTS.c.test_id).where(TESTS.c.skill_name == name, TESTS.c.status.in_(OPEN_TEST_STATUSES))
            ).scalar()
            if running is not None:
                # Its control would no longer be production: the comparison would mean nothing.
                raise ValueError(
                    f"skill {name!r} has A/B test {running} open; stop it first (wre ab stop {running})"
                )
        values = {
            "description": registration.description,
            "default_agent": registration.default_agent,
            "threshold": registration.threshold,
        }
        if current is None:
            conn.execute(SKILLS.insert().values(name=name, **values))
        else:
            conn.execute(update(SKILLS).where(SKILLS.c.name == name).values(updated_at=utcnow(), **values))
        status = "baseline" if current is None else "promoted"
        self._insert_variation(conn, name, content, None, "registration", status, [])
        previous = current.production_variation_id if current else None
        self.set_production(conn, name, variation_id, previous, "registration" if current is None else "replace")
        return RegistrationResult(name, variation_id, "added" if current is None else "replaced", previous)

    def store_variation(
        self,
        skill_name: str,
        content: str,
        parent_version: str | None = None,
        created_by: str = "",
        test_status: str = "testing",
        learned_from: Sequence[str] = (),
    ) -> str:
        """Store a variation of a known skill; returns its id. Same content is stored once."""
        require_text(skill_name, "skill name")
        require_text(content, "variation content", max_length=1_000_000)
        if test_status not in VARIATION_STATUSES:
            raise ValueError(f"test_status must be one of {VARIATION_STATUSES}, got {test_status!r}")
        with self.store.transaction() as conn:
            if conn.execute(select(SKILLS.c.name).where(SKILLS.c.name == skill_name)).first() is None:
                raise ValueError(f"unknown skill {skill_name!r}")
            return self._insert_variation(
                conn, skill_name, content, parent_version, created_by, test_status, list(learned_from)
            )

    def _insert_variation(
        self,
        conn: Connection,
        skill_name: str,
        content: str,
        parent: str | None,
        created_by: str,
        status: str,
        learned_from: list[Any],
    ) -> str:
        variation_id = variation_id_for(content)
        statement = (
            self.store.insert(VARIATIONS)
            .values(
                variation_id=variation_id,
                skill_name=skill_name,
                parent_version=parent,
                variation_content=content,
                created_by=created_by,
                test_status=status,
                promoted=False,
                learned_from=learned_from,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["variation_id"])
        )
        conn.execute(statement)
        return variation_id

    def set_production(
        self,
        conn: Connection,
        skill_name: str,
        new: str,
        old: str | None,
        reason: str = "registration",
        test_id: int | None = None,
    ) -> None:
        """Make ``new`` production (``old`` is what it replaces) and write the change to the lineage."""
        conn.execute(
            LINEAGE.insert().values(
                skill_name=skill_name,
                variation_id=new,
                previous_variation_id=old,
                reason=reason,
                test_id=test_id,
                created_at=utcnow(),
            )
        )
        conn.execute(
            update(SKILLS)
            .where(SKILLS.c.name == skill_name)
            .values(production_variation_id=new, previous_variation_id=old, updated_at=utcnow())
        )
        # The registered content keeps its "baseline" status while production: the lineage starts there.
        status = case((VARIATIONS.c.created_by == "registration", "baseline"), else_="promoted")
        conn.execute(
            update(VARIATIONS)
            .where(VARIATIONS.c.variation_id == new)
            .values(promoted=True, test_status=status)
        )
        if old is not None and old != new:
            conn.execute(
                update(VARIATIONS).where(VARIATIONS.c.variation_id == old).values(test_status="retired")
            )

    def production_history(self, skill_name: str) -> list[ProductionChangeRecord]:
        """Every production version of a skill, oldest first, with why it became production."""
        query = select(LINEAGE).where(LINEAGE.c.skill_name == skill_name).order_by(LINEAGE.c.change_id)
        with self.store.transaction() as conn:
            return [ProductionChangeRecord(**row._mapping) for row in conn.execute(query)]

    def get_skill(self, name: str) -> Row[Any] | None:
        with self.store.transaction() as conn:
            return conn.execute(select(SKILLS).where(SKILLS.c.name == name)).first()

    def list_skills(self) -> list[Row[Any]]:
        with self.store.transaction() as conn:
            return list(conn.execute(select(SKILLS).order_by(SKILLS.c.name)))

    def get_variation(self, variation_id: str) -> Row[Any] | None:
        with self.store.transaction() as conn:
            return conn.execute(select(VARIATIONS).where(VARIATIONS.c.variation_id == variation_id)).first()

    def list_variations(self, skill_name: str) -> list[Row[Any]]:
        with self.store.transaction() as conn:
            query = (
                select(VARIATIONS)
                .where(VARIATIONS.c.skill_name == skill_name)
                .order_by(VARIATIONS.c.created_at)
            )
            return list(conn.execute(query))

    def get_production(self, skill_name: str) -> tuple[str, str]:
        """(variation id, content) that production runs for ``skill_name``; ValueError if unknown."""
        query = (
            select(VARIATIONS.c.variation_id, VARIATIONS.c.variation_content)
            .join(SKILLS, SKILLS.c.production_variation_id == VARIATIONS.c.variation_id)
            .where(SKILLS.c.name == skill_name)
        )
        with self.store.transaction() as conn:
            row = conn.execute(query).first()
        if row is None:
            raise ValueError(f"unknown skill {skill_name!r}")
        return row.variation_id, row.variation_content

    def variation(self, conn: Connection, variation_id: str) -> Any:
        row = conn.execute(select(VARIATIONS).where(VARIATIONS.c.variation_id == variation_id)).first()
        if row is None:
            raise ValueError(f"unknown variation {variation_id!r}")
        return row

    def mark(self, conn: Connection, variation_id: str, status: str) -> None:
        """Set a variation's test status, unless it is (or was) production."""
        conn.execute(
            update(VARIATIONS)
            .where(VARIATIONS.c.variation_id == variation_id, ~VARIATIONS.c.promoted)
            .values(test_status=status)
        )

    def retire(self, conn: Connection, variation_id: str) -> None:
        """A version that left production for cause: archived, no longer marked promoted."""
        conn.execute(
            update(VARIATIONS)
            .where(VARIATIONS.c.variation_id == variation_id)
            .values(test_status="archived", promoted=False)
        )

    def lock_skill(self, conn: Connection, skill_name: str) -> Any:
        """Lock the skill's row and return it; ValueError for an unknown skill.

        One lock order everywhere: the skill's open tests first (in test id order), then the skill. The
        evaluator holds a test's lock when it promotes; taking them the other way round here could deadlock
        with it.
        """
        conn.execute(
            select(TESTS.c.test_id)
            .where(TESTS.c.skill_name == skill_name, TESTS.c.status.in_(OPEN_TEST_STATUSES))
            .order_by(TESTS.c.test_id)  # a skill has two open rows at most; every locker takes them in id order
            .with_for_update()
        ).all()
        row = conn.execute(select(SKILLS).where(SKILLS.c.name == skill_name).with_for_update()).first()
        if row is None:
            raise ValueError(f"unknown skill {skill_name!r}")
        return row
