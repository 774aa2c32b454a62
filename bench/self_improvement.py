"""The seed's gate, end to end: simulated skills get better on their own, through real worker and beat processes.

A fleet of simulated-agent skills (``key`` steps, threshold 0.9, ReAct up to 3 attempts) with the simulated
evolver, a real ``celery worker`` and ``celery beat``, runs fed round-robin at a steady pace. Every run goes the
whole way: ReAct retries, evolution after a run that failed every attempt, candidates screened by replay,
A/B tests of the chosen ones against production, verdicts by beat. Everything statistical runs at wre's defaults
(screening included); only clocks are compressed (evaluation every 1 s, evolution cooldown 2 s).

Two fleets: ``main`` (12 skills, baselines 0.35–0.75, 3 steps, evolver draw N(+0.04, 0.12), 1,500 runs each)
and ``held-out`` (10 other skills, 4 steps, baselines 0.40–0.70, another draw N(+0.02, 0.10)), which checks the
same gate on what the search was not shaped on. Each fleet runs once per seed (the seed is part of every
skill's content, so every draw differs); the figures are the median over seeds.

The gate, as the seed defines it, per skill first 10% of its runs against its last 10%, median over skills:
first-attempt fidelity (+20% or more); repeated failure rate = retries / executions (−30% or more); variation
win rate = promoted / (promoted + archived), inconclusive counted apart (over 50%); harmful promotions (a
promoted variation whose declared pass probability is below its control's) 0; and screening: agent calls spent
on replays, at most 25% of the live runs.

    python -m bench.self_improvement                                   # main fleet, 3 seeds
    python -m bench.self_improvement --fleet held-out                  # the held-out fleet
    python -m bench.self_improvement --skills 4 --runs 800 --seeds 1   # a quick look
"""

from __future__ import annotations

import argparse
import bisect
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis.exceptions
from sqlalchemy import select

from bench.common import Report, base_parser, pending, register, services
from db.memory import PatternMemory
from db.models import EVENTS, OUTCOMES, TESTS, VARIATIONS
from db.screening import SCREENING_EVENT
from worker.agents.simulated import simulation_spec
from worker.client import enqueue_skill
from worker.screening import SCREEN_ALPHA
from worker.settings import SCREEN_CANDIDATES, SCREEN_GENERATIONS, Settings
from worker.skills import parse_skill

# wre's defaults as the code declares them (the worker gets no statistical override).
DEFAULTS = {name: field.default for name, field in Settings.model_fields.items()}
BAR_FIDELITY = 0.20
BAR_RETRIES = -0.30
BAR_WIN_RATE = 0.50
BAR_SCREENING_SHARE = 0.25
WINDOW = 0.10
FEED_BATCH = 50
POLL_SECONDS = 0.05
FINISH_TIMEOUT_SECONDS = 900.0


STEP_NAMES = ("summary", "priority", "next_action", "owner", "deadline")


@dataclass(frozen=True)
class Fleet:
    """A fleet of simulated skills: how many, their baselines, their steps and the evolver's draw."""

    name: str
    skills: int
    low: float
    high: float
    steps: int
    mean_shift: float
    spread: float
    runs_per_skill: int


FLEETS = {
    "main": Fleet("main", 12, 0.35, 0.75, 3, 0.04, 0.12, 1500),
    "held-out": Fleet("held-out", 10, 0.40, 0.70, 4, 0.02, 0.10, 1500),
}


def skill_text(name: str, probability: float, fleet: Fleet, seed: int) -> str:
    steps = "".join(
        f"  - id: {step}\n    description: the {step}\n    expect: {{key: {step}}}\n"
        for step in STEP_NAMES[: fleet.steps]
    )
    return f"""---
name: {name}
description: a simulated skill (benchmark)
agent: simulated
evolver: simulated
steps:
{steps}simulation:
  pass_probability: {probability:.3f}
  evolution: {{mean_shift: {fleet.mean_shift}, spread: {fleet.spread}}}
---
A simulated skill: its outcomes are drawn from simulation.pass_probability. (Benchmark seed {seed}.)
"""


@dataclass
class Run:
    first_id: int
    started_at: Any = None
    first_fidelity: float = 0.0
    final_fidelity: float = 0.0
    attempts: int = 0


@dataclass
class SkillFigures:
    name: str
    baseline: float
    runs: list[Run] = field(default_factory=list)
    tests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    guards: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    harmful: int = 0
    final_production: float = 0.0
    # (run index at start, run index at end or None, kind, how it ended, true lift): where the runs went.
    timeline: list[tuple[int, int | None, str, str, float]] = field(default_factory=list)
    # (run index, calls, chosen or not, the survivor's wins and losses against its parent): each screening.
    screenings: list[tuple[int, int, bool, int, int]] = field(default_factory=list)

    def window(self, which: str) -> list[Run]:
        size = max(1, int(len(self.runs) * WINDOW))
        return self.runs[:size] if which == "first" else self.runs[-size:]

    def mean(self, which: str, value: str) -> float:
        runs = self.window(which)
        if value == "retry_rate":
            # The seed's repeated failure rate: react_retry_count / total_executions, over the window's runs.
            attempts = sum(run.attempts for run in runs)
            return sum(run.attempts - 1 for run in runs) / attempts if attempts else 0.0
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
    columns = ("id", "run_id", "attempt", "skill_name", "pattern_fidelity", "final", "created_at")
    query = select(*(OUTCOMES.c[name] for name in columns)).order_by(OUTCOMES.c.id)
    with memory.transaction() as conn:
        for row in conn.execute(query):
            run = runs.get(row.run_id)
            if run is None:
                run = runs[row.run_id] = Run(first_id=row.id, started_at=row.created_at)
                skill_of[row.run_id] = row.skill_name
            if row.attempt == 1:
                run.first_fidelity = row.pattern_fidelity
            run.attempts = max(run.attempts, row.attempt)
            if row.final:
                run.final_fidelity = row.pattern_fidelity
        tests = list(conn.execute(select(TESTS)))
        screened = list(
            conn.execute(
                select(EVENTS.c.skill_name, EVENTS.c.created_at, EVENTS.c.details)
                .where(EVENTS.c.event_type == SCREENING_EVENT)
                .order_by(EVENTS.c.event_id)
            )
        )
    for run_id, run in sorted(runs.items(), key=lambda item: item[1].first_id):
        figures[skill_of[run_id]].runs.append(run)
    for event in screened:
        skill = figures[event.skill_name]
        chosen = event.details.get("chosen")
        survivor: dict[str, Any] = max(
            event.details.get("candidates", []), key=lambda item: item["replays"], default={}
        )
        skill.screenings.append(
            (
                bisect.bisect([run.started_at for run in skill.runs], event.created_at),
                int(event.details.get("calls", 0)),
                chosen is not None,
                int(survivor.get("wins", 0)),
                int(survivor.get("losses", 0)),
            )
        )
    for test in tests:
        skill = figures[test.skill_name]
        starts = [run.started_at for run in skill.runs]
        ended = test.completed_at and bisect.bisect(starts, test.completed_at)
        how = test.status if test.status != "completed" else str(test.winner)
        lift = quality[test.treatment_version] - quality[test.control_version]
        skill.timeline.append((bisect.bisect(starts, test.started_at), ended, test.kind, how, lift))
        if getattr(test, "kind", "test") == "guard":
            # A guard watches a promotion against the holdout version; it tests no new variation. One that a
            # later promotion beside it closed is "superseded" (the next guard keeps its holdout).
            if test.status == "completed":
                outcome = "confirmed" if test.winner == "treatment" else "rolled back"
            else:
                outcome = "superseded" if test.status == "stopped" else "running"
            skill.guards[outcome] += 1
            continue
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


@dataclass
class SeedFigures:
    """One seed's gate figures."""

    fidelity: float
    final_fidelity: float
    retry_rate: float
    promoted: int
    archived: int
    inconclusive: int
    running: int
    harmful: int
    screening_calls: int
    screenings: int
    live_runs: int

    @property
    def win_rate(self) -> float:
        decided = self.promoted + self.archived
        return self.promoted / decided if decided else 0.0

    @property
    def screening_share(self) -> float:
        return self.screening_calls / self.live_runs if self.live_runs else 0.0


def run_seed(args: argparse.Namespace, fleet: Fleet, seed: int, report: Report) -> SeedFigures:
    """Run the fleet once, with this seed, on a fresh store and broker; print its table; return its figures."""
    count = args.skills or fleet.skills
    runs_total = args.runs or fleet.runs_per_skill * count
    baselines = {
        f"sim_{index:02d}": round(fleet.low + (fleet.high - fleet.low) * index / max(1, count - 1), 3)
        for index in range(count)
    }
    # Clocks only: how often beat evaluates, how long a skill waits between evolutions.
    settings = {"WRE_AB_EVAL_SECONDS": "1", "WRE_EVOLVE_COOLDOWN_SECONDS": str(args.cooldown)}
    if args.max_trials_per_arm is not None:
        settings["WRE_AB_MAX_TRIALS_PER_ARM"] = str(args.max_trials_per_arm)
    settings.update(dict(item.split("=", 1) for item in args.setting))
    report.line()
    report.line(f"-- fleet {fleet.name}, seed {seed}")
    with services(args.broker_url, "wre_bench_self", args.keep_logs) as found:
        memory = PatternMemory(found.database_url)
        for name, probability in baselines.items():
            register(memory, skill_text(name, probability, fleet, seed))
        found.worker(args.concurrency, "threads", **settings)
        found.beat(**settings)
        names = list(baselines)
        sent = 0
        fed_at = time.monotonic()
        while sent < runs_total:
            try:
                waiting = pending(found.redis)
            except redis.exceptions.RedisError:
                waiting = args.in_flight + 1  # a slow answer on a loaded machine: look again
            if waiting > args.in_flight:
                time.sleep(POLL_SECONDS)
                continue
            for _ in range(min(FEED_BATCH, runs_total - sent)):
                enqueue_skill(names[sent % count], {"n": sent, "seed": seed}, app=found.app)
                sent += 1
        deadline = time.monotonic() + FINISH_TIMEOUT_SECONDS
        while memory.finished_runs() < runs_total:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {memory.finished_runs()} of {runs_total} runs finished")
            time.sleep(0.5)
        elapsed = time.monotonic() - fed_at
        time.sleep(2.0)  # the last evaluation round
        for process in list(found.processes):
            found.stop(process)
        skills = collect(memory, baselines)
    calls = sum(screening[1] for skill in skills for screening in skill.screenings)
    screenings = sum(len(skill.screenings) for skill in skills)
    attempts = sum(run.attempts for skill in skills for run in skill.runs)
    report.line(
        f"{runs_total} runs ({attempts} attempts) in {elapsed:.0f} s: {runs_total / elapsed:.0f} runs/s"
    )
    report.line(
        f"{'skill':<8} {'p0':>5} {'p end':>6} {'runs':>5} | {'1st-attempt fidelity':^22} | "
        f"{'final fidelity':^22} | {'retries/executions':^21} | tests prom arch incl run harm"
    )
    rows: list[dict[str, Any]] = []
    for skill in skills:
        row = {
            "fid": (skill.mean("first", "first_fidelity"), skill.mean("last", "first_fidelity")),
            "final": (skill.mean("first", "final_fidelity"), skill.mean("last", "final_fidelity")),
            "retry": (skill.mean("first", "retry_rate"), skill.mean("last", "retry_rate")),
        }
        rows.append(row)
        fid, final, retry = row["fid"], row["final"], row["retry"]
        tests = skill.tests
        report.line(
            f"{skill.name:<8} {skill.baseline:>5.2f} {skill.final_production:>6.3f} {len(skill.runs):>5} | "
            f"{fid[0]:.3f} → {fid[1]:.3f} {relative(*fid):>+7.1%} | "
            f"{final[0]:.3f} → {final[1]:.3f} {relative(*final):>+7.1%} | "
            f"{retry[0]:.3f} → {retry[1]:.3f} {relative(*retry):>+6.0%} | "
            f"{tests['started']:>5} {tests['promoted']:>4} {tests['archived']:>4} {tests['inconclusive']:>4} "
            f"{tests['running'] + tests['stopped']:>3} {skill.harmful:>4}"
        )
    if args.timeline:
        for skill in skills:
            report.line(
                f"  {skill.name} timeline (run index start-end kind outcome true lift): "
                + "; ".join(
                    f"{start}-{'' if end is None else end} {kind} {how} {lift:+.2f}"
                    for start, end, kind, how, lift in skill.timeline
                )
            )
            report.line(
                f"  {skill.name} screenings (run index, calls, survivor wins/losses, chosen): "
                + "; ".join(
                    f"{at} {calls} {wins}/{losses}{' chosen' if chosen else ''}"
                    for at, calls, chosen, wins, losses in skill.screenings
                )
            )
    started = sum(skill.tests["started"] for skill in skills)
    figures = SeedFigures(
        fidelity=statistics.median(relative(*row["fid"]) for row in rows),
        final_fidelity=statistics.median(relative(*row["final"]) for row in rows),
        retry_rate=statistics.median(relative(*row["retry"]) for row in rows),
        promoted=sum(skill.tests["promoted"] for skill in skills),
        archived=sum(skill.tests["archived"] for skill in skills),
        inconclusive=sum(skill.tests["inconclusive"] for skill in skills),
        running=0,
        harmful=sum(skill.harmful for skill in skills),
        screening_calls=calls,
        screenings=screenings,
        live_runs=runs_total,
    )
    figures.running = started - figures.promoted - figures.archived - figures.inconclusive
    report.line(
        f"seed {seed}: median first-attempt fidelity {figures.fidelity:+.1%} (final-attempt "
        f"{figures.final_fidelity:+.1%}), retries/executions {figures.retry_rate:+.1%}; median true p "
        f"{statistics.median(s.baseline for s in skills):.3f} → "
        f"{statistics.median(s.final_production for s in skills):.3f}"
    )
    report.line(
        f"seed {seed}: variations tested {started}: promoted {figures.promoted}, archived {figures.archived}, "
        f"inconclusive {figures.inconclusive}, still running {figures.running} (paused "
        f"{sum(skill.tests['paused'] for skill in skills)}, stopped {sum(skill.tests['stopped'] for skill in skills)}); "
        f"win rate {figures.win_rate:.0%}; "
        f"harmful promotions {figures.harmful}"
    )
    guards = {
        kind: sum(skill.guards[kind] for skill in skills) for kind in ("confirmed", "rolled back", "superseded", "running")
    }
    report.line(
        f"seed {seed}: guards after promotions: " + ", ".join(f"{n} {kind}" for kind, n in guards.items())
    )
    report.line(
        f"seed {seed}: screening {figures.screenings} screenings, {calls} agent calls next to "
        f"{runs_total} live runs ({attempts} live attempts): {figures.screening_share:.1%} of live runs"
    )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "The seed's gate: simulated skills improving themselves through real worker and beat."
    )
    parser.add_argument("--fleet", choices=sorted(FLEETS), default="main", help="which fleet (main)")
    parser.add_argument("--seeds", type=int, default=3, help="runs of the fleet, one per seed (3)")
    parser.add_argument("--first-seed", type=int, default=1, help="the first seed (1)")
    parser.add_argument("--skills", type=int, default=0, help="skills (default: the fleet's)")
    parser.add_argument(
        "--runs", type=int, default=0, help="runs per seed (default: the fleet's, 1500 a skill)"
    )
    parser.add_argument(
        "--max-trials-per-arm", type=int, default=None, help="WRE_AB_MAX_TRIALS_PER_ARM (default: wre's)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="worker threads (default 8)")
    parser.add_argument("--in-flight", type=int, default=200, help="runs queued or running at most (200)")
    parser.add_argument(
        "--timeline", action="store_true", help="print each skill's tests and guards by run index"
    )
    parser.add_argument("--cooldown", type=float, default=2.0, help="WRE_EVOLVE_COOLDOWN_SECONDS (default 2)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="WRE_NAME=VALUE",
        help="a worker setting off its default, for exploration (printed; the gate is measured at the defaults)",
    )
    args = parser.parse_args(argv)
    for item in args.setting:
        if not item.startswith("WRE_") or "=" not in item:
            parser.error(f"--setting takes WRE_NAME=VALUE, got {item!r}")
    fleet = FLEETS[args.fleet]
    begun = time.monotonic()
    report = Report(f"self_improvement: the seed's gate, fleet {fleet.name}, real worker and beat")
    count = args.skills or fleet.skills
    report.line(
        f"{count} skills ({fleet.steps} key steps, threshold 0.9, ReAct up to 3 attempts), baselines "
        f"{fleet.low:.2f}-{fleet.high:.2f}; {args.runs or fleet.runs_per_skill * count} runs per seed, round-robin, "
        f"at most {args.in_flight} in flight; 1 worker (threads, concurrency {args.concurrency}) and beat"
    )
    report.line(
        f"evolver: p' = p + N({fleet.mean_shift}, {fleet.spread}) (declared per skill); statistics at wre's "
        f"defaults (A/B: sequential, alpha 0.05, min 20/arm, max "
        f"{args.max_trials_per_arm or DEFAULTS['ab_max_trials_per_arm']}/arm; screening: "
        f"{SCREEN_CANDIDATES} candidates, {SCREEN_GENERATIONS} rounds, sign test at {SCREEN_ALPHA}, "
        f"{DEFAULTS['screen_max_calls']} calls, budget {DEFAULTS['screen_budget_share']} of the fleet's live runs); "
        f"clocks compressed: evaluated every 1 s, evolution cooldown {args.cooldown:g} s"
    )
    if args.setting:
        report.line(f"NOT AT WRE'S DEFAULTS (exploration): {', '.join(args.setting)}")
    seeds = [
        run_seed(args, fleet, seed, report) for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    fidelity = med([s.fidelity for s in seeds])
    retry = med([s.retry_rate for s in seeds])
    win = med([s.win_rate for s in seeds])
    harmful = max(s.harmful for s in seeds)
    share = med([s.screening_share for s in seeds])
    report.line()
    report.line(
        f"median of {len(seeds)} seed(s): first-attempt fidelity {fidelity:+.1%}, retries/executions {retry:+.1%}, "
        f"win rate {win:.0%} (promoted/archived/inconclusive per seed: "
        + ", ".join(f"{s.promoted}/{s.archived}/{s.inconclusive}" for s in seeds)
        + f"), harmful promotions {[s.harmful for s in seeds]}"
    )
    report.line(
        f"screening: agent calls {[s.screening_calls for s in seeds]} next to live runs "
        f"{[s.live_runs for s in seeds]}: median {share:.1%} of live runs"
    )
    report.bar(
        f"median first-attempt fidelity ≥ {BAR_FIDELITY:+.0%}", f"{fidelity:+.1%}", fidelity >= BAR_FIDELITY
    )
    report.bar(f"repeated failure rate ≤ {BAR_RETRIES:+.0%}", f"{retry:+.1%}", retry <= BAR_RETRIES)
    report.bar(f"variation win rate > {BAR_WIN_RATE:.0%}", f"{win:.0%}", win > BAR_WIN_RATE)
    report.bar("harmful promotions = 0 (every seed)", str(harmful), harmful == 0)
    report.bar(
        f"screening calls ≤ {BAR_SCREENING_SHARE:.0%} of live runs",
        f"{share:.1%}",
        share <= BAR_SCREENING_SHARE,
    )
    return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
