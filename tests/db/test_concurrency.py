"""PatternMemory shared by many threads: exact counters, exact A/B counts, one running test per skill."""

from __future__ import annotations

import threading
from collections.abc import Callable

from db.memory import AbTestConflictError, PatternMemory

THREADS = 8


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    start = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        start.wait()
        try:
            work(index)
        except BaseException as error:  # noqa: BLE001 - collected and re-raised in the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_counter_is_exact_under_concurrency(memory: PatternMemory) -> None:
    _in_threads(THREADS, lambda _: [memory.increment_counter("hits") for _ in range(500)])
    assert memory.get_counter("hits") == THREADS * 500


def test_ab_outcomes_are_exact_under_concurrency(memory: PatternMemory) -> None:
    base = memory.register_skill("s", "---\nname: s\n---\nbase", default_agent="python")
    treatment = memory.store_variation("s", "---\nname: s\n---\nnew", parent_version=base)
    test_id = memory.schedule_ab_test("s", base, treatment)

    def record(index: int) -> None:
        for i in range(125):  # 8 x 125 = 1,000 outcomes
            arm = "control" if (index + i) % 2 == 0 else "treatment"
            memory.record_ab_outcome(test_id, arm, success=i % 3 == 0)

    _in_threads(THREADS, record)
    test = memory.get_ab_test(test_id)
    assert test is not None
    expected_control = sum(1 for t in range(THREADS) for i in range(125) if (t + i) % 2 == 0)
    expected_control_successes = sum(1 for t in range(THREADS) for i in range(125) if (t + i) % 2 == 0 and i % 3 == 0)
    expected_successes = sum(1 for _ in range(THREADS) for i in range(125) if i % 3 == 0)
    assert test.control_trials == expected_control
    assert test.treatment_trials == 1000 - expected_control
    assert test.control_successes == expected_control_successes
    assert test.treatment_successes == expected_successes - expected_control_successes


def test_racing_schedulers_make_exactly_one_test(memory: PatternMemory) -> None:
    base = memory.register_skill("s", "---\nname: s\n---\nbase", default_agent="python")
    treatments = [memory.store_variation("s", f"---\nname: s\n---\nv{i}", parent_version=base) for i in range(2)]
    results: list[str] = []

    def schedule(index: int) -> None:
        try:
            memory.schedule_ab_test("s", base, treatments[index])
            results.append("scheduled")
        except AbTestConflictError:
            results.append("conflict")

    for _ in range(5):
        results.clear()
        for test in memory.list_ab_tests(status="running"):
            memory.stop_ab_test(test.test_id)
        _in_threads(2, schedule)
        assert sorted(results) == ["conflict", "scheduled"]
        assert len(memory.list_ab_tests(status="running")) == 1
