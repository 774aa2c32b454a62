"""Worker memory over a long run: RSS after a warm-up against RSS after 20,000 more runs of wre's hot path.

One worker (``-P threads -c 4`` by default, wre's Celery config) runs ``wre.execute_skill`` on a python skill
that returns at once and passes, in drains of ``--chunk`` runs (the queue filled, then drained, as in
bench/throughput.py). Memory is read from /proc after the warm-up and after each chunk: the resident set size
(RSS) of the worker's main process, and the proportional set size (PSS: shared pages counted in shares) summed
over the whole process tree (the main process, a prefork pool's processes, the python agent's child per
thread), which is what the bar is about. Bar: the tree's PSS at the end within ±5% of its PSS after the warm-up.

    python -m bench.memory                          # 2,000 warm-up runs, then 20,000 in chunks of 2,000 (~2 min)
    python -m bench.memory --runs 4000 --chunk 1000 # a quick look
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bench.common import INSTANT_SKILL, Report, base_parser, drain, services
from worker.client import EXECUTE_TASK

BAR_DRIFT = 0.05
PROC = Path("/proc")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kib(pid: int) -> int:
    """Resident set size of one process, in KiB (0 if it is gone)."""
    try:
        fields = (PROC / str(pid) / "statm").read_text().split()
    except OSError:
        return 0
    return int(fields[1]) * PAGE_KIB


def pss_kib(pid: int) -> int:
    """Proportional set size of one process, in KiB (0 if it is gone): pages shared with other processes (a
    forked child's copy-on-write pages) count in shares, so a tree's sum counts each page once."""
    try:
        lines = (PROC / str(pid) / "smaps_rollup").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith("Pss:")), 0)


def descendants(root: int) -> list[int]:
    """Every live process under ``root`` (children, their children...)."""
    parents: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the parent pid is the 2nd field after it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    pending = [root]
    while pending:
        children = parents.get(pending.pop(), [])
        found.extend(children)
        pending.extend(children)
    return found


def sample(pid: int) -> tuple[int, int, int]:
    """(main process RSS, whole tree PSS, processes in the tree), in KiB."""
    tree = [pid, *descendants(pid)]
    return rss_kib(pid), sum(pss_kib(member) for member in tree), len(tree)


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Worker memory over 20,000 runs of wre.execute_skill.", 2000)
    parser.add_argument("--runs", type=int, default=20_000, help="runs after the warm-up (default 20000)")
    parser.add_argument("--chunk", type=int, default=2000, help="runs per drain (default 2000)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report(f"memory: worker RSS over {args.runs} runs (-P {args.pool} -c {args.concurrency})")
    with services(args.broker_url, "wre_bench_memory", args.keep_logs) as found:
        found.python_skill(INSTANT_SKILL, "instant")
        worker = found.worker(args.concurrency, args.pool)
        drain(found, [worker], EXECUTE_TASK, INSTANT_SKILL, args.warmup)
        main_rss, tree_rss, members = sample(worker.pid)
        warm = tree_rss
        report.line(f"{'runs':>7} {'main RSS':>9} {'tree PSS':>9} {'processes':>9} {'runs/s':>7}")
        report.line(f"{'warm':>7} {main_rss / 1024:>9.1f} {tree_rss / 1024:>9.1f} {members:>9}")
        done = 0
        while done < args.runs:
            runs = min(args.chunk, args.runs - done)
            _, seconds = drain(found, [worker], EXECUTE_TASK, INSTANT_SKILL, runs)
            done += runs
            main_rss, tree_rss, members = sample(worker.pid)
            report.line(
                f"{done:>7} {main_rss / 1024:>9.1f} {tree_rss / 1024:>9.1f} {members:>9} {runs / seconds:>7.0f}"
            )
        drift = tree_rss / warm - 1
        report.bar(
            f"worker memory (tree PSS) flat (±{BAR_DRIFT:.0%}) over {done} runs",
            f"{warm / 1024:.1f} → {tree_rss / 1024:.1f} MiB ({drift:+.1%})",
            abs(drift) <= BAR_DRIFT,
        )
        return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
