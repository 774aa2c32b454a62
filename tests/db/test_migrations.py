"""Alembic takes an empty database to head and back down, on Postgres and on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, insert, inspect

from db.memory import PatternMemory
from db.migrate import current_revision, downgrade, upgrade
from db.models import EVENTS, Base
from db.screening import fleet_screening_spent
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


def _screening_event(calls: object) -> dict[str, object]:
    return {"skill_name": "s", "event_type": "candidates_screened", "details": {"calls": calls}}


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_the_fleet_screening_counter_is_backfilled_from_the_events(backend: str, tmp_path: Path) -> None:
    # Revision 0006 sums the calls of the screening events recorded before it; every later event bumps it.
    url = create_database("wre_migrate") if backend == "postgresql" else f"sqlite:///{tmp_path / 'wre.db'}"
    try:
        upgrade(url, "0005_guard_beside_test")
        engine = create_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    insert(EVENTS),
                    [_screening_event(90), _screening_event(64), {**_screening_event(5), "event_type": "other"}],
                )
            upgrade(url)
            memory = PatternMemory(engine)
            assert fleet_screening_spent(memory)[0] == 154
            downgrade(url, "0005_guard_beside_test")
            assert fleet_screening_spent(memory)[0] == 0
        finally:
            engine.dispose()
    finally:
        if backend == "postgresql":
            drop_database(url)
