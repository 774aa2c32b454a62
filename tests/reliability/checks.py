"""What the reliability tests look at: outcome rows per run, row counts, the broker's unacked deliveries."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import func, select

from db.memory import PatternMemory
from db.models import OUTCOMES, Base


@dataclass(frozen=True)
class Row:
    attempt: int
    final: bool
    success: bool
    arm: str | None
    created_at: datetime


def outcomes_by_run(memory: PatternMemory, skill_name: str) -> dict[str, list[Row]]:
    """Every outcome row of ``skill_name``, grouped by run id, in attempt order."""
    query = (
        select(
            OUTCOMES.c.run_id,
            OUTCOMES.c.attempt,
            OUTCOMES.c.final,
            OUTCOMES.c.success,
            OUTCOMES.c.arm,
            OUTCOMES.c.created_at,
        )
        .where(OUTCOMES.c.skill_name == skill_name)
        .order_by(OUTCOMES.c.run_id, OUTCOMES.c.attempt)
    )
    runs: dict[str, list[Row]] = defaultdict(list)
    with memory.transaction() as conn:
        for run_id, attempt, final, success, arm, created_at in conn.execute(query):
            runs[run_id].append(Row(attempt, final, success, arm, created_at))
    return dict(runs)


def finished_runs(memory: PatternMemory, skill_name: str) -> int:
    """Runs of ``skill_name`` with a final outcome."""
    query = select(func.count()).where(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.final)
    with memory.transaction() as conn:
        return int(conn.execute(query).scalar_one())


def row_counts(memory: PatternMemory) -> dict[str, int]:
    """Rows in every table of wre's schema."""
    counts = {}
    with memory.transaction() as conn:
        for table in Base.metadata.sorted_tables:
            counts[table.name] = int(conn.execute(select(func.count()).select_from(table)).scalar_one())
    return counts


def message_body(raw: dict[str, Any]) -> Any:
    """The decoded body of a kombu message as the Redis transport stores it (JSON, base64 by default)."""
    body = raw["body"]
    if raw.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    return json.loads(body)


def unacked_deliveries(client: redis.Redis) -> list[tuple[str, int]]:
    """(run id, attempt) of every message delivered to a worker and not acked yet (kombu's ``unacked`` hash)."""
    deliveries = []
    for value in client.hvals("unacked"):
        raw, _exchange, _routing_key = json.loads(value)
        if raw["headers"].get("task") != "wre.execute_skill":
            continue
        _args, kwargs, _embed = message_body(raw)
        attempt = int(raw["headers"].get("wre_attempt") or 1)
        deliveries.append((str(raw["headers"]["id"]), attempt))
    return deliveries


def queued_runs(client: redis.Redis, queue: str = "skills") -> list[str]:
    """Run ids of the messages waiting in ``queue``."""
    runs = []
    for value in client.lrange(queue, 0, -1):
        raw = json.loads(value)
        runs.append(str(raw["headers"]["id"]))
    return runs


def report(name: str, **figures: Any) -> None:
    """Print a test's measured figures on one line (``pytest -s tests/reliability | grep RELIABILITY``)."""
    print(f"\nRELIABILITY {name}: {json.dumps(figures, default=str, sort_keys=True)}")
