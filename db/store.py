"""The handle every store holds: the engine, one short transaction per call, the dialect's INSERT, and the
checks of arguments that several stores make."""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import get_engine


class Store:
    """The engine (one per process and URL, shared by every thread) and what each store does with it."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self.engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self.is_postgres = self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def insert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ``on_conflict_*`` on both Postgres and SQLite."""
        return postgresql.insert(table) if self.is_postgres else sqlite.insert(table)

    def median(self, conn: Connection, values: Any) -> float | None:
        """Median of a one-column select; in SQL on Postgres, in Python on SQLite (which lacks it)."""
        if self.is_postgres:
            column = next(iter(values.subquery().c))
            result = conn.execute(select(func.percentile_cont(0.5).within_group(column))).scalar()
            return float(result) if result is not None else None
        found = [float(v) for v in conn.execute(values).scalars() if v is not None]
        return statistics.median(found) if found else None

    def dispose(self) -> None:
        self.engine.dispose()


def require_text(value: object, what: str, max_length: int = 128) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    if len(value) > max_length:
        raise ValueError(f"{what} is longer than {max_length} characters")
    return value


def require_count(value: object, what: str, minimum: int = 0) -> int:
    # bool is an int subclass; True as a count is always a caller's mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value
