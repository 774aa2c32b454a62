"""One held lock does not stall a worker: a test row held FOR UPDATE by another session stalls only the runs that
count in that test (each waits out the connection's lock_timeout and is retried as an infrastructure error);
every other skill's runs on the same worker go on, and after the lock is released every run finishes, recorded
once."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import create_engine, text

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import broker_app, running, service_env, start_worker
from worker.client import enqueue_skill
from worker.registry import register_skill_text

HOLD_SECONDS = 12.0
TESTED_RUNS, OTHER_RUNS = 8, 60


def test_a_held_test_row_stalls_only_its_own_runs(
    memory: PatternMemory, database_url: str, broker_url: str, tmp_path: Path
) -> None:
    for name in ("tested", "other"):
        register_skill_text(memory, python_skill(name, "echo"))
    control, _ = memory.get_production("tested")
    treatment = memory.store_variation("tested", python_skill("tested", "echo", body="Answer well."))
    test_id = memory.schedule_ab_test("tested", control, treatment)
    app = broker_app(database_url, broker_url)
    env = service_env(database_url, broker_url, WRE_PRODUCTION_CACHE_SECONDS="0")
    holder = create_engine(database_url)
    with running(start_worker(app, env, tmp_path, concurrency=4)):
        with holder.connect() as conn:
            conn.execute(text("SELECT 1 FROM ab_test_assignments WHERE test_id = :id FOR UPDATE"), {"id": test_id})
            held_since = time.monotonic()
            tested = [enqueue_skill("tested", {"i": i}, app=app) for i in range(TESTED_RUNS)]
            other = [enqueue_skill("other", {"i": i}, app=app) for i in range(OTHER_RUNS)]
            while time.monotonic() - held_since < HOLD_SECONDS and not all(r.ready() for r in other):
                time.sleep(0.2)
            other_done_while_held = sum(r.ready() for r in other)
            tested_done_while_held = sum(r.ready() for r in tested)
            conn.rollback()  # the lock goes
        results = [r.get(timeout=120) for r in tested + other]
    holder.dispose()
    assert other_done_while_held >= 0.9 * OTHER_RUNS, other_done_while_held
    assert tested_done_while_held == 0  # they needed the held row: none got past it
    assert all(result["success"] for result in results)
    # Each run recorded once, however often its first attempt was retried on the lock.
    for result in results:
        assert len(memory.run_outcomes(str(result["execution_id"]))) == 1
    test = memory.get_ab_test(test_id)
    assert test is not None and test.control_trials + test.treatment_trials == TESTED_RUNS
