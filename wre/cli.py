"""The `wre` command line (Typer + Rich)."""

from __future__ import annotations

import typer

from worker.settings import get_settings

app = typer.Typer(help="wre: a self-improving skill runner on Celery.", no_args_is_help=True)
db_app = typer.Typer(help="The database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Bring the database at WRE_DATABASE_URL to the latest schema (an empty one included)."""
    from db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at revision {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Take the schema back to REVISION."""
    from db.migrate import downgrade

    downgrade(get_settings().database_url, revision)
    typer.echo(f"database at revision {revision}")


def main() -> None:
    app()
