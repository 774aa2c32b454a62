"""Throughput of wre's hot path against bare Celery, alternating in one run on one worker process.

(a) ``bench.noop``: a bare Celery task on wre's app (same config, same worker, its result stored too);
(b) ``wre.execute_skill`` on a python-agent skill that returns at once and passes (one attempt);
(c) ``bench.insert_and_count``: a reference task that inserts one row and bumps one counter (one transaction).

Each round enqueues its runs while the worker does not consume, then times the drain (from "consume" to
"every message acked"). Rounds alternate a→b→c→a→b→c…, so the machine's noise falls on every side alike.
Bars: b/a ≥ 0.65; one database transaction per wre attempt (counted inside the worker, and by the server).

The timed rounds run on a worker without instrumentation. The database is counted afterwards over an untimed
batch of wre runs, by a second worker that counts its statements (bench/tasks.py, ``WRE_BENCH_COUNT_DB``) and
by the server (pg_stat_database), whose "before" is read once the producer's own writes (one run_requests row
per run, worker/client.py) have reached its statistics: both counts are the worker's alone.

    python -m bench.throughput                          # 10,000 runs of each kind in 10 rounds (~4 minutes)
    python -m bench.throughput --runs 300 --rounds 1    # a quick look
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bench.common import (
    DRAIN_TIMEOUT_SECONDS,
    INSTANT_SKILL,
    Report,
    Services,
    base_parser,
    drain,
    send_runs,
    services,
    timed_drain,
)
from bench.tasks import COUNT_DB_ENV, DB_COUNTS_TASK, NOOP_TASK, REFERENCE_TASK
from worker.app import SKILLS_QUEUE
from worker.client import EXECUTE_TASK

BAR_RATIO = 0.65
# The production view (and the skill row) is re-read every WRE_PRODUCTION_CACHE_SECONDS per worker thread:
# a cost per second, not per attempt. Allowed on top of the attempt's one transaction: 5%.
BAR_TRANSACTIONS = 1.05
STATS_SETTLE_SECONDS = 11.0  # Postgres 15 flushes an idle backend's statistics within 10 s
DB_COUNT_NAMES = ("statements", "writes", "reads", "autocommit_statements", "commits", "rollbacks", "checkouts", "connects")


@dataclass
class Kind:
    key: str
    label: str
    task: str
    seconds: float = 0.0
    runs: int = 0
    rounds: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.runs / self.seconds if self.seconds else 0.0


def _worker_db_counts(services_: Services, reset: bool = False) -> dict[str, int]:
    result = services_.app.send_task(DB_COUNTS_TASK, kwargs={"reset": reset}, queue=SKILLS_QUEUE)
    return dict(result.get(timeout=30))


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Throughput of wre.execute_skill against a bare Celery task, alternating on one worker.", 200)
    parser.add_argument("--runs", type=int, default=10_000, help="runs of each kind in total (default 10000)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds per kind, alternating (default 10)")
    parser.add_argument("--count-runs", type=int, default=1000, help="wre runs of the server's transaction count")
    parser.add_argument(
        "--settle-seconds",
        type=float,
        default=STATS_SETTLE_SECONDS,
        help="wait for Postgres's statistics before and after the count (default 11: PG flushes within 10 s)",
    )
    parser.add_argument(
        "--task-events", action="store_true", help="workers with task events on (WRE_TASK_EVENTS=1; off by default)"
    )
    args = parser.parse_args(argv)
    events = {"WRE_TASK_EVENTS": "1"} if args.task_events else {}
    begun = time.monotonic()
    report = Report("throughput: wre.execute_skill vs bare Celery (one worker, Redis broker, Postgres)")
    per_round = max(1, args.runs // args.rounds)
    kinds = [
        Kind("a", "bare Celery no-op", NOOP_TASK),
        Kind("b", "wre.execute_skill", EXECUTE_TASK),
        Kind("c", "insert 1 row + bump 1 counter", REFERENCE_TASK),
    ]
    a, b, c = kinds
    with services(args.broker_url, "wre_bench_throughput", args.keep_logs) as found:
        found.python_skill(INSTANT_SKILL, "instant")
        worker = found.worker(args.concurrency, args.pool, **events)
        report.line(
            f"worker: 1 process, pool {args.pool}, concurrency {args.concurrency}, wre's Celery config "
            f"(late acks, prefetch 1, task events {'on' if args.task_events else 'off'}, Redis result backend); {per_round * args.rounds} runs per "
            f"kind in {args.rounds} alternating rounds of {per_round}"
        )
        for kind in kinds:  # warm-up: imports, connection pool, production cache
            drain(found, [worker], kind.task, INSTANT_SKILL, args.warmup)
        report.line(f"{'round':>5}  {'kind':<34} {'runs':>6} {'seconds':>8} {'runs/s':>8}")
        for number in range(1, args.rounds + 1):
            for kind in kinds:
                ids, seconds = drain(found, [worker], kind.task, INSTANT_SKILL, per_round)
                kind.seconds += seconds
                kind.runs += len(ids)
                kind.rounds.append(len(ids) / seconds)
                report.line(
                    f"{number:>5}  ({kind.key}) {kind.label:<30} {len(ids):>6} {seconds:>8.2f} "
                    f"{len(ids) / seconds:>8.0f}"
                )
        report.line()
        for kind in kinds:
            report.line(
                f"({kind.key}) {kind.label:<30} {kind.runs:>6} runs in {kind.seconds:7.2f} s: "
                f"{kind.rate:6.0f} runs/s"
            )
        ratio_b, ratio_c = b.rate / a.rate, c.rate / a.rate
        round_ratios = [rb / ra for ra, rb in zip(a.rounds, b.rounds, strict=True)]
        report.line(
            f"b/a = {ratio_b:.3f}   c/a = {ratio_c:.3f}   b/c = {b.rate / c.rate:.3f}   "
            f"(b/a per round: {', '.join(f'{r:.2f}' for r in round_ratios)}; "
            f"median {statistics.median(round_ratios):.3f})"
        )
        # The counts, over an untimed batch through a worker that counts (its listeners cost every statement).
        counting = found.worker(args.concurrency, args.pool, **events, **{COUNT_DB_ENV: "1"})
        drain(found, [counting], EXECUTE_TASK, INSTANT_SKILL, args.warmup)
        worker_before = _worker_db_counts(found)
        server_before: list[int] = []

        def enqueue_then_read_server() -> list[str]:
            ids = send_runs(found, EXECUTE_TASK, INSTANT_SKILL, args.count_runs)
            # Postgres publishes a backend's statistics late: wait, so that "before" has the producer's rows.
            time.sleep(args.settle_seconds)
            server_before.append(found.xact_count())
            return ids

        count_ids, _ = timed_drain(found, [counting], enqueue_then_read_server, DRAIN_TIMEOUT_SECONDS)
        worker_after = _worker_db_counts(found)
        time.sleep(args.settle_seconds)
        n = len(count_ids)
        server_tx = (found.xact_count() - server_before[0]) / n
        wre_db = {name: worker_after.get(name, 0) - worker_before.get(name, 0) for name in DB_COUNT_NAMES}
        worker_tx = (wre_db["commits"] + wre_db["autocommit_statements"]) / n
        report.line(
            f"database per wre attempt over {n} more runs, counted in a counting worker: {worker_tx:.3f} transactions "
            f"({wre_db['autocommit_statements'] / n:.3f} single-statement, {wre_db['commits'] / n:.3f} committed), "
            f"{wre_db['statements'] / n:.3f} statements ({wre_db['writes'] / n:.3f} writes, "
            f"{wre_db['reads'] / n:.3f} reads), "
            f"{wre_db['checkouts'] / n:.3f} pool checkouts, {wre_db['connects']} new connections"
        )
        report.line(
            f"database per wre attempt, counted by Postgres over the same runs (pg_stat_database xact_commit + "
            f"xact_rollback, the producer's writes before): {server_tx:.3f} transactions"
        )
        report.bar(f"b/a ≥ {BAR_RATIO}", f"{ratio_b:.3f}", ratio_b >= BAR_RATIO)
        # The worker's counts are one process's: the whole worker's with threads, one pool process's share with
        # prefork (which splits the runs between them). Then only the server's count is the whole.
        whole_worker = args.pool in ("threads", "solo", "gevent")
        report.bar(
            "at most one transaction per wre attempt (cache reads ≤ 5%)",
            f"writes {wre_db['writes'] / n:.3f}, transactions: worker {worker_tx:.3f}, server {server_tx:.3f}",
            server_tx <= BAR_TRANSACTIONS
            # Transactions may be fewer than attempts: attempts recorded at once share one (group commit).
            and (not whole_worker or (0 < wre_db["writes"] and worker_tx <= BAR_TRANSACTIONS)),
            "" if whole_worker else f"-P {args.pool}: the worker's figures are one pool process's share; the server's is the whole",
        )
        return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
