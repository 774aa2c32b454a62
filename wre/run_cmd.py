"""`wre run` and `wre result`: enqueue a run (checked before it is queued) and fetch a run's result."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from wre.context import EXIT_RUN_FAILED, console, err_console, fail, print_json, record_panel, show, store

if TYPE_CHECKING:
    from celery.result import AsyncResult

DEFAULT_TIMEOUT_SECONDS = 120.0
# What a result panel leaves out: the full step list is in --json; the panel shows the failed step.
PANEL_HIDDEN = ("step_results",)


def read_context(value: str) -> dict[str, Any]:
    """The input context from ``--context``: JSON text, ``@FILE`` (a file's JSON) or ``-`` (stdin's)."""
    if value == "-":
        text, source = sys.stdin.read(), "stdin"
    elif value.startswith("@"):
        path = Path(value[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise ValueError(f"--context {value}: cannot read {path}: {error.strerror or error}") from None
        except UnicodeDecodeError:
            raise ValueError(f"--context {value}: {path} is not UTF-8 text") from None
        source = str(path)
    else:
        text, source = value, "--context"
    try:
        context = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{source} is not JSON: {error}") from None
    if not isinstance(context, dict):
        raise ValueError(f'{source} must be a JSON object, like {{"text": "hello"}}, got {type(context).__name__}')
    return context


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"--timeout must be a number of seconds above 0, got {timeout:g}")


def _celery_app() -> Any:
    from worker.app import app as celery_app

    # Fail fast and plainly when the broker is down, instead of Celery's reconnect loop and tracebacks.
    with celery_app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1)
    return celery_app


def wait_for(result: AsyncResult, timeout: float) -> Any:  # type: ignore[type-arg]
    """The run's result (or its error), waiting at most ``timeout`` seconds."""
    try:
        return result.get(timeout=timeout, propagate=False)
    finally:
        # Stop listening now, while the interpreter is alive: left to AsyncResult.__del__ at exit, the
        # Redis backend's unsubscribe prints a traceback as Python shuts down.
        result.backend.remove_pending_result(result)


def report_result(run_id: str, outcome: Any, failed: bool, as_json: bool) -> None:
    """Print a finished run; a run that did not succeed exits non-zero (3), a refused one exits 1."""
    if failed:
        fail(f"run {run_id} failed: {outcome}")
    if not isinstance(outcome, dict):
        fail(f"run {run_id} returned an unexpected result: {outcome!r}")
    if as_json:
        print_json(outcome)
    else:
        shown = {key: value for key, value in outcome.items() if key not in PANEL_HIDDEN}
        status = "succeeded" if outcome.get("success") else "did not succeed"
        show(record_panel(f"run {run_id}", shown, subtitle=status))
    if not outcome.get("success"):
        err_console.print(f"run {run_id} did not succeed: fidelity {outcome.get('pattern_fidelity')}, failed at "
                          f"step {outcome.get('failed_at_step')}, error {outcome.get('error')}",
                          highlight=False, soft_wrap=True)
        sys.exit(EXIT_RUN_FAILED)


def run(
    skill: str = typer.Argument(..., metavar="SKILL", help="The skill to run."),
    context: str = typer.Option(
        "{}", "--context", "-c", metavar="JSON|@FILE|-", help="The input context: a JSON object, @FILE or - (stdin)."
    ),
    agent: str | None = typer.Option(None, metavar="AGENT", help="The agent (default: the skill's)."),
    assignment_key: str | None = typer.Option(None, metavar="KEY", help="Pin the A/B arm to this key (e.g. a user id)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for the run's result, print it; exit 3 if it failed."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS", help="Seconds to wait with --wait."),
    as_json: bool = typer.Option(False, "--json", help="With --wait: print the result as JSON."),
) -> None:
    """Enqueue a run of SKILL (checked first: skill, agent, input) on the broker; a worker executes it."""
    from worker.client import enqueue_skill, run_request

    _check_timeout(timeout)
    input_context = read_context(context)
    # Checked before the broker is touched: bad input queues nothing.
    run_request(skill, input_context, agent=agent, assignment_key=assignment_key, memory=store())
    result = enqueue_skill(
        skill, input_context, agent=agent, assignment_key=assignment_key, app=_celery_app(), validate=False
    )
    if not wait:
        print_json({"run_id": result.id}) if as_json else console.print(f"queued run {result.id}")
        return
    err_console.print(f"queued run {result.id}, waiting up to {timeout:g} s", highlight=False)
    outcome = wait_for(result, timeout)
    report_result(result.id, outcome, result.failed(), as_json)


def result(
    run_id: str = typer.Argument(..., metavar="RUN_ID", help="The run's id (what `wre run` printed)."),
    wait: bool = typer.Option(False, "--wait", help="Wait until the run has finished."),
    timeout: float = typer.Option(DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS", help="Seconds to wait with --wait."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """A queued run's result (exit 3 if the run did not succeed, 1 if it has none yet)."""
    from celery.result import AsyncResult

    try:
        uuid.UUID(run_id)
    except ValueError:
        raise ValueError(f"{run_id!r} is not a run id (a UUID, as `wre run` prints it)") from None
    _check_timeout(timeout)
    async_result: AsyncResult = AsyncResult(run_id, app=_celery_app())  # type: ignore[type-arg]
    try:
        if not (wait or async_result.ready()):
            attempts = store().run_outcomes(run_id)
            done = f"{len(attempts)} attempt(s) recorded so far" if attempts else "no attempt recorded yet"
            fail(f"run {run_id} has no result yet ({done}); `wre result {run_id} --wait` waits for it")
        report_result(run_id, wait_for(async_result, timeout), async_result.failed(), as_json)
    finally:
        async_result.backend.remove_pending_result(async_result)
