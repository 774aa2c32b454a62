"""Alembic takes an empty database to head and back down, on Postgres and on SQLite."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect

from db.memory import PatternMemory
from db.migrate import current_revision, downgrade, upgrade
from db.models import EVENTS, OUTCOMES, Base
from db.screening import RESERVED_CALLS, fleet_screening_spent, screening_spent
from tests.conftest import create_database, drop_database

TABLES = {table.name for table in Base.metadata.sorted_tables}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _round_trip(url: str) -> None:
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == TABLES
    assert current_revision(url) is not None
    downgrade(url)
    assert _tables(url) == set()
    assert current_revision(url) is None
    upgrade(url)
    assert _tables(url) == TABLES


def test_postgres_upgrade_downgrade() -> None:
    url = create_database("wre_migrate")
    try:
        _round_trip(url.replace("postgresql+psycopg", "postgresql+psycopg"))
        inspector = inspect(create_engine(url))
        indexes = {ix["name"]: ix for ix in inspector.get_indexes("ab_test_assignments")}
        assert indexes["uq_ab_test_open_per_skill_kind"]["unique"]
        assert indexes["uq_ab_test_open_per_skill_kind"]["column_names"] == ["skill_name", "kind"]
    finally:
        drop_database(url)


def test_sqlite_upgrade_downgrade(tmp_path: Path) -> None:
    _round_trip(f"sqlite:///{tmp_path / 'wre.db'}")


def test_models_and_migrations_agree() -> None:
    from alembic import command

    from db.migrate import alembic_config

    url = create_database("wre_migrate")
    try:
        upgrade(url)
        command.check(alembic_config(url))  # raises when the models need a migration the chain lacks
    finally:
        drop_database(url)


def _screening_event(
    calls: object, event_type: str = "candidates_screened", skill: str = "s"
) -> dict[str, object]:
    return {"skill_name": skill, "event_type": event_type, "details": {"calls": calls}}


def _outcome(run: int, attempt: int, final: bool) -> dict[str, object]:
    return {
        "run_id": f"run-{run}", "attempt": attempt, "skill_name": "s", "variation_id": "v", "agent": "python",
        "success": final, "execution_success": True, "pattern_fidelity": 1.0, "final": final,
    }


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_fleet_budget_counters_are_backfilled(backend: str, tmp_path: Path) -> None:
    # Revision 0006 sums the calls of the screening events and counts the finished runs recorded before it.
    url = create_database("wre_migrate") if backend == "postgresql" else f"sqlite:///{tmp_path / 'wre.db'}"
    engine = create_engine(url)
    try:
        upgrade(url, "0005_guard_beside_test")
        upgrade(url)  # nothing recorded yet: no row, both figures 0
        memory = PatternMemory(engine)
        assert fleet_screening_spent(memory) == (0, 0)
        downgrade(url, "0005_guard_beside_test")
        with engine.begin() as conn:
            conn.execute(insert(EVENTS), [_screening_event(90), _screening_event(64), _screening_event(5, "other")])
            # Written by hand, not by wre: a number counts (rounded), anything else is left out.
            conn.execute(insert(EVENTS), [_screening_event(value) for value in (12.4, "abc", "7", None, True, [1])])
            conn.execute(insert(EVENTS), [_screening_event(10, skill="t")])
            conn.execute(insert(OUTCOMES), [_outcome(1, 1, False), _outcome(1, 2, True), _outcome(2, 1, True)])
        upgrade(url)
        assert fleet_screening_spent(memory) == (176, 2)
        assert (screening_spent(memory, "s")[0], screening_spent(memory, "t")[0]) == (166, 10)
        # Later bumps, on any shard, add to the backfilled figures.
        memory.add_to_counters({"screening_calls": 10, "fleet.runs": 1})
        assert fleet_screening_spent(memory) == (186, 3)
        # Run again (down, up): recomputed from what is recorded, not added twice.
        downgrade(url, "0005_guard_beside_test")
        assert fleet_screening_spent(memory) == (0, 0) and screening_spent(memory, "s")[0] == 0
        upgrade(url)
        assert fleet_screening_spent(memory) == (176, 2)
    finally:
        engine.dispose()
        if backend == "postgresql":
            drop_database(url)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_reservations_lost_before_they_could_expire_are_given_back(backend: str, tmp_path: Path) -> None:
    # Revision 0006's code added a screening's reservation to the settled counters; a killed worker's stayed.
    url = create_database("wre_migrate") if backend == "postgresql" else f"sqlite:///{tmp_path / 'wre.db'}"
    engine = create_engine(url)
    try:
        upgrade(url, "0006_fleet_budget_counters")
        memory = PatternMemory(engine)
        with engine.begin() as conn:
            conn.execute(insert(EVENTS), [_screening_event(90), _screening_event(10, skill="t")])
            conn.execute(insert(OUTCOMES), [_outcome(1, 1, True)])
        memory.add_to_counters({"screening_calls": 200, "skill.screening_calls:s": 190, "skill.screening_calls:t": 10})
        # The workers' own count of finished runs (one more than the outcome here: a row pruned, say) stays.
        memory.add_to_counters({"fleet.runs": 2})
        assert fleet_screening_spent(memory) == (200, 2)  # s's lost reservation of 100 among them
        upgrade(url)
        assert fleet_screening_spent(memory) == (100, 2)
        assert (screening_spent(memory, "s")[0], screening_spent(memory, "t")[0]) == (90, 10)
        # A reservation now counts on its own, and going down and up again changes nothing recorded.
        memory.add_to_counters({f"{RESERVED_CALLS}{int(time.time())}": 100})
        assert fleet_screening_spent(memory) == (200, 2)
        downgrade(url, "0006_fleet_budget_counters")
        upgrade(url)
        assert fleet_screening_spent(memory) == (200, 2)
    finally:
        engine.dispose()
        if backend == "postgresql":
            drop_database(url)
