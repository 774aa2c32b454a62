"""`wre runs stuck`: the runs wre's producer enqueued that are overdue (no final outcome, nothing happening)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timedelta

import typer

from wre.context import command, console, show, table

app = typer.Typer(help="Runs as the producer recorded them.", no_args_is_help=True)


@command(app, "stuck")
def stuck(
    older_than: float | None = typer.Option(
        None, min=0.001, metavar="SECONDS", help="Seconds without news (default: WRE_RUN_OVERDUE_SECONDS, else twice the visibility timeout)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of a table."),
) -> None:
    """Runs with no final outcome and no send or outcome row for a while, oldest first. The run sweep re-sends
    them (up to 3 times); those still listed after that need a look."""
    from db.engine import get_engine
    from db.models import utcnow
    from db.run_requests import overdue_runs
    from worker.settings import get_settings

    settings = get_settings()
    seconds = older_than or settings.effective_run_overdue_seconds
    runs = overdue_runs(get_engine(settings.database_url), utcnow() - timedelta(seconds=seconds))
    if as_json:
        for run in runs:
            record = {key: value for key, value in asdict(run).items() if key != "kwargs"}
            print(json.dumps(record, default=datetime.isoformat), flush=True)
        return
    listed = table("run", "skill", "enqueued", "last activity", "attempts", "resends", title=f"overdue (> {seconds:g} s)")
    for run in runs:
        listed.add_row(run.run_id, run.skill_name, f"{run.enqueued_at:%Y-%m-%d %H:%M:%S}",
                       f"{run.last_activity:%Y-%m-%d %H:%M:%S}", str(run.attempts_recorded), str(run.resends))
    show(listed)
    console.print(f"{len(runs)} overdue run(s)")
