"""What every part of the gateway shares: the engine, one transaction per call, dialect-aware inserts."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.dialects import postgresql, sqlite

from db.engine import get_engine

MAX_STORED_OUTPUT_CHARS = 8_000
MAX_STORED_CONTEXT_BYTES = 16_000
CONTEXT_PREVIEW_CHARS = 2_000


class StoreBase:
    """Holds the engine; each public method opens one short transaction with :meth:`transaction`."""

    def __init__(self, url_or_engine: str | Engine) -> None:
        self._engine = get_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine

    @property
    def engine(self) -> Engine:
        return self._engine

    @property
    def is_postgres(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        with self._engine.begin() as conn:
            yield conn

    def upsert(self, table: Table) -> postgresql.Insert | sqlite.Insert:
        """An INSERT that supports ``on_conflict_*`` on both Postgres and SQLite."""
        if self.is_postgres:
            return postgresql.insert(table)
        return sqlite.insert(table)

    def dispose(self) -> None:
        self._engine.dispose()


# Postgres text and JSONB cannot hold NUL; an agent's output may contain one. It is stored as U+FFFD.
NUL, NUL_ESCAPED, REPLACEMENT = "\x00", "\\u0000", "\ufffd"
# Nor can they hold a lone surrogate (UTF-8 cannot encode it; an agent's text may still carry one): U+FFFD too.
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
SURROGATE = re.compile("[\ud800-\udfff]")


def storable_text(text: str | None) -> str | None:
    return None if text is None else UNSTORABLE.sub(REPLACEMENT, text)


def storable_json(value: Any) -> Any:
    """``value`` with every NUL and lone surrogate in its strings replaced, so that JSONB accepts it."""
    # ensure_ascii=False leaves a lone surrogate as it is (to be found), NUL is escaped either way.
    text = json.dumps(value, default=str, ensure_ascii=False)
    if NUL_ESCAPED not in text and SURROGATE.search(text) is None:
        return value
    return json.loads(SURROGATE.sub(REPLACEMENT, text).replace(NUL_ESCAPED, "\\ufffd"))


def bounded_output(output: str | None) -> str | None:
    output = storable_text(output)
    if output is None or len(output) <= MAX_STORED_OUTPUT_CHARS:
        return output
    return output[:MAX_STORED_OUTPUT_CHARS] + f"... [{len(output) - MAX_STORED_OUTPUT_CHARS} chars trimmed]"


def bounded_context(context: dict[str, Any]) -> dict[str, Any]:
    """The context as stored: whole when small, a marked preview when large (rows stay small)."""
    text = json.dumps(context, default=str)
    if len(text.encode()) <= MAX_STORED_CONTEXT_BYTES:
        return storable_json(context)  # type: ignore[no-any-return]
    return {"_truncated": True, "bytes": len(text.encode()), "preview": storable_text(text[:CONTEXT_PREVIEW_CHARS])}


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
