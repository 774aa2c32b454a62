"""A beat-style evaluator in a process of its own: the beat task's round, back to back, for a while.

``python -m tests.reliability.evaluator_loop SECONDS`` runs :func:`scheduler.evaluation.run_evaluation_round`
on the store at WRE_DATABASE_URL (what ``wre.evaluate_ab_tests`` runs every WRE_AB_EVAL_SECONDS), with a pause of
PAUSE_SECONDS between rounds, for at most SECONDS or until no test is left running (guards aside), and prints one JSON line:
rounds, the test ids it concluded, errors.
"""

from __future__ import annotations

import json
import sys
import time

from scheduler.evaluation import promotion_memory, run_evaluation_round
from worker.settings import Settings

PAUSE_SECONDS = 0.02


def main(seconds: float) -> int:
    memory = promotion_memory(Settings())
    rounds, concluded, errors = 0, [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            concluded += [conclusion.test_id for conclusion in run_evaluation_round(memory)]
        except Exception as error:  # reported, and the test fails on any
            errors.append(f"{type(error).__name__}: {error}"[:500])
        rounds += 1
        if all(test.is_guard for test in memory.list_ab_tests(status="running")):
            break  # every test decided (by this evaluator or the other); the promotions' guards run on
        time.sleep(PAUSE_SECONDS)
    print(json.dumps({"rounds": rounds, "concluded": concluded, "errors": errors}))
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1])))
