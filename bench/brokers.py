"""Redis against RabbitMQ, side by side: the same runs through the same kind of worker on each broker.

Each round enqueues ``--runs`` trivial runs (an agent that returns at once: the whole hot path, no agent time) while the
worker is already up, and times until every run has its final outcome. Rounds alternate Redis/RabbitMQ so that
the machine's noise falls on both; the figure is the median of each and their ratio. Results go to Redis in
both cases (RabbitMQ keeps none that another process can read), so the ratio is the broker's share.

    python -m bench.brokers                      # 3 alternations of 300 runs (~2 minutes)
    python -m bench.brokers --runs 100 --alternations 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BENCH_SKILL_MODULES, Report, median, python_skill, register
from db.memory import PatternMemory
from db.migrate import upgrade
from tests.brokers import TestBroker, rabbitmq_broker, redis_broker
from tests.conftest import create_database, drop_database
from tests.processes import broker_app, running, service_env, start_worker, wait_until
from tests.reliability.checks import finished_runs
from worker.client import enqueue_skill

SKILL = "bench_echo"
THREADS = 8
DRAIN_TIMEOUT = 300.0


def _round(memory: PatternMemory, broker: TestBroker, database_url: str, runs: int, log_dir: Path) -> float:
    app = broker_app(database_url, broker.url, broker.result_backend)
    env = service_env(
        database_url,
        broker.url,
        **broker.env(),
        WRE_PYTHON_SKILL_MODULES=",".join(BENCH_SKILL_MODULES),
        WRE_PRODUCTION_CACHE_SECONDS="2",  # production-like: a cached view of production
    )
    worker = start_worker(app, env, log_dir, concurrency=THREADS, pool="threads")
    with running(worker):
        before = finished_runs(memory, SKILL)
        started = time.perf_counter()
        for i in range(runs):
            enqueue_skill(SKILL, {"text": str(i)}, app=app)
        wait_until(
            lambda: finished_runs(memory, SKILL) >= before + runs, timeout=DRAIN_TIMEOUT, interval=0.05, what="runs"
        )
        seconds = time.perf_counter() - started
    app.close()
    return runs / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=300, help="runs per round (default 300)")
    parser.add_argument("--alternations", type=int, default=3, help="Redis/RabbitMQ round pairs (default 3)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report(f"brokers: {args.runs} trivial runs per round, worker -P threads -c {THREADS}")
    database_url = create_database("wre_bench_brokers")
    brokers = [redis_broker(), rabbitmq_broker()]
    try:
        upgrade(database_url)
        memory = PatternMemory(database_url)
        register(memory, python_skill(SKILL, "instant"))
        rates: dict[str, list[float]] = {broker.kind: [] for broker in brokers}
        with tempfile.TemporaryDirectory(prefix="wre-bench-brokers-") as log_dir:
            for _ in range(args.alternations):
                for broker in brokers:
                    rate = _round(memory, broker, database_url, args.runs, Path(log_dir))
                    rates[broker.kind].append(rate)
                    report.line(f"{broker.kind}: {rate:.0f} runs/s (enqueue to last final outcome)")
        redis_rate, rabbit_rate = median(rates["redis"]), median(rates["rabbitmq"])
        report.line(f"median: redis {redis_rate:.0f} runs/s, rabbitmq {rabbit_rate:.0f} runs/s")
        # No bar on the ratio itself: it is a figure for choosing, not a promise. The bar: both serve.
        report.bar("rabbitmq / redis throughput", f"{rabbit_rate / redis_rate:.2f}", rabbit_rate > 0 and redis_rate > 0)
    finally:
        for broker in brokers:
            broker.close()
        drop_database(database_url)
    return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
