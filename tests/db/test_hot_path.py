"""The worker's hot path against real Postgres: an attempt is recorded in ONE transaction of a few statements
(as many for a batch of attempts as for one), no ping on a busy connection, a ping (and a fresh connection)
after an idle one was cut; counters exact on both dialects."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text

import db.engine
from db.engine import make_engine
from db.memory import LearningEventRecord, OutcomeRecord, PatternMemory
from db.migrate import upgrade


def _outcome(run_id: str, test_id: int | None = None, arm: str | None = None) -> OutcomeRecord:
    return OutcomeRecord(
        run_id=run_id,
        attempt=1,
        skill_name="s",
        variation_id="v" * 16,
        agent="python",
        success=True,
        execution_success=True,
        pattern_fidelity=1.0,
        step_results=[{"id": "answer", "passed": True}],
        input_context={"i": 1},
        output='{"answer": "ok"}',
        test_id=test_id,
        arm=arm,
        final=True,
    )


class Calls:
    """Counts what an engine sends: statements (and pings), commits."""

    def __init__(self, engine: Engine) -> None:
        self.counts: Counter[str] = Counter()
        event.listen(engine, "before_cursor_execute", lambda *_: self.counts.update(["statements"]))
        event.listen(engine, "commit", lambda *_: self.counts.update(["commits"]))
        original = engine.dialect.do_ping

        def ping(dbapi_connection: Any) -> bool:
            self.counts.update(["pings"])
            return bool(original(dbapi_connection))

        engine.dialect.do_ping = ping  # type: ignore[method-assign]

    def take(self) -> Counter[str]:
        found, self.counts = self.counts, Counter()
        return found


@pytest.fixture
def fresh(database_url: str, memory: PatternMemory) -> Iterator[tuple[PatternMemory, Calls]]:
    """A store on an engine of its own (the shared one's pool must not see these listeners)."""
    engine = make_engine(database_url)
    yield PatternMemory(engine), Calls(engine)
    engine.dispose()


def test_record_attempt_is_one_transaction(fresh: tuple[PatternMemory, Calls]) -> None:
    store, calls = fresh
    store.register_skill("s", "content", default_agent="python")
    event_ = LearningEventRecord(skill_name="s", event_type="react_execution", fidelity_before=1.0)
    store.record_attempt(_outcome("warm"), counters={"a": 1}, learning_event=event_)
    calls.take()
    for i in range(20):
        assert store.record_attempt(_outcome(f"r{i}"), counters={"a": 1, "b": 2}, learning_event=event_)
    # Outcome, both counters and the event: three statements, one commit; no ping on a busy pool.
    assert calls.take() == Counter({"statements": 60, "commits": 20})
    assert store.get_counters(["a", "b"]) == {"a": 21, "b": 40}
    assert store.record_attempt(_outcome("r0"), counters={"a": 1}, learning_event=event_) is False
    assert store.get_counter("a") == 21
    assert len(store.get_evolution_history("s")) == 21


def test_trial_is_counted_in_the_same_transaction(fresh: tuple[PatternMemory, Calls]) -> None:
    store, calls = fresh
    control = store.register_skill("s", "content", default_agent="python")
    treatment = store.store_variation("s", "other content", parent_version=control)
    test_id = store.schedule_ab_test("s", control, treatment)
    # The worker writes a routed run's trial when it assigns the run; the outcome completes and counts it.
    for run_id, arm in (("t1", "treatment"), ("t2", "control"), ("late", "control")):
        store.assign_trial(test_id, run_id, arm, run_id, 60.0 if run_id != "late" else -1.0)
    calls.take()
    assert store.record_attempt(_outcome("t1", test_id, "treatment"), counters={"a": 1})
    # Outcome, counters, the run's pending trials, the test locked, its counts, the trials completed.
    assert calls.take() == Counter({"statements": 6, "commits": 1})
    # Past its trial's deadline an outcome is recorded but counts nowhere: the ledger counted it as a failure.
    assert store.record_attempt(_outcome("late", test_id, "control"), counters={"a": 1})
    failed = replace(_outcome("t2", test_id, "control"), success=False, pattern_fidelity=0.5)
    assert store.record_attempt(failed, counters={"a": 1})
    assert not store.record_attempt(failed, counters={"a": 1})
    retry = replace(_outcome("t2", test_id, "control"), attempt=2)
    assert store.record_attempt(retry)  # a retry is no trial: the run is judged on its first attempt
    test = store.get_ab_test(test_id)
    assert test is not None
    assert (test.treatment_trials, test.treatment_successes, test.treatment_fidelity_sum) == (1, 1, 1.0)
    assert (test.control_trials, test.control_successes, test.control_fidelity_sum) == (1, 0, 0.5)
    assert store.get_counter("a") == 3


def test_an_outcome_without_extras_and_the_sqlite_path_agree(tmp_path: Path, memory: PatternMemory) -> None:
    url = f"sqlite:///{tmp_path / 'wre.db'}"
    upgrade(url)
    lite = PatternMemory(make_engine(url))
    event_ = LearningEventRecord(skill_name="s", event_type="react_execution", fidelity_before=0.5)
    for store in (memory, lite):
        store.register_skill("s", "content", default_agent="python")
        assert store.record_attempt(_outcome("x"))
        assert store.record_attempt(_outcome("y"), counters={"n": 2, "zero": 0}, learning_event=event_)
        assert not store.record_attempt(_outcome("y"), counters={"n": 2}, learning_event=event_)
        assert store.get_counters(["n", "zero"]) == {"n": 2, "zero": 0}
        assert [row["run_id"] for row in store.run_outcomes("y")] == ["y"]
        assert [e.event_type for e in store.get_evolution_history("s")] == ["react_execution"]
    lite.dispose()


def test_both_databases_count_a_routed_attempt_alike(tmp_path: Path, memory: PatternMemory) -> None:
    """One definition of the write on both dialects: a routed first attempt completes its trial and counts in
    its test once, a trial counted by hand goes through the same count update."""
    url = f"sqlite:///{tmp_path / 'wre.db'}"
    upgrade(url)
    lite = PatternMemory(make_engine(url))
    for store in (memory, lite):
        control = store.register_skill("s", "content", default_agent="python")
        treatment = store.store_variation("s", "other content", parent_version=control)
        test_id = store.schedule_ab_test("s", control, treatment, policy="sequential")
        store.assign_trial(test_id, "t1", "treatment", "run:t1", 60.0)
        assert store.record_attempt(_outcome("t1", test_id, "treatment"), counters={"a": 1})
        assert not store.record_attempt(_outcome("t1", test_id, "treatment"), counters={"a": 1})
        store.record_ab_outcome(test_id, "control", False, 0.25)
        test = store.get_ab_test(test_id)
        assert test is not None
        assert (test.treatment_trials, test.treatment_successes, test.treatment_fidelity_sum) == (1, 1, 1.0)
        assert (test.control_trials, test.control_successes, test.control_fidelity_sum) == (1, 0, 0.25)
        cohort = store.cohorts([test_id], grace_seconds=0)[test_id]
        assert (cohort.pending, cohort.treatment.trials, cohort.control.trials) == (0, 1, 1)
        assert store.get_counter("a") == 1
    lite.dispose()


def test_an_idle_connection_is_pinged_and_replaced_when_cut(
    fresh: tuple[PatternMemory, Calls], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, calls = fresh
    with store.engine.connect() as conn:
        backend = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    calls.take()
    with store.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert calls.take()["pings"] == 0  # used a moment ago: trusted
    monkeypatch.setattr(db.engine, "PING_AFTER_IDLE_SECONDS", 0.0)
    killer = PatternMemory(store.engine.url.render_as_string(hide_password=False))
    with killer.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": backend}).scalar_one()
    time.sleep(0.1)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() != backend
    assert calls.take()["pings"] >= 1


def test_counters_are_exact_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'wre.db'}"
    upgrade(url)
    store = PatternMemory(make_engine(url))
    for _ in range(30):
        store.add_to_counters({"x": 1, "y": 3, "z": 0})
    store.increment_counter("x", -5)
    assert store.get_counters(["x", "y", "z"]) == {"x": 25, "y": 90, "z": 0}
    store.dispose()


def test_many_threads_count_exactly(fresh: tuple[PatternMemory, Calls]) -> None:
    import threading

    store, _ = fresh
    name = f"c{uuid.uuid4().hex[:6]}"

    def bump() -> None:
        for _ in range(50):
            store.add_to_counters({name: 1, f"{name}_twice": 2})

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.get_counters([name, f"{name}_twice"]) == {name: 400, f"{name}_twice": 800}


def test_run_figures_read_per_skill_counters_not_outcomes(memory: PatternMemory) -> None:
    """A scrape's run figures come from counters the recording statement keeps: exact, and never a scan of
    the outcomes (so they cost the same at 10 or 10 million outcomes)."""
    from db.figures import run_figures

    memory.register_skill("s", "---\nname: s\n---\n", default_agent="python")
    two_attempts = [replace(_outcome("run-a"), final=False, success=False), replace(_outcome("run-a"), attempt=2)]
    for outcome in [*two_attempts, replace(_outcome("run-b"), success=False), _outcome("run-c")]:
        assert memory.record_attempt(outcome)
    assert not memory.record_attempt(_outcome("run-c"))  # a redelivery counts nothing twice
    statements: list[str] = []

    def seen(*args: Any) -> None:
        statements.append(str(args[2]))

    event.listen(memory.engine, "before_cursor_execute", seen)
    try:
        figures = run_figures(memory)["s"]
    finally:
        event.remove(memory.engine, "before_cursor_execute", seen)
    assert (figures.attempts, figures.runs, figures.failed_runs, figures.runs_retried, figures.retries) == (
        4, 3, 1, 1, 1,
    )  # fmt: skip
    assert statements and not any("skill_outcomes" in statement for statement in statements)


def _record_in_threads(store: PatternMemory, outcomes: list[OutcomeRecord], event_: LearningEventRecord) -> list[object]:
    """Record ``outcomes`` from one thread each, all queued behind a first write that a table lock holds up."""
    import threading

    answers: list[object] = [None] * len(outcomes)

    def record(index: int) -> None:
        try:
            answers[index] = store.record_attempt(outcomes[index], counters={"a": 1}, learning_event=event_)
        except Exception as error:  # noqa: BLE001 - the answer under test
            answers[index] = error

    # Its own engine: the store's statement counts see only the store's writes.
    locker = make_engine(store.engine.url.render_as_string(hide_password=False))
    with locker.connect() as blocker:
        blocker.execute(text("LOCK TABLE telemetry_counters IN EXCLUSIVE MODE"))
        threads = [threading.Thread(target=record, args=(i,)) for i in range(len(outcomes))]
        threads[0].start()
        time.sleep(0.2)  # the first write is in flight, waiting on the lock
        for thread in threads[1:]:
            thread.start()
        group = store.outcomes.group_commit
        deadline = time.monotonic() + 10
        while len(group._queued) < len(outcomes) - 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        blocker.rollback()
    locker.dispose()
    for thread in threads:
        thread.join(10)
    return answers


def test_attempts_recorded_at_once_are_one_transaction_and_count_exactly(fresh: tuple[PatternMemory, Calls]) -> None:
    """Concurrent attempts of routed runs are grouped (db/group_commit.py): the one in flight, then every attempt
    that queued behind it in one transaction of as many statements as one attempt takes; outcomes, counters,
    test counts, trials and events exact; a redelivery of each counts nothing."""
    store, calls = fresh
    control = store.register_skill("s", "content", default_agent="python")
    treatment = store.store_variation("s", "other content", parent_version=control)
    test_id = store.schedule_ab_test("s", control, treatment)
    outcomes = []
    for i in range(12):
        arm = "treatment" if i % 3 == 0 else "control"
        store.assign_trial(test_id, f"g{i}", arm, f"g{i}", 60.0)
        outcomes.append(replace(_outcome(f"g{i}", test_id, arm), success=i % 2 == 0, pattern_fidelity=i / 20))
    event_ = LearningEventRecord(skill_name="s", event_type="react_execution", fidelity_before=1.0)
    calls.take()
    group = store.outcomes.group_commit
    before = (group.batches, group.items)
    assert _record_in_threads(store, outcomes, event_) == [True] * 12
    assert (group.batches - before[0], group.items - before[1]) == (2, 12)
    assert calls.take() == Counter({"statements": 2 * 7, "commits": 2})
    test = store.get_ab_test(test_id)
    assert test is not None
    treated = [i for i in range(12) if i % 3 == 0]
    controls = [i for i in range(12) if i % 3 != 0]
    assert (test.treatment_trials, test.treatment_successes) == (4, sum(1 for i in treated if i % 2 == 0))
    assert (test.control_trials, test.control_successes) == (8, sum(1 for i in controls if i % 2 == 0))
    assert test.treatment_fidelity_sum == pytest.approx(sum(i / 20 for i in treated))
    assert test.control_fidelity_sum == pytest.approx(sum(i / 20 for i in controls))
    assert store.get_counter("a") == 12
    assert len(store.get_evolution_history("s")) == 12
    with store.engine.connect() as conn:
        pending = conn.execute(text("SELECT count(*) FROM ab_trials WHERE completed_at IS NULL")).scalar_one()
    assert pending == 0
    # Redelivered all at once: nothing new anywhere.
    assert _record_in_threads(store, outcomes, event_) == [False] * 12
    again = store.get_ab_test(test_id)
    assert again is not None and (again.treatment_trials, again.control_trials) == (4, 8)
    assert store.get_counter("a") == 12
    assert len(store.get_evolution_history("s")) == 12


def test_an_attempt_the_database_refuses_fails_alone(fresh: tuple[PatternMemory, Calls]) -> None:
    store, _ = fresh
    store.register_skill("s", "content", default_agent="python")
    outcomes = [_outcome(f"b{i}") for i in range(6)]
    outcomes[3] = replace(outcomes[3], failed_at_step="x" * 200)  # over the column's 128 characters
    event_ = LearningEventRecord(skill_name="s", event_type="react_execution")
    answers = _record_in_threads(store, outcomes, event_)
    assert [answer for i, answer in enumerate(answers) if i != 3] == [True] * 5
    assert "value too long" in str(answers[3])
    assert [row["run_id"] for row in store.run_outcomes("b3")] == []
    assert store.get_counter("a") == 5


def test_the_same_attempt_twice_in_one_batch_is_recorded_once(memory: PatternMemory) -> None:
    from db.attempts import Attempt, write_attempts
    from db.models import utcnow

    memory.register_skill("s", "content", default_agent="python")

    def row(run_id: str) -> Any:
        outcome = _outcome(run_id)
        values = {name: getattr(outcome, name) for name in ("run_id", "attempt", "skill_name", "variation_id",
                  "agent", "success", "execution_success", "pattern_fidelity", "failed_at_step", "error",
                  "step_results", "input_context", "output", "execution_time_ms", "test_id", "arm", "final",
                  "token_usage", "request_digest", "result", "evolve_pending")}  # fmt: skip
        values["created_at"] = utcnow()
        return Attempt(values, {"a": 1})

    with memory.engine.begin() as conn:
        assert write_attempts(conn, [row("d1"), row("d1"), row("d2")]) == [True, False, True]
    assert memory.get_counter("a") == 2
    assert len(memory.run_outcomes("d1")) == 1


def test_the_write_carries_every_column_of_its_tables() -> None:
    """An attempt's row and its event's are built from the records' fields: a column added to a table must be
    added to its record too, or this fails (and the write would leave it at its default)."""
    from db.models import EVENTS, OUTCOMES
    from db.outcomes import EVENT_COLUMNS, OUTCOME_FIELDS

    assert {column.name for column in OUTCOMES.c} - {"id"} == {*OUTCOME_FIELDS, "created_at"}
    assert {column.name for column in EVENTS.c} - {"event_id"} == set(EVENT_COLUMNS)


def test_which_batch_errors_are_written_again_one_attempt_at_a_time(memory: PatternMemory) -> None:
    """Bad data or a deadlock may be one attempt's doing (each is then written alone); an outage is not (every
    attempt of the batch gets it at once, instead of one more failing connection each)."""
    import sqlalchemy.exc

    from db.attempts import one_attempt_may_be_why
    from tests.processes import spare_port

    with pytest.raises(sqlalchemy.exc.DataError) as bad_data, memory.engine.connect() as conn:
        conn.execute(text("SELECT CAST(:v AS integer)"), {"v": "not a number"})
    assert one_attempt_may_be_why(bad_data.value)
    with pytest.raises(sqlalchemy.exc.OperationalError) as deadlock, memory.engine.connect() as conn:
        conn.execute(text("DO $$ BEGIN RAISE EXCEPTION 'x' USING ERRCODE = 'deadlock_detected'; END $$"))
    assert one_attempt_may_be_why(deadlock.value)
    away = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{spare_port()}/nowhere")
    with pytest.raises(sqlalchemy.exc.OperationalError) as outage, away.connect():
        pass
    assert not one_attempt_may_be_why(outage.value)
    away.dispose()


def test_a_value_json_cannot_carry_fails_its_own_attempt_with_a_clear_error(memory: PatternMemory) -> None:
    memory.register_skill("s", "content", default_agent="python")
    with pytest.raises(ValueError, match="execution_time_ms must be a finite duration"):
        memory.record_attempt(replace(_outcome("nan-time"), execution_time_ms=float("nan")))
    odd_event = LearningEventRecord(skill_name="s", event_type="react_execution", fidelity_before=float("inf"))
    with pytest.raises(ValueError, match="must be a finite number"):
        memory.record_attempt(_outcome("inf-event"), learning_event=odd_event)
    assert memory.run_outcomes("nan-time") == [] and memory.run_outcomes("inf-event") == []
