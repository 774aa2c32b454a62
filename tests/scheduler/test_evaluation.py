"""Evaluation rounds against real Postgres: promotion, archive, inconclusive, racing evaluators, rollback."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest
from sqlalchemy import update

from db.memory import PatternMemory
from db.models import TESTS
from scheduler.evaluation import PromotionPolicy, run_evaluation_round
from tests.ledger import fill_ledger
from tests.processes import REPO
from worker.settings import Settings


def _skill_with_variation(memory: PatternMemory, name: str = "s") -> tuple[str, str]:
    base = memory.register_skill(name, f"---\nname: {name}\n---\nbase", default_agent="python")
    treatment = memory.store_variation(name, f"---\nname: {name}\n---\nbetter", parent_version=base)
    return base, treatment


def _record(memory: PatternMemory, test_id: int, arm: str, successes: int, trials: int) -> None:
    for i in range(trials):
        memory.record_ab_outcome(test_id, arm, i < successes, fidelity=1.0 if i < successes else 0.5)


def test_clear_winner_is_promoted(memory: PatternMemory) -> None:
    base, treatment = _skill_with_variation(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    _record(memory, test_id, "control", 10, 60)
    _record(memory, test_id, "treatment", 55, 60)
    [conclusion] = run_evaluation_round(memory)
    assert conclusion.winner == "treatment" and conclusion.promoted_variation == treatment
    test = memory.get_ab_test(test_id)
    assert test is not None and test.status == "completed" and test.winner == "treatment"
    assert test.decision is not None and test.decision["treatment_trials"] == 60
    assert memory.get_production("s")[0] == treatment
    assert memory.get_variation(base).test_status == "retired"  # type: ignore[union-attr]
    [event] = [e for e in memory.get_evolution_history("s") if e.event_type == "variation_promoted"]
    assert event.fidelity_before == pytest.approx((10 * 1.0 + 50 * 0.5) / 60)
    assert event.fidelity_after == pytest.approx((55 * 1.0 + 5 * 0.5) / 60)
    assert run_evaluation_round(memory) == []  # decided once


def test_worse_treatment_is_archived(memory: PatternMemory) -> None:
    base, treatment = _skill_with_variation(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    _record(memory, test_id, "control", 55, 60)
    _record(memory, test_id, "treatment", 10, 60)
    [conclusion] = run_evaluation_round(memory)
    assert conclusion.winner == "control" and conclusion.archived_variation == treatment
    assert memory.get_production("s")[0] == base
    assert memory.get_variation(treatment).test_status == "archived"  # type: ignore[union-attr]


def test_undecided_at_the_maximum_is_inconclusive(memory: PatternMemory, database_url: str) -> None:
    store = PatternMemory(database_url, policy=PromotionPolicy(Settings(ab_max_trials_per_arm=40)))
    base, treatment = _skill_with_variation(store)
    test_id = store.schedule_ab_test("s", base, treatment)
    _record(store, test_id, "control", 20, 39)
    _record(store, test_id, "treatment", 20, 39)
    assert run_evaluation_round(store) == []
    _record(store, test_id, "control", 1, 1)
    _record(store, test_id, "treatment", 0, 1)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.winner == "inconclusive"
    assert store.get_production("s")[0] == base
    assert store.get_variation(treatment).test_status == "archived"  # type: ignore[union-attr]


def test_too_few_trials_keep_the_test_running(memory: PatternMemory) -> None:
    base, treatment = _skill_with_variation(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    _record(memory, test_id, "control", 0, 5)
    _record(memory, test_id, "treatment", 5, 5)
    assert run_evaluation_round(memory) == []
    assert memory.ab_verdict(test_id)["should_promote"] is False


def _decisive_tests(memory: PatternMemory, count: int) -> list[int]:
    ids = []
    for i in range(count):
        base, treatment = _skill_with_variation(memory, f"s{i}")
        test_id = memory.schedule_ab_test(f"s{i}", base, treatment)
        # Trials written in bulk: the race is about deciding, not counting.
        fill_ledger(memory, test_id, "control", 20 + i % 3, 100)
        fill_ledger(memory, test_id, "treatment", 90, 100)
        ids.append(test_id)
    return ids


def _assert_each_decided_once(memory: PatternMemory, ids: list[int]) -> None:
    for test_id in ids:
        test = memory.get_ab_test(test_id)
        assert test is not None and test.status == "completed" and test.winner == "treatment"
    promoted = [
        e
        for i in range(len(ids))
        for e in memory.get_evolution_history(f"s{i}")
        if e.event_type == "variation_promoted"
    ]
    assert len(promoted) == len(ids)
    assert sorted(e.details["test_id"] for e in promoted) == sorted(ids)


def test_racing_evaluator_threads_decide_each_test_once(memory: PatternMemory) -> None:
    ids = _decisive_tests(memory, 50)
    barrier = threading.Barrier(2)
    decided: list[int] = []

    def evaluate() -> None:
        barrier.wait()
        for _ in range(3):
            decided.extend(c.test_id for c in run_evaluation_round(memory))

    threads = [threading.Thread(target=evaluate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(decided) == sorted(ids)
    _assert_each_decided_once(memory, ids)


EVALUATOR = """
import sys, time
from scheduler.evaluation import promotion_memory, run_evaluation_round
from worker.settings import Settings
memory = promotion_memory(Settings(database_url=sys.argv[1]))
start = float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
print(sum(len(run_evaluation_round(memory)) for _ in range(3)))
"""


def test_racing_evaluator_processes_decide_each_test_once(memory: PatternMemory, database_url: str) -> None:
    import time

    ids = _decisive_tests(memory, 50)
    start = str(time.time() + 3)
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", EVALUATOR, database_url, start],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    counts = [int(p.communicate(timeout=60)[0].strip()) for p in processes]
    assert sum(counts) == 50
    _assert_each_decided_once(memory, ids)


def test_rollback_after_promotion(memory: PatternMemory) -> None:
    base, treatment = _skill_with_variation(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    _record(memory, test_id, "control", 10, 60)
    _record(memory, test_id, "treatment", 55, 60)
    run_evaluation_round(memory)
    assert memory.rollback_skill("s") == (treatment, base)
    assert memory.get_production("s")[0] == base
    assert [e.event_type for e in memory.get_evolution_history("s")][-1] == "rollback"


def test_a_test_the_policy_refuses_does_not_stop_the_others(memory: PatternMemory) -> None:
    # schedule_ab_test refuses an unknown policy; a row can still carry one (written by hand, or by a release
    # that knew a policy this one does not).
    base, treatment = _skill_with_variation(memory, "bad")
    poisoned = memory.schedule_ab_test("bad", base, treatment)
    with memory.transaction() as conn:
        conn.execute(update(TESTS).where(TESTS.c.test_id == poisoned).values(policy="no-such-policy"))
    ids = _decisive_tests(memory, 2)
    decided = [c.test_id for c in run_evaluation_round(memory)]
    assert sorted(decided) == sorted(ids)
    test = memory.get_ab_test(poisoned)
    assert test is not None and test.status == "running"


def test_rollback_racing_the_evaluator_does_not_deadlock(memory: PatternMemory) -> None:
    _decisive_tests(memory, 20)
    run_evaluation_round(memory)  # promotes all 20: every skill now has a previous version
    for i in range(20):
        memory.promote_variation(memory.store_variation(f"s{i}", f"---\nname: s{i}\n---\nmanual"))
    ids = [memory.schedule_ab_test(f"s{i}", *_production_and_new(memory, f"s{i}")) for i in range(20)]
    _make_decisive(memory, ids)
    errors: list[BaseException] = []

    def roll_back() -> None:
        try:
            for i in range(20):
                memory.rollback_skill(f"s{i}")
        except BaseException as error:  # noqa: BLE001 - surfaced below
            errors.append(error)

    thread = threading.Thread(target=roll_back)
    thread.start()
    run_evaluation_round(memory)
    thread.join(timeout=60)
    assert not thread.is_alive() and errors == []
    for test_id in ids:
        test = memory.get_ab_test(test_id)
        assert test is not None and test.status in ("completed", "stopped")


def _production_and_new(memory: PatternMemory, skill: str) -> tuple[str, str]:
    production, content = memory.get_production(skill)
    return production, memory.store_variation(skill, content + "\nagain", parent_version=production)


def _make_decisive(memory: PatternMemory, ids: list[int]) -> None:
    for test_id in ids:
        fill_ledger(memory, test_id, "control", 20, 100)
        fill_ledger(memory, test_id, "treatment", 90, 100)
