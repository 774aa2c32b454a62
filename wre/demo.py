"""`wre demo`: the whole loop on an embedded store, in under a minute.

A SQLite file and kombu's in-memory broker (or Postgres and Redis when given), a real Celery worker and a
real beat running in this process (not eager mode), the example skills on the simulated agent: runs are
enqueued, retried, evolved, A/B tested and promoted while the screen shows it happen.
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import skills as example_skills
from db.memory import LearningEventRecord, PatternMemory
from wre.context import number, store

DEFAULT_RUNS = 300
DEFAULT_DATABASE = "wre-demo.db"
TIME_BUDGET_SECONDS = 50.0
EXTRA_BATCH = 40
WORKER_THREADS = 4
# Which example skills the demo runs, and how often (the simulated ones carry the loop).
SKILL_WEIGHTS = {"summarize_ticket": 5, "classify_intent": 3, "extract_contact": 2}
DEMO_ENV = {
    "WRE_AB_EVAL_SECONDS": "1",
    "WRE_EVOLVE_COOLDOWN_SECONDS": "2",
    "WRE_PRODUCTION_CACHE_SECONDS": "0.5",
    # A demo's few hundred runs would pay for a screening only near its end at the default share (0.2).
    "WRE_SCREEN_BUDGET_SHARE": "1",
}
QUIET_EVENTS = {"react_execution", "evolution_started"}
TICKETS = ["The export button does nothing.", "I was charged twice.", "Password reset mail never arrives."]
MESSAGES = [
    "Hi, it's Ada Lovelace, ada@example.org, +44 20 7946 0958.",
    "Please call me back. Grace Hopper, grace@navy.example",
    "Alan here: alan@example.com / 0161 496 0000",
]


def configure(database_url: str, broker_url: str) -> None:
    """Point wre's settings at the demo's store and broker (before the Celery app is imported)."""
    os.environ.update(DEMO_ENV)
    os.environ["WRE_DATABASE_URL"] = database_url
    os.environ["WRE_BROKER_URL"] = broker_url
    os.environ["WRE_PYTHON_SKILL_MODULES"] = "skills"
    # The demo follows runs in the store, not through results.
    os.environ["WRE_RESULT_BACKEND"] = "disabled"
    from worker.settings import get_settings

    get_settings.cache_clear()
    store.cache_clear()
    get_settings()  # the demo's URLs are checked now: a bad one is the command's one-line error


@contextmanager
def embedded_services(app: Celery, schedule_path: Path) -> Iterator[None]:
    """A real worker (thread pool) and a real beat, in threads of this process."""
    from celery.beat import EmbeddedService

    worker = app.WorkController(
        pool_cls="threads",
        concurrency=WORKER_THREADS,
        queues=[queue.name for queue in app.conf.task_queues],
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel="ERROR",
    )
    worker_thread = threading.Thread(target=worker.start, name="wre-demo-worker", daemon=True)
    beat = EmbeddedService(app, thread=True, schedule_filename=str(schedule_path))
    worker_thread.start()
    beat.start()
    try:
        yield
    finally:
        beat.stop()
        worker.stop(in_sighandler=False)
        worker_thread.join(timeout=10)


def describe(event: LearningEventRecord) -> str:
    """One line about a learning event, for the live feed."""
    details = event.details or {}
    if event.event_type == "variation_proposed":
        return (f"[cyan]evolved[/]  {event.skill_name}: variation {event.variation_id} "
                f"enters A/B test #{details.get('test_id')} against production")
    if event.event_type == "variation_promoted":
        return (f"[bold green]promoted[/] {event.skill_name}: {event.variation_id} wins its A/B test; "
                f"mean first-attempt fidelity control {number(event.fidelity_before)} → "
                f"treatment {number(event.fidelity_after)}")
    if event.event_type == "variation_archived":
        return (f"[yellow]archived[/] {event.skill_name}: {event.variation_id} "
                f"({event.description}; fidelity {number(event.fidelity_before)} vs {number(event.fidelity_after)})")
    if event.event_type == "evolution_refused":
        return f"[dim]evolver refused for {event.skill_name}: {event.description}[/]"
    return f"{event.event_type} {event.skill_name} {event.description}"


def _context(skill: str, rng: random.Random) -> dict[str, Any]:
    if skill == "extract_contact":
        return {"text": rng.choice(MESSAGES)}
    return {"ticket": rng.choice(TICKETS), "customer": f"c-{rng.randrange(1000)}"}


def run_demo(runs: int, database_url: str, broker_url: str, console: Console) -> bool:
    """Run the demo; True when it showed a promotion."""
    configure(database_url, broker_url)
    from db.migrate import upgrade
    from worker.app import app
    from worker.client import enqueue_skill
    from worker.registry import register_skill_file
    from wre.dashboard import build_dashboard

    if broker_url.startswith("memory://"):
        app.conf.worker_send_task_events = False  # no one watches events in-process
    upgrade(database_url)
    memory: PatternMemory = store()
    for path in sorted(Path(example_skills.__file__).parent.glob("*.md")):
        if path.stem in SKILL_WEIGHTS:
            skill = register_skill_file(memory, path)
            console.print(f"registered [bold]{skill.name}[/] (agent {skill.agent}, evolver {skill.evolver})")
    rng = random.Random(7)
    names, weights = list(SKILL_WEIGHTS), list(SKILL_WEIGHTS.values())
    # A store that saw a demo before (a Postgres database run twice) keeps its history: count from here.
    last_event = memory.latest_event_id()
    known_tests = {test.test_id for test in memory.list_ab_tests()}
    finished_before, promoted = memory.finished_runs(), False
    started = time.monotonic()
    with embedded_services(app, Path(database_url.rsplit("/", 1)[-1] + ".beat")), Progress(
        TextColumn("[bold]runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        TimeElapsedColumn(), console=console,
    ) as progress:
        bar = progress.add_task("", total=runs)
        for name in rng.choices(names, weights, k=runs):
            enqueue_skill(name, _context(name, rng))
        while True:
            time.sleep(0.25)
            done = memory.finished_runs() - finished_before
            retries = memory.get_counter("react_retry_count")
            progress.update(bar, completed=done, description=f"retries {retries}")
            for event in memory.learning_events_since(last_event):
                last_event = event.event_id or last_event
                if event.event_type not in QUIET_EVENTS:
                    progress.console.print(describe(event))
                promoted = promoted or event.event_type == "variation_promoted"
            total = int(progress.tasks[0].total or 0)
            if (done >= total and promoted) or time.monotonic() - started > TIME_BUDGET_SECONDS:
                break
            if done >= total:
                # Keep feeding the skills whose tests still need trials, a batch at a time.
                testing = [t.skill_name for t in memory.list_ab_tests(status="running")] or names
                for name in rng.choices(testing, k=EXTRA_BATCH):
                    enqueue_skill(name, _context(name, rng))
                progress.update(bar, total=total + EXTRA_BATCH)
    console.rule("dashboard")
    console.print(build_dashboard(memory, window=50))
    console.rule("what improved")
    for line in improvements(memory, known_tests):
        console.print(line, highlight=False)
    return promoted


def improvements(memory: PatternMemory, known_tests: set[int]) -> list[str]:
    """The closing screen's truth: each test decided during the demo, with the arms it compared.

    An A/B test compares the arms' first attempts over the same period, so its figures say what the
    promotion changed; a window median over a few dozen runs moves with the traffic mix and the luck.
    """
    lines = []
    for test in memory.list_ab_tests(status="completed"):
        if test.test_id in known_tests:
            continue
        verdict = "promoted" if test.winner == "treatment" else f"archived ({test.winner})"
        lines.append(
            f"{test.skill_name}: test #{test.test_id} {verdict}; first-attempt fidelity (mean) "
            f"control {number(test.control_fidelity)} over {test.control_trials} runs, treatment "
            f"{number(test.treatment_fidelity)} over {test.treatment_trials} runs; success "
            f"{test.control_successes}/{test.control_trials} vs {test.treatment_successes}/{test.treatment_trials}"
        )
    return lines or ["no A/B test was decided during the demo"]
