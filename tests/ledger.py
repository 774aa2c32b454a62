"""Filling a test's trial ledger in bulk, for tests whose subject is deciding, not counting."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from db.memory import PatternMemory
from db.models import TESTS, TRIALS, utcnow


def fill_ledger(memory: PatternMemory, test_id: int, arm: str, successes: int, trials: int) -> None:
    """``trials`` completed single-run units on ``arm``, the first ``successes`` of them successful; the test's
    running counts follow, as the hot path would keep them."""
    start = utcnow() - timedelta(hours=1)
    rows = []
    for i in range(trials):
        run_id = f"seed-{uuid.uuid4().hex}"
        at = start + timedelta(milliseconds=i)
        rows.append(
            {
                "test_id": test_id,
                "run_id": run_id,
                "unit_key": f"run:{run_id}",
                "arm": arm,
                "assigned_at": at,
                "deadline": at,
                "completed_at": at,
                "success": i < successes,
                "fidelity": 1.0 if i < successes else 0.0,
            }
        )
    with memory.transaction() as conn:
        if rows:
            conn.execute(TRIALS.insert(), rows)
        conn.execute(
            update(TESTS)
            .where(TESTS.c.test_id == test_id)
            .values(
                {
                    f"{arm}_trials": TESTS.c[f"{arm}_trials"] + trials,
                    f"{arm}_successes": TESTS.c[f"{arm}_successes"] + successes,
                    f"{arm}_fidelity_sum": TESTS.c[f"{arm}_fidelity_sum"] + float(successes),
                }
            )
        )
