"""The group commit's concurrency: items that arrive during a write go out together, each thread gets its own
answer (its result, or its own error), and nobody waits forever when a write is interrupted."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from db.attempts import GroupCommit


class Writes:
    """A write that records its batches; the first batch waits until ``hold`` is released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.first_started = threading.Event()
        self.lock = threading.Lock()

    def __call__(self, items: Sequence[int]) -> list[int]:
        with self.lock:
            first = not self.batches
            self.batches.append(list(items))
        if first:
            self.first_started.set()
            assert self.hold.wait(10)
        if any(item < 0 for item in items):
            raise ValueError(f"negative item in {list(items)}")
        return [item * 10 for item in items]


def _submit_all(group: GroupCommit[int, int], items: list[int]) -> dict[int, object]:
    """Each item from a thread of its own; each thread's answer: its result, or what it raised."""
    answers: dict[int, object] = {}

    def submit(item: int) -> None:
        try:
            answers[item] = group.submit(item)
        except BaseException as error:  # noqa: BLE001 - the answer under test
            answers[item] = error

    threads = [threading.Thread(target=submit, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
        assert not thread.is_alive(), "a submitter never got its answer"
    return answers


def _wait_queued(group: GroupCommit[int, int], count: int) -> None:
    for _ in range(1000):
        if len(group._queued) >= count:  # the queue behind the write in flight
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"never {count} queued")


def _behind_a_held_write(group: GroupCommit[int, int], writes: Writes, items: list[int], first: int = 0) -> dict[int, object]:
    """Submit ``first``, whose write ``writes`` holds; queue ``items`` behind it (a thread each); release the
    write; every item's answer."""
    leader = threading.Thread(target=group.submit, args=(first,))
    leader.start()
    assert writes.first_started.wait(10)
    answers: dict[int, object] = {}
    waiting = threading.Thread(target=lambda: answers.update(_submit_all(group, items)))
    waiting.start()
    _wait_queued(group, len(items))
    writes.hold.set()
    waiting.join(10)
    leader.join(10)
    return answers


def test_items_that_arrive_during_a_write_are_written_as_one_batch() -> None:
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes, max_batch=64)
    assert _behind_a_held_write(group, writes, list(range(1, 9))) == {item: item * 10 for item in range(1, 9)}
    assert writes.batches[0] == [0]
    assert sorted(writes.batches[1]) == list(range(1, 9))  # all eight, in one batch behind the first
    assert (group.batches, group.items) == (2, 9)


def test_each_thread_gets_its_own_result_and_a_bad_item_fails_alone() -> None:
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes, max_batch=64)
    answers = _behind_a_held_write(group, writes, [1, 2, -3, 4], first=100)
    assert {item: answers[item] for item in (1, 2, 4)} == {1: 10, 2: 20, 4: 40}
    assert isinstance(answers[-3], ValueError) and "[-3]" in str(answers[-3])  # its own write, alone
    # The failed batch of four, then each of its items alone.
    assert sorted(map(sorted, writes.batches[2:])) == [[-3], [1], [2], [4]]


def test_the_batch_size_is_capped_and_the_queue_drains() -> None:
    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes, max_batch=3)
    answers = _behind_a_held_write(group, writes, list(range(1, 11)))
    assert answers == {item: item * 10 for item in range(1, 11)}
    assert [len(batch) for batch in writes.batches] == [1, 3, 3, 3, 1]


def test_an_interrupted_write_wakes_its_batch_and_hands_over() -> None:
    calls: list[list[int]] = []

    def write(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise KeyboardInterrupt  # not an Exception: the batch is not retried, its waiters get the error
        return list(items)

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=8)
    with pytest.raises(KeyboardInterrupt):
        group.submit(1)
    assert group.submit(2) == 2  # the group commit is not left "writing" for ever
    assert calls == [[1], [2]]


def test_max_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(lambda items: list(items), max_batch=0)


def test_an_error_no_item_caused_is_every_items_answer_without_a_write_each() -> None:
    writes = Writes()
    outage = ConnectionError("the database is away")

    def write(items: Sequence[int]) -> list[int]:
        result = writes(items)
        if len(writes.batches) > 1:
            raise outage
        return result

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=64, alone=lambda error: error is not outage)
    answers = _behind_a_held_write(group, writes, [1, 2, 3])
    assert answers == {1: outage, 2: outage, 3: outage}
    assert len(writes.batches) == 2  # the first, then the three together: none written again alone


def test_a_thread_interrupted_while_queued_leaves_and_the_queue_goes_on() -> None:
    import signal

    class Interrupted(Exception):
        pass

    def interrupt(*_: object) -> None:
        raise Interrupted

    writes = Writes()
    group: GroupCommit[int, int] = GroupCommit(writes, max_batch=64)
    first = threading.Thread(target=group.submit, args=(0,))
    first.start()
    assert writes.first_started.wait(10)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        with pytest.raises(Interrupted):
            group.submit(7)  # queued behind the held write, then interrupted (as a gevent timeout would)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    writes.hold.set()
    first.join(10)
    assert _submit_all(group, [8]) == {8: 80}  # not stranded behind the interrupted thread
    assert [7] not in writes.batches and [8] in writes.batches


def test_an_interruption_while_writing_alone_answers_every_item() -> None:
    writes = Writes()

    def write(items: Sequence[int]) -> list[int]:
        result = writes(items)
        if len(items) > 1:
            raise ValueError("one of these is bad")
        if items[0] == 2:
            raise KeyboardInterrupt  # while each item is written alone: the rest must not be left unanswered
        return result

    group: GroupCommit[int, int] = GroupCommit(write, max_batch=64)
    answers = _behind_a_held_write(group, writes, [1, 2, 3])
    # Written alone in queue order: those before the interruption have their results, the rest its error; so has
    # the leader's own thread, which the interruption came through.
    alone = [batch[0] for batch in writes.batches[2:]]
    leader = writes.batches[1][0]
    assert alone[-1] == 2
    for item in (1, 2, 3):
        if item in alone[:-1] and item != leader:
            assert answers[item] == item * 10
        else:
            assert isinstance(answers[item], KeyboardInterrupt), answers
    assert _submit_all(group, [4]) == {4: 40}


def test_a_queued_item_waits_a_bounded_time_then_leaves_the_queue() -> None:
    import sqlalchemy.exc

    writes = Writes()
    group = GroupCommit(writes, max_batch=8, wait_seconds=0.2)
    leader = threading.Thread(target=group.submit, args=(1,))
    leader.start()
    assert writes.first_started.wait(5)
    # The write in flight holds; the queued item gives up after its wait, as an infrastructure error.
    with pytest.raises(sqlalchemy.exc.TimeoutError, match="within 0.2 s"):
        group.submit(2)
    assert len(group._queued) == 0  # withdrawn: no batch will carry it
    writes.hold.set()
    leader.join(5)
    assert not leader.is_alive() and writes.batches == [[1]]
    assert group.submit(3) == 30  # the group commit still serves
