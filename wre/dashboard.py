"""The dashboard: wre's figures as Rich tables (used by `wre dashboard` and the demo's last screen)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from wre.context import number, percent, table

if TYPE_CHECKING:
    from db.memory import PatternMemory


def distance_to_verdict(decision: dict[str, Any]) -> str:
    """How far a running test is from a verdict, in the words an operator needs."""
    lift, critical = decision.get("lift"), decision.get("critical_lift")
    minimum = (decision.get("params") or {}).get("min_trials_per_arm", 0)
    fewest = min(int(decision.get("control_trials") or 0), int(decision.get("treatment_trials") or 0))
    if fewest >= minimum and isinstance(lift, float) and isinstance(critical, float):
        return f"needs |lift| >= {critical:.2f} at these counts (now {lift:+.2f})"
    return str(decision.get("reason") or "waiting for trials")


def build_dashboard(memory: PatternMemory, window: int = 100) -> Group:
    overall = memory.get_telemetry_dashboard(window=window)
    summary = Table.grid(padding=(0, 2))
    for row in (
        ("runs", str(overall["total_runs"]), "attempts", str(overall["total_executions"])),
        ("retries", str(overall["retry_count"]), "repeated failure rate (retries / attempts)",
         percent(overall["repeated_failure_rate"])),
        ("variations tested", str(overall["variations_tested"]), "promoted / archived (of which inconclusive)",
         f"{overall['variations_promoted']} / {overall['variations_archived']} "
         f"({overall['variations_inconclusive']})"),
        ("variation win rate", percent(overall["variation_win_rate"]),
         "avg first-attempt fidelity delta of promotions", number(overall["avg_fidelity_delta"])),
        (f"first-attempt fidelity, median of first {window} runs",
         number(overall["first_attempt_fidelity_first_window"]), f"latest {window} runs",
         f"{number(overall['first_attempt_fidelity_now'])} ({percent(overall['first_attempt_fidelity_gain'], '+')})"),
        (f"delivered fidelity (after ReAct), median of latest {window} runs",
         number(overall["delivered_fidelity_now"]), "", ""),
    ):
        summary.add_row(*row)
    skills = table("skill", "runs", "first-attempt fidelity first → now", "gain", "delivered fidelity now",
                   "repeated failure rate", "retries", "tokens", title="skills")
    for skill in memory.list_skills():
        figures = memory.get_skill_dashboard(skill.name, window=window)
        skills.add_row(
            skill.name,
            str(figures["runs"]),
            f"{number(figures['first_attempt_fidelity_first_window'])} → {number(figures['first_attempt_fidelity_now'])}",
            percent(figures["first_attempt_fidelity_gain"], "+"),
            number(figures["delivered_fidelity_now"]),
            percent(figures["repeated_failure_rate"]),
            str(figures["retries"]),
            str(figures["total_tokens"] or "-"),
        )
    tests = table("test", "kind", "skill", "control", "treatment", "lift now", "distance to a verdict",
                  title="open A/B tests and guards (lift: treatment - control, observed so far)")
    for test in memory.list_ab_tests(status="running") + memory.list_ab_tests(status="paused"):
        counts = (f"{test.control_successes}/{test.control_trials}",
                  f"{test.treatment_successes}/{test.treatment_trials}")
        if test.status == "paused":
            # A health check stopped it: say why, never a verdict's distance.
            reason = str((test.health or {}).get("reason", "paused"))
            tests.add_row(f"#{test.test_id}", f"{test.kind} PAUSED", test.skill_name, *counts, "-", reason)
            continue
        decision = memory.ab_verdict(test.test_id)
        # A guard's figure is the honest one after a promotion: the new production against its holdout.
        lift = decision.get("difference") if test.is_guard else decision.get("lift")
        kind = "guard (holdout = control)" if test.is_guard else test.kind
        tests.add_row(f"#{test.test_id}", kind, test.skill_name, *counts, number(lift), distance_to_verdict(decision))
    return Group(Panel(summary, title="wre"), skills, tests)


def dashboard_data(memory: PatternMemory, window: int = 100) -> dict[str, Any]:
    """What `wre dashboard --json` prints: the same figures as the screen, under the same names."""
    return {
        "overall": memory.get_telemetry_dashboard(window=window),
        "skills": [memory.get_skill_dashboard(skill.name, window=window) for skill in memory.list_skills()],
        "running_tests": [
            {**test.to_dict(), "verdict_now": memory.ab_verdict(test.test_id)}
            for test in memory.list_ab_tests(status="running")
        ],
        "paused_tests": [test.to_dict() for test in memory.list_ab_tests(status="paused")],
    }
