"""Entrypoints and custom checks the unit tests name (allowed by monkeypatching the allow-list)."""

from __future__ import annotations

import threading
import time
from os import system  # noqa: F401 - re-exported on purpose: the allow-list must judge where a function lives
from typing import Any

from worker.agents import AgentInfrastructureError

RELEASE = threading.Event()


def echo(context: dict[str, Any]) -> object:
    """Return ``context['output']``; mutate the context to prove the agent passed a copy."""
    context["mutated"] = True
    return context.get("output")


def crash(context: dict[str, Any]) -> object:
    raise RuntimeError("boom " + "x" * 2000)


def sleep(context: dict[str, Any]) -> object:
    """Block until the test releases it (or 5 s), so a timeout test leaves no long-lived thread."""
    RELEASE.wait(5)
    return {"late": True}


def exit_now(context: dict[str, Any]) -> object:
    raise SystemExit(3)


def unavailable(context: dict[str, Any]) -> object:
    raise AgentInfrastructureError("LLM server said 503")


def not_json(context: dict[str, Any]) -> object:
    return {1, 2}


def retry_aware(context: dict[str, Any]) -> object:
    return {"retry": context.get("_react_retry", False), "previous": context.get("_previous_attempt")}


def always_true(output: object) -> bool:
    return True


def check_crashes(output: object) -> bool:
    raise ZeroDivisionError("custom check crashed")


def check_not_bool(output: object) -> object:
    return "yes"


def slow(context: dict[str, Any]) -> object:
    time.sleep(0.05)
    return "done"


def check_spins(output: object) -> bool:
    """A custom check that never ends (and burns a core while it runs)."""
    while True:
        pass
