"""I/O-bound runs: an agent that waits 100 ms (like an LLM call) on workers with a pool of 32 threads.

One worker process (``-P threads -c 32``) can finish at most 32 runs per 100 ms: the ideal is 320 runs/s, and
the bar is 85% of it. Two such workers should scale as bare Celery's own do on the same machine: the bar is
0.95 × bare Celery's two-worker/one-worker ratio, measured alongside (a fixed 1.8× would also measure how many
cores the machine has to spare). Every run is
``wre.execute_skill`` with its whole hot path (validate, resolve, agent thread, score, record).

The reference, measured alongside on the same workers: ``bench.sleep_100ms``, a bare Celery task that only
sleeps 100 ms, i.e. what Celery and this machine allow at all. Rounds alternate bare/wre on one worker, then
bare/wre on two (the second worker's consumer is switched off during the one-worker rounds).

    python -m bench.io_concurrency                 # 2 alternations, ~10 s of runs per round (~4 minutes)
    python -m bench.io_concurrency --seconds 2 --alternations 1   # a quick look
"""

from __future__ import annotations

import sys
import time

from bench.common import Report, base_parser, drain, services
from bench.entrypoints import LLM_LATENCY_SECONDS
from bench.tasks import SLEEP_TASK
from worker.client import EXECUTE_TASK

SKILL = "bench_waits_100ms"
THREADS = 32
IDEAL_PER_WORKER = THREADS / LLM_LATENCY_SECONDS  # 320 runs/s
BAR_SHARE_OF_IDEAL = 0.85
BAR_SHARE_OF_BARE_SCALING = 0.95
LABELS = {SLEEP_TASK: "bare Celery 100 ms", EXECUTE_TASK: "wre.execute_skill"}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("I/O-bound runs (100 ms agent) on one and two workers of 32 threads.")
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="ideal seconds of runs per round (default 10)"
    )
    parser.add_argument(
        "--alternations", type=int, default=2, help="one-worker/two-worker round pairs (default 2)"
    )
    parser.add_argument(
        "--threads", type=int, default=THREADS, help="threads per worker (default 32, as the bars)"
    )
    args = parser.parse_args(argv)
    begun = time.monotonic()
    ideal = args.threads / LLM_LATENCY_SECONDS
    report = Report(f"io_concurrency: a 100 ms agent on workers of {args.threads} threads")
    with services(args.broker_url, "wre_bench_io", args.keep_logs) as found:
        found.python_skill(SKILL, "waits_100ms")
        first = found.worker(args.threads, "threads")
        second = found.worker(args.threads, "threads")
        report.line(
            f"workers: pool threads, concurrency {args.threads} each; ideal {ideal:.0f} runs/s per worker "
            f"({args.threads} threads / {LLM_LATENCY_SECONDS:g} s); {args.alternations} alternations of "
            f"bare/wre on one worker, then on two"
        )

        for task in (SLEEP_TASK, EXECUTE_TASK):  # warm-up: every thread, connection and cache
            drain(found, [first, second], task, SKILL, 4 * args.threads)
        # (task, workers) -> [(runs, seconds)]
        rounds: dict[tuple[str, int], list[tuple[int, float]]] = {}
        report.line(
            f"{'round':>5}  {'task':<22} {'workers':>7} {'runs':>6} {'seconds':>8} {'runs/s':>8} {'of ideal':>9}"
        )
        number = 0
        for _ in range(args.alternations):
            for workers in ([first], [first, second]):
                for task in (SLEEP_TASK, EXECUTE_TASK):
                    number += 1
                    runs = max(1, round(ideal * len(workers) * args.seconds))
                    ids, seconds = drain(found, workers, task, SKILL, runs)
                    rounds.setdefault((task, len(workers)), []).append((len(ids), seconds))
                    per_second = len(ids) / seconds
                    report.line(
                        f"{number:>5}  {LABELS[task]:<22} {len(workers):>7} {len(ids):>6} {seconds:>8.2f} "
                        f"{per_second:>8.0f} {per_second / (ideal * len(workers)):>8.1%}"
                    )

        def rate(task: str, workers: int) -> float:
            done = rounds[(task, workers)]
            return sum(n for n, _ in done) / sum(s for _, s in done)

        report.line()
        for count in (1, 2):
            bare, wre = rate(SLEEP_TASK, count), rate(EXECUTE_TASK, count)
            report.line(
                f"{count} worker(s): wre {wre:5.0f} runs/s = {wre / (ideal * count):.1%} of the ideal "
                f"{ideal * count:.0f}; bare Celery {bare:5.0f} runs/s = {bare / (ideal * count):.1%}; "
                f"wre/bare = {wre / bare:.2f}"
            )
        one, two = rate(EXECUTE_TASK, 1), rate(EXECUTE_TASK, 2)
        bare_scaling = rate(SLEEP_TASK, 2) / rate(SLEEP_TASK, 1)
        report.line(f"two workers / one: wre {two / one:.2f}×, bare Celery {bare_scaling:.2f}×")
        report.bar(
            f"one worker ≥ {BAR_SHARE_OF_IDEAL:.0%} of ideal",
            f"{one / ideal:.1%}",
            one >= BAR_SHARE_OF_IDEAL * ideal,
        )
        report.bar(
            f"two workers ≥ {BAR_SHARE_OF_BARE_SCALING} × bare Celery's scaling",
            f"{two / one:.2f}× / {bare_scaling:.2f}× = {two / one / bare_scaling:.2f}",
            two / one >= BAR_SHARE_OF_BARE_SCALING * bare_scaling,
        )
        return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
