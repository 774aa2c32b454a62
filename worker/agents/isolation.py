"""Run a piece of a skill's own code (a python agent, a ``python:`` or ``regex`` check) in a child process that
is killed when its time is up.

A thread that overran its limit cannot be stopped: it keeps its stack, its memory and, if it spins, a core,
for as long as the worker lives (docs/RELIABILITY.md measured 200 hung agents as 200 leaked threads, and
spinning ones as an idle worker burning CPU). A forked child can be killed, and everything it held goes with
it. The child is forked from the worker, so the skill's modules are already imported and the call costs a
fork, not an interpreter start; docs/RELIABILITY.md has the cost per attempt, measured side by side.

The child inherits only the forking thread. It writes its answer (pickled) to a pipe and leaves with
``os._exit``: no atexit handler, no Celery or database shutdown runs in it.
"""

from __future__ import annotations

import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from typing import Any

READ_CHUNK_BYTES = 1 << 16
CHILD_FAILED_EXIT = 70


class ChildTimeout(TimeoutError):
    """The child did not answer within its time limit; it was killed."""


class ChildDied(RuntimeError):
    """The child ended without an answer (killed by a signal, out of memory, ``os._exit`` in the skill)."""


def call_in_child(function: Callable[[], Any], time_limit: float) -> Any:
    """``function()`` run in a forked child, its return value (or exception) brought back.

    :param function: what to run; its result must pickle (a skill's output is JSON data).
    :param time_limit: seconds to wait for the answer; after that the child is killed.
    :raises ChildTimeout: no answer within ``time_limit``.
    :raises ChildDied: the child ended without an answer.
    :raises BaseException: whatever ``function`` raised, re-raised here.
    """
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_fd)
        _answer(function, write_fd)
    os.close(write_fd)
    try:
        data = _read_until(read_fd, time.monotonic() + time_limit)
    finally:
        os.close(read_fd)
    if data is None:
        _kill(pid)
        raise ChildTimeout(f"timed out after {time_limit:g}s")
    os.waitpid(pid, 0)
    if not data:
        raise ChildDied("the skill's process ended without an answer")
    status, value = pickle.loads(data)  # noqa: S301 - our own child's answer, through our own pipe
    if status == "error":
        raise value
    return value


def _answer(function: Callable[[], Any], write_fd: int) -> None:
    """In the child: run, write the pickled answer, leave at once."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's handlers are not the child's
        try:
            payload: tuple[str, Any] = ("ok", function())
        except BaseException as exc:  # everything the skill raises is its answer, SystemExit too
            payload = ("error", exc)
        try:
            data = pickle.dumps(payload)
        except Exception as exc:  # an exception or value that does not pickle: say so instead
            data = pickle.dumps(("error", RuntimeError(f"{type(payload[1]).__name__} cannot be returned: {exc}")))
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view) :]
        os._exit(0)
    finally:
        os._exit(CHILD_FAILED_EXIT)


def _read_until(read_fd: int, deadline: float) -> bytes | None:
    """Everything the child writes until it closes the pipe; None if the deadline comes first."""
    chunks: list[bytes] = []
    # poll, not select: a busy worker's descriptors may be numbered past select's 1024.
    poller = select.poll()
    poller.register(read_fd, select.POLLIN | select.POLLHUP)
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            return None
        chunk = os.read(read_fd, READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
