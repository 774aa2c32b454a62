"""Alembic takes an empty database to head and back down, on Postgres and on SQLite."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from db.migrate import current_revision, downgrade, upgrade
from db.models import Base
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
