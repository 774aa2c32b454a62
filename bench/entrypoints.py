"""Python-agent entrypoints of the benchmarks (allowed by ``WRE_PYTHON_SKILL_MODULES=skills,bench``)."""

from __future__ import annotations

import time
from typing import Any

LLM_LATENCY_SECONDS = 0.1


def instant(context: dict[str, Any]) -> dict[str, Any]:
    """Returns at once and passes every step of :data:`bench.common.PYTHON_SKILL`."""
    return {"answer": "ok"}


def waits_100ms(context: dict[str, Any]) -> dict[str, Any]:
    """Waits 100 ms, like an LLM call (the thread sleeps, releasing the GIL), then passes."""
    time.sleep(LLM_LATENCY_SECONDS)
    return {"answer": "ok"}
