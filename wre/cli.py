"""The `wre` command line (Typer + Rich). Every command says what it does with --help; a user's mistake is
one red line and exit status 1, never a traceback."""

from __future__ import annotations

import json

import typer

from worker.settings import get_settings
from wre import ab_cmd, runs_cmd, skill_cmd
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
app.add_typer(runs_cmd.app, name="runs")


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
    from worker.app import app as celery_app

    # Fail fast and plainly when the broker is down, instead of Celery's reconnect loop and tracebacks.
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
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


@app.command("exporter")
@user_errors
def exporter(
    port: int = typer.Option(9808, min=1, max=65535, help="TCP port of /metrics."),
    address: str = typer.Option("0.0.0.0", help="Interface to listen on."),
    window: int = typer.Option(100, min=1, help="Latest finished runs per skill behind the fidelity gauges."),
) -> None:
    """Serve Prometheus metrics read from the database on every scrape (runs, retries, fidelity, tests)."""
    from wre.context import store
    from wre.exporter import serve_forever

    console.print(f"serving wre metrics on http://{address}:{port}/metrics", soft_wrap=True)
    serve_forever(store(), port=port, address=address, window=window)


@app.command("report")
@user_errors
def report(
    output: str = typer.Option("report.html", "--output", "-o", help="The HTML file to write."),
    buckets: int = typer.Option(30, min=1, max=500, help="Points per skill on the fidelity charts."),
) -> None:
    """Write a self-contained HTML report (no network needed): fidelity over time, A/B tests with intervals."""
    from wre.context import store
    from wre.report import write_report

    summary = write_report(store(), output, buckets=buckets)
    console.print(f"wrote {output}: {summary}", soft_wrap=True)


@app.command("demo")
def demo(
    runs: int = typer.Option(300, min=10, help="Runs to enqueue (more are added while a test still needs trials)."),
    database_url: str = typer.Option(
        "", help="Store to use; default: a fresh SQLite file wre-demo.db. e.g. postgresql://postgres@127.0.0.1/wre"
    ),
    broker_url: str = typer.Option("memory://", help="Broker to use, e.g. redis://127.0.0.1:6379/0."),
) -> None:
    """The whole loop in under a minute: runs, retries, an evolved variation, its A/B test, a promotion.

    Runs on an embedded store and broker with a real worker and beat in this process. To see the same on
    Postgres and Redis: `wre demo --database-url postgresql://postgres@127.0.0.1/wre --broker-url
    redis://127.0.0.1:6379/0` (the database must exist; the demo migrates it and adds the example skills).
    For the full stack with separate worker, beat and Flower processes see `docker compose up` in the README.
    """
    from pathlib import Path

    from wre.demo import DEFAULT_DATABASE, run_demo

    if not database_url:
        for suffix in ("", "-wal", "-shm"):
            Path(DEFAULT_DATABASE + suffix).unlink(missing_ok=True)
        database_url = f"sqlite:///{DEFAULT_DATABASE}"
    if not run_demo(runs, database_url, broker_url, console):
        console.print("[yellow]no promotion within the demo's time budget; run it again with more --runs[/]")


def main() -> None:
    app()
