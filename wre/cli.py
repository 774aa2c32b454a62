"""The `wre` command line (Typer). Every command says what it does with --help; a user's mistake is one
line on stderr and a non-zero exit, never a traceback; read commands take --json."""

from __future__ import annotations

import contextlib
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperArgument

from wre import ab_cmd, run_cmd, runs_cmd, skill_cmd
from wre.context import EXIT_USAGE, command, console, fail, one_line, print_json, show, store

# Typer prints a Python type beside every argument (`<list[Path]>`); each argument's metavar says it in words.
TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign,assignment]

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    add_completion=False,
)
db_app = typer.Typer(help="The database schema (Alembic).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(skill_cmd.app, name="skill")
app.add_typer(ab_cmd.app, name="ab")
command(app, "run")(run_cmd.run)
command(app, "result")(run_cmd.result)
app.add_typer(runs_cmd.app, name="runs")


def _print_version(value: bool) -> None:
    if value:
        try:
            print(f"wre {version('wre')}")
        except PackageNotFoundError:
            print("wre unknown (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    show_version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print wre's version and exit."
    ),
) -> None:
    """wre: a self-improving skill runner on Celery. Settings come from WRE_* environment variables."""


@command(db_app, "upgrade")
def db_upgrade(revision: str = typer.Argument("head", metavar="REVISION", help="Target revision.")) -> None:
    """Bring the database at WRE_DATABASE_URL to the latest schema (an empty one included)."""
    from db.migrate import upgrade
    from worker.settings import get_settings

    upgrade(get_settings().database_url, revision)
    console.print(f"database at revision {revision}")


@command(db_app, "downgrade")
def db_downgrade(
    revision: str = typer.Argument(..., metavar="REVISION", help="Target revision, e.g. base."),
) -> None:
    """Take the schema back to REVISION."""
    from db.migrate import downgrade
    from worker.settings import get_settings

    downgrade(get_settings().database_url, revision)
    console.print(f"database at revision {revision}")


@command(app, "dashboard")
def dashboard(
    window: int = typer.Option(100, min=1, metavar="RUNS", help="Runs in the first and the latest window (at least 1)."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Per skill: runs, first-attempt and delivered fidelity, retries, running tests and their distance to a
    verdict."""
    from wre.dashboard import build_dashboard, dashboard_data

    if as_json:
        print_json(dashboard_data(store(), window))
    else:
        show(build_dashboard(store(), window))


@command(app, "exporter")
def exporter(
    port: int = typer.Option(9808, min=1, max=65535, metavar="PORT", help="TCP port of /metrics."),
    address: str = typer.Option("127.0.0.1", metavar="ADDRESS", help="Interface to listen on (0.0.0.0: every interface)."),
    window: int = typer.Option(100, min=1, metavar="RUNS", help="Latest finished runs per skill behind the fidelity gauges."),
) -> None:
    """Serve Prometheus metrics read from the database on every scrape (runs, retries, fidelity, tests)."""
    from wre.exporter import start

    memory = store()
    memory.list_skills()  # an unreachable or unmigrated store is refused now, not at the first scrape
    server, thread = start(memory, port=port, address=address, window=window)
    console.print(f"serving wre metrics on http://{address}:{port}/metrics", soft_wrap=True)
    with contextlib.suppress(KeyboardInterrupt):
        thread.join()
    server.shutdown()


@command(app, "report")
def report(
    output: str = typer.Option("report.html", "--output", "-o", metavar="FILE", help="The HTML file to write."),
    buckets: int = typer.Option(30, min=1, max=500, metavar="POINTS", help="Points per skill on the fidelity charts."),
) -> None:
    """Write a self-contained HTML report (no network needed): fidelity over time, A/B tests with intervals."""
    from wre.report import write_report

    summary = write_report(store(), output, buckets=buckets)
    console.print(f"wrote {output}: {summary}", soft_wrap=True)


@command(app, "demo")
def demo(
    runs: int = typer.Option(
        300, min=10, metavar="RUNS", help="Runs to enqueue (more are added while a test still needs trials)."
    ),
    database_url: str = typer.Option(
        "", metavar="URL",
        help="Store to use; default: a fresh SQLite file wre-demo.db. e.g. postgresql://postgres@127.0.0.1/wre",
    ),
    broker_url: str = typer.Option("memory://", metavar="URL", help="Broker to use, e.g. redis://127.0.0.1:6379/0."),
) -> None:
    """The whole loop in under a minute: runs, retries, an evolved variation, its A/B test, a promotion.

    Runs on an embedded store and broker with a real worker and beat in this process. To see the same on
    Postgres and Redis: `wre demo --database-url postgresql://postgres@127.0.0.1/wre --broker-url
    redis://127.0.0.1:6379/0` (the database must exist; the demo migrates it and adds the example skills).
    For the full stack with separate worker, beat and Flower processes see `docker compose up` in the README.
    """
    from wre.demo import DEFAULT_DATABASE, run_demo

    if not database_url:
        for suffix in ("", "-wal", "-shm"):
            Path(DEFAULT_DATABASE + suffix).unlink(missing_ok=True)
        database_url = f"sqlite:///{DEFAULT_DATABASE}"
    if not run_demo(runs, database_url, broker_url, console):
        console.print("[yellow]no promotion within the demo's time budget; run it again with more --runs[/]")


def main(args: list[str] | None = None) -> None:
    """Run the command line; a command line that does not parse is one line on stderr and exit 2."""
    try:
        status: Any = app(args=args, standalone_mode=False)
    except typer.TyperException as error:  # Typer's (vendored Click's) parse errors
        message = error.format_message()
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError":  # `wre` or `wre ab` alone: the help is the answer
            print(message)
            sys.exit(0)
        where = f" (see `{context.command_path} --help`)" if context is not None else ""
        fail(f"{one_line(message)}{where}", EXIT_USAGE)
    except typer.Abort:
        fail("aborted")
    sys.exit(status if isinstance(status, int) else 0)
