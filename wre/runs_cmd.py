"""`wre runs stuck`: the runs wre's producer enqueued that are overdue (no final outcome, nothing happening)."""

from __future__ import annotations

import json
from datetime import timedelta

import typer
from rich.table import Table

from db.engine import get_engine
from db.models import utcnow
from db.run_requests import overdue_runs
from worker.settings import get_settings
from wre.context import console, user_errors

app = typer.Typer(help="Runs as the producer recorded them.", no_args_is_help=True)


@app.command("stuck")
@user_errors
def stuck(
    older_than: float | None = typer.Option(
        None, min=0.001, metavar="SECONDS", help="Seconds without news (default: WRE_RUN_OVERDUE_SECONDS, else twice the visibility timeout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Runs with no final outcome and no send or outcome row for a while, oldest first. The run sweep re-sends
    them (up to 3 times); those still listed after that need a look."""
    settings = get_settings()
    seconds = older_than or settings.effective_run_overdue_seconds
    runs = overdue_runs(get_engine(settings.database_url), utcnow() - timedelta(seconds=seconds))
    if as_json:
        for run in runs:
            record = {
                "run_id": run.run_id,
                "skill_name": run.skill_name,
                "enqueued_at": run.enqueued_at.isoformat(),
                "last_activity": run.last_activity.isoformat(),
                "attempts_recorded": run.attempts_recorded,
                "resends": run.resends,
            }
            console.print(json.dumps(record), highlight=False, soft_wrap=True)
        return
    table = Table("run", "skill", "enqueued", "last activity", "attempts", "resends", title=f"overdue (> {seconds:g} s)")
    for run in runs:
        table.add_row(
            run.run_id,
            run.skill_name,
            f"{run.enqueued_at:%Y-%m-%d %H:%M:%S}",
            f"{run.last_activity:%Y-%m-%d %H:%M:%S}",
            str(run.attempts_recorded),
            str(run.resends),
        )
    console.print(table, soft_wrap=True)
    console.print(f"{len(runs)} overdue run(s)")
