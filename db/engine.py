"""Engines: one per process and URL, shared by its threads; a connection per call."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_SECONDS = 30
POOL_SIZE = 10
POOL_MAX_OVERFLOW = 20
# A pooled connection idle for longer than this is pinged before use (a restart or a proxy may have cut it).
# One used just now is not: pinging on every checkout (pool_pre_ping) costs the worker's hot path a round
# trip per attempt. A connection cut while busy fails its statement; the pool is then invalidated and the
# task retried as an infrastructure error.
PING_AFTER_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "wre_checked_in_at"

_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def normalize_url(url: str) -> str:
    """Make a bare ``postgresql://`` URL use psycopg 3, the driver wre installs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the embedded demo's worker threads read while one writes; foreign keys are off by default.
    # The driver's own transaction handling is switched off so that _sqlite_begin can take the write lock.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # A deferred transaction that reads, then writes, fails at once with SQLITE_BUSY when another thread
    # wrote in between (no busy wait applies). Taking the write lock up front makes writers queue instead.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """A new engine for ``url`` (Postgres through psycopg 3, or a SQLite file)."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False}
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    engine = create_engine(url, pool_size=POOL_SIZE, max_overflow=POOL_MAX_OVERFLOW)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Like ``pool_pre_ping``, but only for a connection that sat in the pool for PING_AFTER_IDLE_SECONDS."""

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    def checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_CHECKED_IN_AT)
        # No check-in yet: a connection made just now.
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:
            # The pool discards this connection and checks out (or makes) another.
            raise exc.DisconnectionError(f"stale pooled connection: {error}") from error

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checkout)


def get_engine(url: str) -> Engine:
    """The process's engine for ``url``, created on first use and shared by all threads."""
    key = normalize_url(url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = make_engine(key)
        return engine


def _forget_parent_connections() -> None:
    # A forked child (Celery's prefork pool) must not reuse the parent's sockets; close=False leaves
    # the parent's connections alone and gives the child fresh ones.
    for engine in _engines.values():
        engine.dispose(close=False)


os.register_at_fork(after_in_child=_forget_parent_connections)
