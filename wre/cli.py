"""The `wre` command line (Typer + Rich). Every command says what it does with --help; a user's mistake is
one red line and exit status 1, never a traceback."""

from __future__ import annotations

import json

import typer

from worker.settings import get_settings
from wre import ab_cmd, skill_cmd
from wre.context import console, user_errors

app = typer.Typer(
    help="wre: a self-improving skill runner on Celery. Settings come from WRE_* environment variables.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(skill_cmd.app, name="skill")
app.add_typer(ab_cmd.app, name="ab")


@db_app.command("upgrade")
@user_errors
def db_upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Bring the database at WRE_DATABASE_URL to the latest schema (an empty one included)."""
    from db.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    console.print(f"database at revision {revision}")


@db_app.command("downgrade")
@user_errors
def db_downgrade(revision: str = typer.Argument(..., help="Target revision, e.g. base.")) -> None:
    """Take the schema back to REVISION."""
    from db.migrate import downgrade

    downgrade(get_settings().database_url, revision)
    console.print(f"database at revision {revision}")


@app.command("run")
@user_errors
def run(
    skill: str = typer.Argument(..., help="The skill to run."),
    context: str = typer.Option("{}", "--context", "-c", help="The input context, a JSON object."),
    agent: str | None = typer.Option(None, help="The agent (default: the skill's)."),
    assignment_key: str | None = typer.Option(None, help="Pin the A/B arm to this key (e.g. a user id)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run's result and print it."),
    timeout: float = typer.Option(120.0, help="Seconds to wait with --wait."),
) -> None:
    """Enqueue a run of SKILL on the broker (a worker executes it)."""
    from worker.client import enqueue_skill

    try:
        input_context = json.loads(context)
    except json.JSONDecodeError as error:
        raise ValueError(f"--context is not JSON: {error}") from None
    if not isinstance(input_context, dict):
        raise ValueError('--context must be a JSON object, like \'{"text": "hello"}\'')
    result = enqueue_skill(skill, input_context, agent=agent, assignment_key=assignment_key)
    console.print(f"queued run {result.id}")
    if wait:
        outcome = result.get(timeout=timeout, propagate=False)
        if result.failed():
            raise ValueError(f"run {result.id} failed: {outcome}")
        console.print_json(data=outcome)


@app.command("dashboard")
@user_errors
def dashboard(window: int = typer.Option(100, help="Runs in the first and the latest window.")) -> None:
    """Per skill: runs, fidelity now vs the first window, retries, running tests and their distance to a verdict."""
    from wre.dashboard import render_dashboard

    render_dashboard(window)


def main() -> None:
    app()
