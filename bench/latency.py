"""Enqueue-to-result latency of wre's hot path against bare Celery, at half of the measured capacity.

One worker (``-P threads -c 4`` by default, wre's Celery config). (a) ``bench.noop``, a bare Celery task that
returns at once; (b) ``wre.execute_skill`` on a python skill that returns at once and passes; (c) for reference,
``bench.insert_and_count``, a bare Celery task that commits one row and one counter (what one durable write on
the path costs; no bar). A run's latency runs from the producer's send call (``send_task`` for (a) and (c);
``enqueue_skill`` for (b), which checks the request and records it before it publishes) to the moment its
result is stored: the Redis result backend publishes every stored result on a channel named by its key, and
the benchmark listens on them all.

First each kind's capacity is measured with the producer and the worker running together, as they do when
latency is measured: ``--capacity-runs`` sent as fast as the producer can while the worker consumes, from the
first send to the last result stored (a drain of a queue filled beforehand, as bench/throughput.py times it,
leaves the producer's own cost out, and half of that was more than this machine sustained). Every kind is then
sent at one rate, half of wre's capacity, on a fixed schedule (not as fast as answers come), in rounds
that alternate a→b→c→a→b→c… so that the machine's noise falls on all alike. Bars: p50 and p99 of wre within
1.3× bare Celery's.

    python -m bench.latency                                  # 4 alternations of 2,000 runs (~5 minutes)
    python -m bench.latency --runs 500 --alternations 1      # a quick look
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial

import redis

from bench.common import DRAIN_TIMEOUT_SECONDS, INSTANT_SKILL, Report, base_parser, drain, send_one, services
from bench.tasks import NOOP_TASK, REFERENCE_TASK
from worker.client import EXECUTE_TASK

BAR_RATIO = 1.3
LOAD_SHARE = 0.5  # of the measured capacity
CAPACITY_RUNS = 2000
RESULT_CHANNELS = "celery-task-meta-*"
FINISHED_STATES = ("SUCCESS", "FAILURE")
# A round waits this long past its last send for the stragglers' results.
RESULT_WAIT_SECONDS = 30.0
LABELS = {NOOP_TASK: "bare Celery no-op", EXECUTE_TASK: "wre.execute_skill", REFERENCE_TASK: "insert + count (ref.)"}


class ResultListener:
    """Timestamps (``time.perf_counter``) of stored results, from the result backend's publish of each."""

    def __init__(self, client: redis.Redis) -> None:
        self.stored: dict[str, float] = {}
        self.states: dict[str, str] = {}
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.psubscribe(RESULT_CHANNELS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="result-listener", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.1)
            if message is None:
                continue
            at = time.perf_counter()
            meta = json.loads(message["data"])
            if meta.get("status") in FINISHED_STATES:
                self.stored.setdefault(str(meta["task_id"]), at)
                self.states[str(meta["task_id"])] = str(meta["status"])

    def wait_for(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(task_id in self.stored for task_id in ids):
                return
            time.sleep(0.05)
        missing = sum(task_id not in self.stored for task_id in ids)
        raise TimeoutError(f"{missing} of {len(ids)} results not stored within {timeout:g}s")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pubsub.close()


def paced_round(send: Callable[[int], str], runs: int, rate: float) -> tuple[dict[str, float], list[float]]:
    """Send ``runs`` at ``rate`` per second on a fixed schedule; the send time of each task id, and how long
    each send call took (ms)."""
    sent: dict[str, float] = {}
    calls: list[float] = []
    start = time.perf_counter()
    for i in range(runs):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        at = time.perf_counter()
        sent[send(i)] = at
        calls.append((time.perf_counter() - at) * 1000)
    return sent, calls


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of ``values`` (``share`` in 0..1)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Enqueue-to-result latency of wre.execute_skill against a bare Celery no-op.", 200)
    parser.add_argument("--runs", type=int, default=2000, help="runs per round (default 2000)")
    parser.add_argument("--alternations", type=int, default=4, help="bare/wre round pairs (default 4)")
    parser.add_argument(
        "--capacity-runs", type=int, default=CAPACITY_RUNS, help="runs of each kind drained to measure capacity"
    )
    parser.add_argument("--rate", type=float, default=0.0, help="send rate per second (default: half the capacity)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report(f"latency: send → result stored, wre.execute_skill vs bare Celery (-P {args.pool} -c {args.concurrency})")
    with services(args.broker_url, "wre_bench_latency", args.keep_logs) as found:
        found.python_skill(INSTANT_SKILL, "instant")
        worker = found.worker(args.concurrency, args.pool)
        kinds = (NOOP_TASK, EXECUTE_TASK, REFERENCE_TASK)
        listener = ResultListener(found.redis)
        try:
            capacity: dict[str, float] = {}
            for task in kinds:
                send = partial(send_one, found, task, INSTANT_SKILL)
                drain(found, [worker], task, INSTANT_SKILL, args.warmup)
                sent, _ = paced_round(send, args.capacity_runs, math.inf)
                listener.wait_for(list(sent), DRAIN_TIMEOUT_SECONDS)
                seconds = max(listener.stored[task_id] for task_id in sent) - min(sent.values())
                capacity[task] = len(sent) / seconds
                report.line(
                    f"capacity of {LABELS[task]}: {capacity[task]:.0f} runs/s ({len(sent)} sent as fast as the producer "
                    "can while the worker consumes)"
                )
            rate = args.rate or LOAD_SHARE * capacity[EXECUTE_TASK]
            source = "as given" if args.rate else f"{LOAD_SHARE:.0%} of wre's capacity"
            report.line(
                f"send rate {rate:.0f} runs/s ({source}), "
                f"{args.runs} runs per round, {args.alternations} alternations"
            )
            latencies: dict[str, list[float]] = {task: [] for task in kinds}
            send_calls: dict[str, list[float]] = {task: [] for task in kinds}
            report.line(f"{'round':>5}  {'kind':<22} {'runs':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
            number = 0
            for _ in range(args.alternations):
                for task in kinds:
                    number += 1
                    sent, calls = paced_round(partial(send_one, found, task, INSTANT_SKILL), args.runs, rate)
                    send_calls[task].extend(calls)
                    listener.wait_for(list(sent), RESULT_WAIT_SECONDS)
                    failed = [task_id for task_id in sent if listener.states[task_id] != "SUCCESS"]
                    if failed:
                        raise RuntimeError(f"round {number}: {len(failed)} runs did not succeed")
                    these = [(listener.stored[task_id] - at) * 1000 for task_id, at in sent.items()]
                    latencies[task].extend(these)
                    report.line(
                        f"{number:>5}  {LABELS[task]:<22} {len(these):>6} {statistics.median(these):>8.2f} "
                        f"{percentile(these, 0.99):>8.2f} {max(these):>8.2f}"
                    )
        finally:
            listener.close()
        report.line()
        figures: dict[str, tuple[float, float]] = {}
        for task in kinds:
            values = latencies[task]
            figures[task] = (statistics.median(values), percentile(values, 0.99))
            report.line(
                f"{LABELS[task]:<22} {len(values):>6} runs: p50 {figures[task][0]:.2f} ms, p99 {figures[task][1]:.2f} ms "
                f"(of which the send call: p50 {statistics.median(send_calls[task]):.2f} ms)"
            )
        (bare50, bare99), (wre50, wre99) = figures[NOOP_TASK], figures[EXECUTE_TASK]
        ref50, ref99 = figures[REFERENCE_TASK]
        report.line(
            f"wre/bare: p50 {wre50 / bare50:.2f}, p99 {wre99 / bare99:.2f}; "
            f"reference/bare: p50 {ref50 / bare50:.2f}, p99 {ref99 / bare99:.2f}"
        )
        report.bar(f"p50 wre/bare ≤ {BAR_RATIO}", f"{wre50 / bare50:.2f}", wre50 <= BAR_RATIO * bare50)
        report.bar(f"p99 wre/bare ≤ {BAR_RATIO}", f"{wre99 / bare99:.2f}", wre99 <= BAR_RATIO * bare99)
        return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
