"""Run one attempt of an agent under its time limit; any failure of the skill becomes the attempt's error.

Agents that do not run the skill's own code (an LLM call, the simulation) run in a thread. The skill's own code
(a python agent, a ``python:`` or ``regex`` check) runs in a child process that is killed when its time is up.

A thread that overran its limit cannot be stopped: it keeps its stack, its memory and, if it spins, a core,
for as long as the worker lives (docs/RELIABILITY.md measured 200 hung agents as 200 leaked threads, and
spinning ones as an idle worker burning CPU). A child process can be killed, and everything it held goes
with it.

Each worker thread keeps one child, forked from the worker (so the skill's modules are imported already),
and sends it calls over a pipe: an attempt costs a round trip of pickles, not a fork. A fork per attempt
measured 25-45 ms on a loaded 2-core machine against ~0.1 ms for the round trip (docs/RELIABILITY.md). When a
call overruns, its child is killed and reaped, and the next call forks a fresh one.

The child inherits only the forking thread. It leaves with ``os._exit`` when its pipe closes (the worker
stopped or died): no atexit handler, no Celery or database shutdown runs in it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import select
import signal
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from worker.skills import Skill

from .base import Agent, AgentConfigurationError, AgentInfrastructureError, AgentReply, AttemptInfo

READ_CHUNK_BYTES = 1 << 16
FRAME_HEADER = struct.Struct("!Q")
CHILD_FAILED_EXIT = 70
MAX_FD = os.sysconf("SC_OPEN_MAX")


MAX_ERROR_CHARS = 500
ELLIPSIS = "…"


@dataclass(frozen=True)
class AgentResult:
    """What one attempt produced: its output (None if it failed), why it failed (``Type: message``, trimmed),
    its wall time, what the agent reported it used, and ``fatal`` when the agent raised
    :class:`AgentConfigurationError` (retrying cannot help: end the run)."""

    output: object
    error: str | None
    elapsed_ms: float
    usage: dict[str, Any] | None = None
    fatal: bool = False


def trim(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """``text`` cut to at most ``limit`` (≥ 1) characters, marked with an ellipsis when cut."""
    return text if len(text) <= limit else text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


def describe_error(exc: BaseException) -> str:
    """An exception as an attempt's error: ``TypeName: message``, trimmed."""
    message = str(exc)
    return trim(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)


def run_attempt(
    agent: Agent, skill: Skill, context: dict[str, Any], attempt: AttemptInfo, time_limit: float
) -> AgentResult:
    """Run one attempt under a time limit; any failure of the skill becomes the result's ``error``.

    An :class:`AgentConfigurationError` is an error too, and marks the result ``fatal`` (end the run now).

    :param attempt: which run and attempt.
    :param time_limit: seconds the agent may take (> 0).
    :raises AgentInfrastructureError: re-raised from the agent: not the skill's fault, retry the task.
    :raises ValueError: ``time_limit`` is not a positive number.
    """
    if isinstance(time_limit, bool) or not isinstance(time_limit, int | float) or not time_limit > 0:
        raise ValueError(f"time_limit must be a positive number of seconds, got {time_limit!r}")
    if math.isinf(time_limit):
        raise ValueError("time_limit must be finite")
    started = time.perf_counter()
    if getattr(agent, "isolated", False):
        # The skill's own code runs in a child that is killed at the limit (below).
        try:
            prepare = getattr(agent, "prepare", None)
            if prepare is not None:
                prepare(skill)
            outcome_value: object = call_in_child(partial(agent.run, skill, context, attempt), time_limit)
        except ChildTimeout as timeout:
            return AgentResult(None, str(timeout), (time.perf_counter() - started) * 1000.0)
        except BaseException as exc:  # the skill's exception, re-raised from the child
            return _failed(exc, (time.perf_counter() - started) * 1000.0)
        return _finished(outcome_value, (time.perf_counter() - started) * 1000.0)
    answer: list[tuple[bool, Any]] = []  # (finished, its output or exception), from the agent's thread

    def target() -> None:
        try:
            answer.append((True, agent.run(skill, context, attempt)))
        except BaseException as exc:  # everything the agent raises is reported, SystemExit too
            answer.append((False, exc))

    # Agents that do not run the skill's own code (an LLM call, bounded by its HTTP deadline within the time
    # limit; the simulation) run in a thread: Celery's soft time limits are signals that thread pools (and
    # the embedded runner) never get. A thread cannot be killed: on timeout it is abandoned (a daemon) and
    # its late output is ignored, which is why the python agent runs in a killable child instead.
    thread = threading.Thread(
        target=target, name=f"wre-attempt-{attempt.run_id}-{attempt.attempt}", daemon=True
    )
    thread.start()
    thread.join(time_limit)
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    if thread.is_alive():
        return AgentResult(None, f"timed out after {time_limit:g}s", elapsed_ms)
    finished, value = answer[0]
    return _finished(value, elapsed_ms) if finished else _failed(value, elapsed_ms)


def _failed(exception: BaseException, elapsed_ms: float) -> AgentResult:
    """An agent's exception as the attempt's error (fatal for a configuration error); infrastructure: raised."""
    if isinstance(exception, AgentInfrastructureError):
        raise exception
    if isinstance(exception, AgentConfigurationError):
        return AgentResult(None, describe_error(exception), elapsed_ms, fatal=True)
    return AgentResult(None, describe_error(exception), elapsed_ms)


def _finished(output: object, elapsed_ms: float) -> AgentResult:
    usage = None
    if isinstance(output, AgentReply):
        usage = output.usage
        output = output.output
    try:
        # Outputs go into JSON columns and task results; a set or NaN must fail here, as the skill's fault.
        json.dumps(output, allow_nan=False)
    except (TypeError, ValueError) as exc:
        return AgentResult(None, trim(f"output is not JSON-serializable: {exc}"), elapsed_ms, usage)
    return AgentResult(output, None, elapsed_ms, usage)


class ChildTimeout(TimeoutError):
    """The child did not answer within its time limit; it was killed."""


class ChildDied(RuntimeError):
    """The child ended without an answer (killed by a signal, out of memory, ``os._exit`` in the skill)."""


class _Child:
    """One forked child serving calls over two pipes, until its request pipe closes."""

    def __init__(self) -> None:
        request_read, request_write = os.pipe()
        answer_read, answer_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the child
            _close_inherited(keep=(request_read, answer_write))
            _serve(request_read, answer_write)
        os.close(request_read)
        os.close(answer_write)
        self.requests, self.answers = request_write, answer_read
        self.poller = select.poll()  # not select(): a busy worker's descriptors may be numbered past 1024
        self.poller.register(self.answers, select.POLLIN | select.POLLHUP)

    def call(self, function: Callable[[], Any], time_limit: float) -> Any:
        deadline = time.monotonic() + time_limit
        _write_frame(self.requests, pickle.dumps(function))
        data = _read_frame(self.answers, self.poller, deadline)
        if data is None:
            self.close(kill=True)
            raise ChildTimeout(f"timed out after {time_limit:g}s")
        if not data:
            self.close(kill=True)
            raise ChildDied("the skill's process ended without an answer")
        status, value = pickle.loads(data)  # noqa: S301 - our own child's answer, through our own pipe
        if status == "error":
            raise value
        return value

    def close(self, kill: bool = False) -> None:
        for fd in (self.requests, self.answers):
            try:
                os.close(fd)
            except OSError:
                pass
        if kill:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


_local = threading.local()


def _forget_children() -> None:
    # A process forked from a worker (a prefork pool process) must not share the forking thread's child.
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_children)


def call_in_child(function: Callable[[], Any], time_limit: float) -> Any:
    """``function()`` run in this thread's child process, its return value (or exception) brought back.

    :param function: what to run; it must pickle (a module-level function, or a ``functools.partial`` of one
        with picklable arguments), and so must its result (a skill's output is JSON data).
    :param time_limit: seconds to wait for the answer; after that the child is killed.
    :raises ChildTimeout: no answer within ``time_limit`` (the child was killed).
    :raises ChildDied: the child ended without an answer.
    :raises BaseException: whatever ``function`` raised, re-raised here.
    """
    child: _Child | None = getattr(_local, "child", None)
    if child is None:
        child = _local.child = _Child()
    try:
        return child.call(function, time_limit)
    except (ChildTimeout, ChildDied, BrokenPipeError) as error:
        _local.child = None
        if isinstance(error, BrokenPipeError):  # the child was gone before the call: a fresh one, once
            child.close(kill=True)
            return call_in_child(function, time_limit)
        raise


def close_child() -> None:
    """Stop this thread's child, if it has one (tests, and a clean thread exit)."""
    child: _Child | None = getattr(_local, "child", None)
    _local.child = None
    if child is not None:
        child.close(kill=True)


def _close_inherited(keep: tuple[int, ...]) -> None:
    """In the child: close every descriptor but stdio and ``keep``. A copy of the worker's sockets (broker,
    database) held here would keep those connections open after the worker closed them, and the other
    threads' pipes would keep their children from seeing the worker go."""
    start = 3
    for fd in sorted(keep):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, MAX_FD)


def _serve(requests: int, answers: int) -> None:
    """In the child: answer calls until the request pipe closes, then leave at once."""
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the worker's handlers are not the child's
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the worker, which closes the pipe
        poller = select.poll()
        poller.register(requests, select.POLLIN | select.POLLHUP)
        while True:
            data = _read_frame(requests, poller, None)
            if not data:
                os._exit(0)
            try:
                function = pickle.loads(data)  # noqa: S301 - from the worker that forked us
                payload: tuple[str, Any] = ("ok", function())
            except BaseException as exc:  # everything the skill raises is its answer, SystemExit too
                payload = ("error", exc)
            try:
                answer = pickle.dumps(payload)
            except Exception as exc:  # a value or exception that does not pickle: say so instead
                answer = pickle.dumps(("error", RuntimeError(f"{type(payload[1]).__name__} cannot be returned: {exc}")))
            _write_frame(answers, answer)
    finally:
        os._exit(CHILD_FAILED_EXIT)


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(FRAME_HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_frame(fd: int, poller: select.poll, deadline: float | None) -> bytes | None:
    """One frame's bytes; b"" if the pipe closed first, None if the deadline came first."""
    buffer = bytearray()
    needed: int | None = None
    while needed is None or len(buffer) < needed:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                return None
        chunk = os.read(fd, READ_CHUNK_BYTES if needed is None else max(needed - len(buffer), 1))
        if not chunk:
            return b""
        buffer += chunk
        if needed is None and len(buffer) >= FRAME_HEADER.size:
            needed = FRAME_HEADER.size + FRAME_HEADER.unpack_from(buffer)[0]
    return bytes(buffer[FRAME_HEADER.size : needed])
