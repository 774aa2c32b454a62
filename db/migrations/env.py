"""Alembic environment: migrates the database named by the caller, or by WRE_DATABASE_URL."""

from __future__ import annotations

import os

from alembic import context

from db.engine import make_engine
from db.models import Base

DEFAULT_DATABASE_URL = "sqlite:///wre.db"

config = context.config
# `wre db upgrade` passes the URL from wre's settings; a bare `alembic upgrade head` reads the same variable.
url = config.get_main_option("sqlalchemy.url") or os.environ.get("WRE_DATABASE_URL", DEFAULT_DATABASE_URL)


def run_migrations() -> None:
    engine = make_engine(url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=Base.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        context.run_migrations()
    engine.dispose()


run_migrations()
