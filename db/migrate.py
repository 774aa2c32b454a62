"""Schema migrations through Alembic, callable from code (`wre db upgrade`) and tests."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's ini interpolation treats % specially; a password may contain it.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at ``database_url`` to ``revision`` (an empty database included)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from db.engine import make_engine

    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


class StoreNotReady(RuntimeError):
    """The database a process was pointed at cannot serve it: it does not exist, refuses us, or is not at the
    migrations' head. The message is one line, with the password hidden."""


# What no waiting fixes, as Postgres words it when a connection is refused (libpq reports connection-time
# failures as text, without a SQLSTATE): no such database, a refused password, an unknown role.
NOT_READY_MESSAGES = {
    "does not exist": "does not exist",
    "password authentication failed": "refused the password",
    "no pg_hba.conf entry": "refused the connection (pg_hba.conf)",
}


def check_ready(database_url: str) -> None:
    """Raise :class:`StoreNotReady` when ``database_url`` names a database that cannot serve wre.

    A server that does not answer is not checked here: that is an outage, which workers ride out.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    from db.engine import make_engine

    shown = make_url(database_url).render_as_string(hide_password=True)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            current = set(MigrationContext.configure(conn).get_current_heads())
    except OperationalError as error:
        message = str(error.orig)
        reason = next((why for words, why in NOT_READY_MESSAGES.items() if words in message), None)
        if reason is None:
            return
        raise StoreNotReady(f"the database {shown} {reason} (WRE_DATABASE_URL)") from None
    finally:
        engine.dispose()
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    if current != heads:
        raise StoreNotReady(
            f"the database {shown} is not migrated (at {', '.join(sorted(current)) or 'no revision'}, "
            f"expected {', '.join(sorted(heads))}): run `wre db upgrade`"
        )
