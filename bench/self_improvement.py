"""Self-improvement end to end: simulated skills get better on their own, through real worker and beat processes.

20 skills whose baseline success probabilities spread over 0.30–0.80 (the simulated agent; three ``key`` steps
each), the simulated evolver, a real ``celery worker`` and ``celery beat``, 20,000 runs fed at a steady pace.
Every run goes the whole way: ReAct retries, evolution after a run that failed every attempt, A/B tests of the
proposals against production, promotions and archives decided by beat with wre's sequential test.

What is measured, per skill and in median over skills, first 10% of a skill's runs against its last 10%:

- fidelity of a run. Reported two ways. *First-attempt fidelity* is the quality of the version production runs,
  which is what evolution and promotion change; the bar is on it. *Final-attempt fidelity* (the dashboard's) is
  shown too, but ReAct retries already lift it near 1 for any skill above ~0.5 (three attempts), so it cannot
  show a +20% change whatever evolution does;
- repeated failure rate: runs that needed a retry (their first attempt failed);
- variations tested, promoted, archived, closed inconclusive; harmful promotions: a promoted variation whose
  declared ``pass_probability`` (its true quality) is below its control's.

The simulated evolver's draw is declared in each skill (``simulation.evolution: {mean_shift, spread}``); the
sequential test runs at wre's defaults (alpha 0.05, 20 trials per arm before a verdict, no margin floor) except
the per-arm maximum, an option. Bars: median first-attempt fidelity +20% or more; median repeated failure rate
−30% or more; harmful promotions 0.

    python -m bench.self_improvement                      # 20 skills, 20,000 runs (~5 minutes)
    python -m bench.self_improvement --skills 4 --runs 400 --max-trials-per-arm 50   # a quick look
"""

from __future__ import annotations

import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from bench.common import Report, base_parser, pending, register, services
from db.memory import PatternMemory
from db.models import OUTCOMES, TESTS, VARIATIONS
from worker.agents.simulated import simulation_spec
from worker.client import enqueue_skill
from worker.skills import parse_skill

BAR_FIDELITY = 0.20
BAR_RETRIES = -0.30
WINDOW = 0.10
FEED_BATCH = 50
POLL_SECONDS = 0.05
FINISH_TIMEOUT_SECONDS = 900.0


def skill_text(name: str, probability: float, mean_shift: float, spread: float) -> str:
    return f"""---
name: {name}
description: a simulated skill (benchmark)
agent: simulated
evolver: simulated
steps:
  - id: summary
    description: a summary
    expect: {{key: summary}}
  - id: priority
    description: a priority
    expect: {{key: priority}}
  - id: next_action
    description: the next action
    expect: {{key: next_action}}
simulation:
  pass_probability: {probability:.3f}
  evolution: {{mean_shift: {mean_shift}, spread: {spread}}}
---
A simulated skill: its outcomes are drawn from simulation.pass_probability.
"""


@dataclass
class Run:
    first_id: int
    first_fidelity: float = 0.0
    first_success: bool = False
    final_fidelity: float = 0.0
    attempts: int = 0
    variation: str = ""


@dataclass
class SkillFigures:
    name: str
    baseline: float
    runs: list[Run] = field(default_factory=list)
    tests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    harmful: int = 0
    final_production: float = 0.0

    def window(self, which: str) -> list[Run]:
        size = max(1, int(len(self.runs) * WINDOW))
        return self.runs[:size] if which == "first" else self.runs[-size:]

    def mean(self, which: str, value: str) -> float:
        runs = self.window(which)
        if value == "retried":
            return sum(run.attempts > 1 for run in runs) / len(runs)
        return statistics.fmean(getattr(run, value) for run in runs)


def relative(before: float, after: float) -> float:
    return (after - before) / before if before else 0.0


def true_quality(memory: PatternMemory) -> dict[str, float]:
    """Each variation's declared pass probability: the truth the A/B tests should find."""
    with memory.transaction() as conn:
        rows = list(conn.execute(select(VARIATIONS.c.variation_id, VARIATIONS.c.variation_content)))
    found = {}
    for variation_id, content in rows:
        probability = simulation_spec(parse_skill(content, source="<variation>")).pass_probability
        assert probability is not None
        found[variation_id] = probability
    return found


def collect(memory: PatternMemory, baselines: dict[str, float]) -> list[SkillFigures]:
    quality = true_quality(memory)
    figures = {name: SkillFigures(name, p) for name, p in baselines.items()}
    runs: dict[str, Run] = {}
    skill_of: dict[str, str] = {}
    query = select(
        OUTCOMES.c.id,
        OUTCOMES.c.run_id,
        OUTCOMES.c.attempt,
        OUTCOMES.c.skill_name,
        OUTCOMES.c.variation_id,
        OUTCOMES.c.success,
        OUTCOMES.c.pattern_fidelity,
        OUTCOMES.c.final,
    ).order_by(OUTCOMES.c.id)
    with memory.transaction() as conn:
        for row in conn.execute(query):
            run = runs.get(row.run_id)
            if run is None:
                run = runs[row.run_id] = Run(first_id=row.id)
                skill_of[row.run_id] = row.skill_name
            if row.attempt == 1:
                run.first_fidelity, run.first_success = row.pattern_fidelity, row.success
                run.variation = row.variation_id
            run.attempts = max(run.attempts, row.attempt)
            if row.final:
                run.final_fidelity = row.pattern_fidelity
        tests = list(conn.execute(select(TESTS)))
    for run_id, run in sorted(runs.items(), key=lambda item: item[1].first_id):
        figures[skill_of[run_id]].runs.append(run)
    for test in tests:
        skill = figures[test.skill_name]
        skill.tests["started"] += 1
        if test.status == "running":
            skill.tests["running"] += 1
        elif test.status != "completed":
            skill.tests[test.status] += 1
        elif test.winner == "treatment":
            skill.tests["promoted"] += 1
            skill.harmful += quality[test.treatment_version] < quality[test.control_version]
        elif test.winner == "control":
            skill.tests["archived"] += 1
        else:
            skill.tests["inconclusive"] += 1
    for name, skill in figures.items():
        skill.final_production = quality[memory.get_production(name)[0]]
    return list(figures.values())


def main(argv: list[str] | None = None) -> int:
    parser = base_parser("Simulated skills improving themselves through real worker and beat processes.")
    parser.add_argument("--skills", type=int, default=20, help="skills, baselines spread over 0.30-0.80")
    parser.add_argument("--runs", type=int, default=20_000, help="runs in total (default 20000)")
    parser.add_argument("--mean-shift", type=float, default=0.05, help="evolver: mean change of p (0.05)")
    parser.add_argument("--spread", type=float, default=0.15, help="evolver: sd of the change of p (0.15)")
    parser.add_argument(
        "--max-trials-per-arm", type=int, default=300, help="WRE_AB_MAX_TRIALS_PER_ARM (default 300)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--in-flight", type=int, default=200, help="runs queued or running at most (200)")
    parser.add_argument("--cooldown", type=float, default=2.0, help="WRE_EVOLVE_COOLDOWN_SECONDS (default 2)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report("self_improvement: simulated skills, real worker and beat")
    count = args.skills
    baselines = {
        f"sim_{index:02d}": round(0.30 + 0.50 * index / max(1, count - 1), 3) for index in range(count)
    }
    settings = {
        "WRE_AB_EVAL_SECONDS": "1",
        "WRE_AB_MAX_TRIALS_PER_ARM": str(args.max_trials_per_arm),
        "WRE_EVOLVE_COOLDOWN_SECONDS": str(args.cooldown),
    }
    report.line(
        f"{count} skills (3 key steps, threshold 0.9, ReAct up to 3 attempts), baselines "
        f"{min(baselines.values()):.2f}-{max(baselines.values()):.2f}; {args.runs} runs, round-robin, at most "
        f"{args.in_flight} in flight; 1 worker (threads, concurrency {args.concurrency}) and beat"
    )
    report.line(
        f"evolver: p' = p + N({args.mean_shift}, {args.spread}) (declared per skill); A/B: sequential, alpha 0.05, "
        f"min 20/arm, max {args.max_trials_per_arm}/arm, min margin 0; evaluated every 1 s; "
        f"evolution cooldown {args.cooldown:g} s; production cache 2 s"
    )
    with services(args.broker_url, "wre_bench_self", args.keep_logs) as found:
        memory = PatternMemory(found.database_url)
        for name, probability in baselines.items():
            register(memory, skill_text(name, probability, args.mean_shift, args.spread))
        found.worker(args.concurrency, "threads", **settings)
        found.beat(**settings)
        names = list(baselines)
        sent = 0
        fed_at = time.monotonic()
        while sent < args.runs:
            if pending(found.redis) > args.in_flight:
                time.sleep(POLL_SECONDS)
                continue
            for _ in range(min(FEED_BATCH, args.runs - sent)):
                enqueue_skill(names[sent % count], {"n": sent}, app=found.app)
                sent += 1
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while memory.finished_runs() < args.runs:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {memory.finished_runs()} of {args.runs} runs finished")
            time.sleep(0.5)
        elapsed = time.monotonic() - fed_at
        time.sleep(2.0)  # the last evaluation round
        for process in list(found.processes):
            found.stop(process)
        skills = collect(memory, baselines)
    attempts = sum(run.attempts for skill in skills for run in skill.runs)
    report.line(
        f"{args.runs} runs ({attempts} attempts) in {elapsed:.0f} s: {args.runs / elapsed:.0f} runs/s"
    )
    report.line()
    report.line(
        f"{'skill':<8} {'p0':>5} {'p end':>6} {'runs':>5} | {'1st-attempt fidelity':^22} | "
        f"{'final fidelity':^22} | {'runs retried':^21} | tests prom arch incl run harm"
    )
    rows: list[dict[str, Any]] = []
    for skill in skills:
        row = {
            "fid": (skill.mean("first", "first_fidelity"), skill.mean("last", "first_fidelity")),
            "final": (skill.mean("first", "final_fidelity"), skill.mean("last", "final_fidelity")),
            "retried": (skill.mean("first", "retried"), skill.mean("last", "retried")),
        }
        rows.append(row)
        fid, final, retried = row["fid"], row["final"], row["retried"]
        tests = skill.tests
        report.line(
            f"{skill.name:<8} {skill.baseline:>5.2f} {skill.final_production:>6.3f} {len(skill.runs):>5} | "
            f"{fid[0]:.3f} → {fid[1]:.3f} {relative(*fid):>+7.1%} | "
            f"{final[0]:.3f} → {final[1]:.3f} {relative(*final):>+7.1%} | "
            f"{retried[0]:.3f} → {retried[1]:.3f} {relative(*retried):>+6.0%} | "
            f"{tests['started']:>5} {tests['promoted']:>4} {tests['archived']:>4} {tests['inconclusive']:>4} "
            f"{tests['running'] + tests['stopped']:>3} {skill.harmful:>4}"
        )
    median_fid = statistics.median(relative(*row["fid"]) for row in rows)
    median_final = statistics.median(relative(*row["final"]) for row in rows)
    median_retried = statistics.median(relative(*row["retried"]) for row in rows)
    started = sum(skill.tests["started"] for skill in skills)
    promoted = sum(skill.tests["promoted"] for skill in skills)
    archived = sum(skill.tests["archived"] for skill in skills)
    inconclusive = sum(skill.tests["inconclusive"] for skill in skills)
    harmful = sum(skill.harmful for skill in skills)
    report.line()
    report.line(
        f"median over skills: first-attempt fidelity {median_fid:+.1%}, final-attempt fidelity "
        f"{median_final:+.1%}, runs retried {median_retried:+.1%}; median true p "
        f"{statistics.median(s.baseline for s in skills):.3f} → "
        f"{statistics.median(s.final_production for s in skills):.3f}"
    )
    report.line(
        f"variations tested {started}: promoted {promoted}, archived {archived}, inconclusive {inconclusive}, "
        f"still running {started - promoted - archived - inconclusive}; harmful promotions {harmful}"
    )
    report.bar(
        f"median first-attempt fidelity ≥ {BAR_FIDELITY:+.0%}",
        f"{median_fid:+.1%}",
        median_fid >= BAR_FIDELITY,
    )
    report.bar(
        f"median repeated failure rate ≤ {BAR_RETRIES:+.0%}",
        f"{median_retried:+.1%}",
        median_retried <= BAR_RETRIES,
    )
    report.bar("harmful promotions = 0", str(harmful), harmful == 0)
    return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
