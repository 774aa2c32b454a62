"""The dashboard: wre's figures as Rich tables (used by `wre dashboard` and the demo's last screen)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table

from db.memory import PatternMemory
from wre.context import console as default_console
from wre.context import store


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _gain(value: float | None) -> str:
    return "-" if value is None else f"{value:+.0%}"


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
    summary.add_row("runs", str(overall["total_runs"]), "attempts", str(overall["total_executions"]))
    summary.add_row(
        "retries",
        str(overall["retry_count"]),
        "repeated failure rate (retries / attempts)",
        _pct(overall["repeated_failure_rate"]),
    )
    summary.add_row(
        "variations tested",
        str(overall["variations_tested"]),
        "promoted / archived (of which inconclusive)",
        f"{overall['variations_promoted']} / {overall['variations_archived']} "
        f"({overall['variations_inconclusive']})",
    )
    summary.add_row(
        "variation win rate",
        _pct(overall["variation_win_rate"]),
        "avg first-attempt fidelity delta of promotions",
        _num(overall["avg_fidelity_delta"]),
    )
    summary.add_row(
        f"first-attempt fidelity, median of first {window} runs",
        _num(overall["first_attempt_fidelity_first_window"]),
        f"latest {window} runs",
        f"{_num(overall['first_attempt_fidelity_now'])} ({_gain(overall['first_attempt_fidelity_gain'])})",
    )
    summary.add_row(
        f"delivered fidelity (after ReAct), median of latest {window} runs",
        _num(overall["delivered_fidelity_now"]),
        "",
        "",
    )
    skills = Table(
        "skill",
        "runs",
        "first-attempt fidelity first → now",
        "gain",
        "delivered fidelity now",
        "repeated failure rate",
        "retries",
        "tokens",
        title="skills",
    )
    tests = Table(
        "test",
        "kind",
        "skill",
        "control",
        "treatment",
        "lift now",
        "distance to a verdict",
        title="open A/B tests and guards (lift: treatment - control, observed so far)",
    )
    for skill in memory.list_skills():
        figures = memory.get_skill_dashboard(skill.name, window=window)
        skills.add_row(
            skill.name,
            str(figures["runs"]),
            f"{_num(figures['first_attempt_fidelity_first_window'])} → "
            f"{_num(figures['first_attempt_fidelity_now'])}",
            _gain(figures["first_attempt_fidelity_gain"]),
            _num(figures["delivered_fidelity_now"]),
            _pct(figures["repeated_failure_rate"]),
            str(figures["retries"]),
            str(figures["total_tokens"] or "-"),
        )
    for test in memory.list_ab_tests(status="running") + memory.list_ab_tests(status="paused"):
        counts = (
            f"{test.control_successes}/{test.control_trials}",
            f"{test.treatment_successes}/{test.treatment_trials}",
        )
        if test.status == "paused":
            # A health check stopped it: say why, never a verdict's distance.
            reason = str((test.health or {}).get("reason", "paused"))
            tests.add_row(f"#{test.test_id}", f"{test.kind} PAUSED", test.skill_name, *counts, "-", reason)
            continue
        decision = memory.ab_verdict(test.test_id)
        # A guard's figure is the honest one after a promotion: the new production against its holdout.
        lift = decision.get("difference") if test.is_guard else decision.get("lift")
        kind = "guard (holdout = control)" if test.is_guard else test.kind
        tests.add_row(f"#{test.test_id}", kind, test.skill_name, *counts, _num(lift), distance_to_verdict(decision))
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


def render_dashboard(window: int = 100, console: Console | None = None) -> None:
    (console or default_console).print(build_dashboard(store(), window))
