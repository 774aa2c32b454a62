"""Two beat-style evaluators, each in a process of its own, over 50 running A/B tests while trials keep coming.

Each test must be decided exactly once (one conclusion, one learning event), on the counts it had when it was
decided (no trial lands after the verdict), with no deadlock and no error in either evaluator.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

from sqlalchemy import select, text

from db.memory import PatternMemory
from db.models import EVENTS
from tests.integration.skills_for_tests import python_skill
from tests.processes import REPO, service_env
from tests.reliability.checks import report
from worker.registry import register_skill_text

TESTS = 50
# At most 60 s, as the issue asks; each evaluator stops once no test is left running (within ~10 s here, later
# on a loaded machine: a fixed shorter run failed there with most tests still short of their trials).
EVALUATOR_SECONDS = float(os.environ.get("WRE_RELIABILITY_EVALUATOR_SECONDS", "60"))
# A clear winner on either side: the sequential test decides each test within a few dozen trials per arm.
GOOD, BAD = 0.9, 0.2
DECISION_EVENTS = ("variation_promoted", "variation_archived")


class Recorder(threading.Thread):
    """Records trials on random running tests through PatternMemory.record_ab_outcome until none is left."""

    def __init__(self, memory: PatternMemory, better: dict[int, bool]) -> None:
        super().__init__(daemon=True)
        self.memory = memory
        self.better = better
        self.recorded = 0
        self.refused = 0  # trials for a test that was decided meanwhile
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        rng = random.Random(8)
        running = sorted(self.better)
        while running and not self.halt.is_set():
            test_id = rng.choice(running)
            arm = rng.choice(("control", "treatment"))
            rate = GOOD if (arm == "treatment") == self.better[test_id] else BAD
            try:
                self.memory.record_ab_outcome(test_id, arm, rng.random() < rate)
                self.recorded += 1
            except ValueError:
                self.refused += 1
                running.remove(test_id)
            except Exception as error:  # a deadlock would surface here (or in an evaluator)
                self.errors.append(f"{type(error).__name__}: {error}"[:500])
                return


def _deadlocks(memory: PatternMemory) -> int:
    with memory.transaction() as conn:
        conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        return int(
            conn.execute(
                text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
            ).scalar_one()
        )


def test_two_evaluators_decide_each_test_once(database_url: str, memory: PatternMemory) -> None:
    better: dict[int, bool] = {}
    for i in range(TESTS):
        name = f"contest{i:02d}"
        register_skill_text(memory, python_skill(name, "echo"))
        control, _ = memory.get_production(name)
        treatment = memory.store_variation(name, python_skill(name, "echo", body="Answer, better."))
        better[memory.schedule_ab_test(name, control, treatment, policy="sequential")] = i % 2 == 0
    deadlocks_before = _deadlocks(memory)
    env = service_env(database_url, "redis://127.0.0.1:1/0", WRE_AB_POLICY="sequential")
    started = time.monotonic()
    evaluators = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.evaluator_loop", str(EVALUATOR_SECONDS)],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    recorder = Recorder(memory, better)
    recorder.start()
    try:
        outputs = [evaluator.communicate(timeout=EVALUATOR_SECONDS + 60) for evaluator in evaluators]
    finally:
        recorder.halt.set()
        for evaluator in evaluators:
            if evaluator.poll() is None:
                evaluator.kill()
    recorder.join(timeout=30)
    elapsed = time.monotonic() - started
    assert [evaluator.returncode for evaluator in evaluators] == [0, 0], outputs
    summaries = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    assert [s["errors"] for s in summaries] == [[], []]
    assert recorder.errors == []

    # Every test concluded once, by one evaluator or the other, never by both.
    first, second = (set(s["concluded"]) for s in summaries)
    assert sorted(summaries[0]["concluded"] + summaries[1]["concluded"]) == sorted(better)
    assert not first & second
    for test_id, treatment_better in better.items():
        test = memory.get_ab_test(test_id)
        assert test is not None and test.status == "completed" and test.decided_at is not None
        assert test.winner == ("treatment" if treatment_better else "control"), test
        # Decided on the counts it ended with: no trial was counted after (or lost by) the verdict.
        assert test.decision is not None
        assert (test.decision["control_trials"], test.decision["treatment_trials"]) == (
            test.control_trials,
            test.treatment_trials,
        )
        skill = memory.get_skill(test.skill_name)
        assert skill is not None
        expected_production = test.treatment_version if treatment_better else test.control_version
        assert skill.production_variation_id == expected_production
    # One learning event per decision.
    with memory.transaction() as conn:
        details = conn.execute(select(EVENTS.c.details).where(EVENTS.c.event_type.in_(DECISION_EVENTS)))
        events = Counter(int(detail["test_id"]) for detail in details.scalars())
    assert dict(events) == dict.fromkeys(better, 1)
    memory.dispose()  # the recorder's connections end: their statistics are flushed
    assert _deadlocks(memory) == deadlocks_before
    report(
        "concurrent_evaluators",
        tests=TESTS,
        evaluator_seconds=EVALUATOR_SECONDS,
        rounds=[s["rounds"] for s in summaries],
        concluded=[len(s["concluded"]) for s in summaries],
        trials_recorded=recorder.recorded,
        trials_refused_after_verdict=recorder.refused,
        deadlocks=_deadlocks(memory) - deadlocks_before,
        elapsed_s=round(elapsed, 1),
    )
