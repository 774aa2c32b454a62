"""LLM-bound runs on the threads pool against the gevent pool: which pool should an LLM worker use?

An ``llm`` skill whose model (a fake OpenAI-compatible server in this process, tests/fake_llm.py) answers after
100 ms, like a short completion. Every run is ``wre.execute_skill`` with its whole hot path: the agent's HTTP
call through httpx, scoring, and the outcome recorded in Postgres through psycopg 3 (which cooperates with
gevent by itself from 3.1.14). Two workers, one ``-P threads`` and one ``-P gevent``, each with ``--concurrency``
slots; rounds alternate threads/gevent, each drained by one worker while the other does not consume. The ideal
is concurrency / 100 ms runs per second per worker.

This is a measurement for choosing, with no bar. gevent is not a dependency of wre: install it to run this
(``pip install gevent``).

    python -m bench.llm_pools                                   # 2 alternations, ~8 s of runs per round
    python -m bench.llm_pools --concurrency 64 --alternations 1
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial

from bench.common import Report, Services, base_parser, register, result_states, services, timed_drain
from db.memory import PatternMemory
from tests.fake_llm import FakeLlmServer, Recorded, Reply
from worker.client import enqueue_skill

SKILL = "bench_llm"
MODEL = "bench-llm"
LATENCY_SECONDS = 0.1
ANSWER = json.dumps({"summary": "the printer is jammed", "priority": "normal"})
DRAIN_TIMEOUT = 600.0
POOLS = ("threads", "gevent")

LLM_SKILL = f"""---
name: {SKILL}
description: a benchmark skill answered by a model in 100 ms
agent: llm
evolver: hints
threshold: 0.9
time_limit: 30
llm:
  model: {MODEL}
steps:
  - id: summary
    description: one sentence on the customer's problem
    expect: {{key: summary}}
  - id: priority
    description: low, normal or high
    expect: {{json_schema: {{type: object, required: [priority], properties: {{priority: {{enum: [low, normal, high]}}}}}}}}
---
Summarize the support ticket and rate its priority.
"""


def _answer(_request: Recorded) -> Reply:
    return Reply(content=ANSWER, delay=LATENCY_SECONDS)


def _enqueue(found: Services, runs: int) -> list[str]:
    return [str(enqueue_skill(SKILL, {"ticket": f"ticket {i}"}, app=found.app).id) for i in range(runs)]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("LLM-bound runs (a 100 ms model) on the threads pool against the gevent pool.")
    parser.add_argument("--concurrency", type=int, default=32, help="slots per worker (default 32)")
    parser.add_argument("--seconds", type=float, default=8.0, help="ideal seconds of runs per round (default 8)")
    parser.add_argument("--alternations", type=int, default=2, help="threads/gevent round pairs (default 2)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    ideal = args.concurrency / LATENCY_SECONDS
    report = Report(f"llm_pools: a 100 ms model, -P threads vs -P gevent, concurrency {args.concurrency}")
    with FakeLlmServer() as server, services(args.broker_url, "wre_bench_llm_pools", args.keep_logs) as found:
        server.respond(MODEL, _answer)
        memory = PatternMemory(found.database_url)
        register(memory, LLM_SKILL)
        workers = {
            pool: found.worker(args.concurrency, pool, WRE_LLM_BASE_URL=server.base_url, WRE_LLM_API_KEY="bench")
            for pool in POOLS
        }
        report.line(
            f"one worker per pool, concurrency {args.concurrency}; ideal {ideal:.0f} runs/s "
            f"({args.concurrency} / {LATENCY_SECONDS:g} s); {args.alternations} alternations"
        )
        for pool in POOLS:  # warm-up: connections, imports, every slot
            timed_drain(found, [workers[pool]], partial(_enqueue, found, 2 * args.concurrency), DRAIN_TIMEOUT)
        done: dict[str, list[tuple[int, float]]] = {pool: [] for pool in POOLS}
        report.line(f"{'round':>5}  {'pool':<8} {'runs':>6} {'seconds':>8} {'runs/s':>8} {'of ideal':>9}")
        number = 0
        for _ in range(args.alternations):
            for pool in POOLS:
                number += 1
                runs = max(1, round(ideal * args.seconds))
                ids, seconds = timed_drain(found, [workers[pool]], partial(_enqueue, found, runs), DRAIN_TIMEOUT)
                states = result_states(found, ids)
                if states.get("wre_success") != len(ids):
                    raise RuntimeError(f"round {number} ({pool}): not every run succeeded: {states}")
                done[pool].append((len(ids), seconds))
                report.line(
                    f"{number:>5}  {pool:<8} {len(ids):>6} {seconds:>8.2f} {len(ids) / seconds:>8.0f} "
                    f"{len(ids) / seconds / ideal:>8.1%}"
                )
        report.line()
        rates = {pool: sum(n for n, _ in done[pool]) / sum(s for _, s in done[pool]) for pool in POOLS}
        for pool in POOLS:
            report.line(f"{pool:<8} {rates[pool]:6.0f} runs/s = {rates[pool] / ideal:.1%} of the ideal {ideal:.0f}")
        report.line(f"gevent / threads = {rates['gevent'] / rates['threads']:.2f}")
        return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
