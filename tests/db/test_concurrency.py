"""PatternMemory shared by many threads: exact counters, exact A/B counts, one running test per skill, screening
reservations one at a time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from db.engine import make_engine
from db.memory import AbTestConflictError, PatternMemory
from db.migrate import upgrade
from db.screening import fleet_screening_spent, reserve_fleet_calls

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


@pytest.fixture(params=["postgresql", "sqlite"])
def store(request: pytest.FixtureRequest, memory: PatternMemory, tmp_path: Path) -> Iterator[PatternMemory]:
    if request.param == "postgresql":
        yield memory
        return
    url = f"sqlite:///{tmp_path / 'wre.db'}"
    upgrade(url)
    embedded = PatternMemory(make_engine(url))
    yield embedded
    embedded.dispose()


def test_screening_reservations_read_and_write_one_at_a_time(store: PatternMemory) -> None:
    # Each reservation looks at the fleet's calls, dawdles, then takes 100 if no more than 100 are spent of
    # 250: without the lock every thread would see 0 and take 100. With it, exactly two take theirs.
    store.add_to_counters({"fleet.runs": 250})
    seen: list[int] = []

    def reserve(spent: int, runs: int) -> int:
        seen.append(spent)
        time.sleep(0.05)
        return 100 if runs - spent >= 100 else 0

    _in_threads(4, lambda index: reserve_fleet_calls(store, reserve))
    assert sorted(seen) == [0, 100, 200, 200]
    assert fleet_screening_spent(store) == (200, 250)
