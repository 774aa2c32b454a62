"""`wre skill add | list | show`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from db.screening import SCREENING_EVENT, screening_spent
from worker.evolvers.base import evolution_blocker
from worker.registry import register_skill_file
from worker.runner import parse_variation
from worker.settings import get_settings
from wre.context import console, store, user_errors

SCREENINGS_SHOWN = 5

app = typer.Typer(help="Register and inspect skills.", no_args_is_help=True)


@app.command("add")
@user_errors
def add(
    paths: list[Path] = typer.Argument(..., help="Skill files (Markdown with YAML front matter)."),
    replace: bool = typer.Option(False, "--replace", help="Make new content of a known skill production."),
) -> None:
    """Register skill files; each file's content becomes the skill's baseline variation."""
    for path in paths:
        skill = register_skill_file(store(), path, replace=replace)
        console.print(f"registered [bold]{skill.name}[/] ({skill.variation_id}) from {path}")


@app.command("list")
@user_errors
def list_skills() -> None:
    """The registered skills and the variation production runs."""
    memory = store()
    table = Table("skill", "agent", "threshold", "production", "running test", "description")
    for skill in memory.list_skills():
        test = memory.get_active_ab_test(skill.name)
        table.add_row(
            skill.name,
            skill.default_agent,
            "default" if skill.threshold is None else f"{skill.threshold:.2f}",
            skill.production_variation_id or "-",
            f"#{test.test_id}" if test else "-",
            skill.description,
        )
    console.print(table)


@app.command("show")
@user_errors
def show(name: str = typer.Argument(..., help="The skill's name.")) -> None:
    """A skill's production content, its variations and its recent metrics."""
    memory = store()
    if memory.get_skill(name) is None:
        raise ValueError(f"unknown skill {name!r}")
    production, content = memory.get_production(name)
    console.rule(f"{name} — production {production}")
    console.print(content, markup=False, highlight=False)
    table = Table("variation", "parent", "status", "created by", "created")
    for variation in memory.list_variations(name):
        table.add_row(
            variation.variation_id,
            variation.parent_version or "-",
            variation.test_status,
            variation.created_by,
            variation.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    console.print(table)
    metrics = memory.get_skill_metrics(name)
    console.print({k: v for k, v in metrics.items() if k != "skill_name"})
    _show_evolution(name, content)


def _show_evolution(name: str, content: str) -> None:
    """Whether the skill evolves (and why not), what screening has spent, and its latest screenings."""
    memory = store()
    blocker = evolution_blocker(parse_variation(content))
    console.print(f"evolution: {'not evolved: ' + blocker if blocker else 'on'}", markup=False, highlight=False)
    spent, live_runs = screening_spent(memory, name)
    share = get_settings().screen_budget_share
    console.print(
        f"screening: {spent} replay calls for {live_runs} live runs "
        f"(budget {share:g} of live runs: {int(share * live_runs)})",
        markup=False,
        highlight=False,
    )
    screenings = [event for event in memory.get_evolution_history(name) if event.event_type == SCREENING_EVENT]
    if not screenings:
        return
    table = Table("screened", "calls", "parent", "candidates (replay fidelity, wins-losses, p)", "chosen")
    for event in screenings[-SCREENINGS_SHOWN:]:
        details = event.details
        parent = details.get("parent", {})
        candidates = ", ".join(
            f"{item['variation_id']} {item['fidelity']:.2f} {item['wins']}-{item['losses']} p={item['p_value']:.3f}"
            for item in details.get("candidates", [])
        )
        table.add_row(
            event.created_at.strftime("%Y-%m-%d %H:%M:%S") if event.created_at else "-",
            str(details.get("calls", 0)),
            f"{parent.get('variation_id', '-')} {parent.get('fidelity', 0.0):.2f}",
            candidates,
            details.get("chosen") or "none",
        )
    console.print(table)


@app.command("history")
@user_errors
def history(name: str = typer.Argument(..., help="The skill's name.")) -> None:
    """The skill's production lineage: every version that was production, when and why."""
    memory = store()
    if memory.get_skill(name) is None:
        raise ValueError(f"unknown skill {name!r}")
    table = Table("#", "since", "production", "replaced", "why", "test")
    for change in memory.production_history(name):
        table.add_row(
            str(change.change_id),
            change.created_at.strftime("%Y-%m-%d %H:%M:%S") if change.created_at else "-",
            change.variation_id,
            change.previous_variation_id or "-",
            change.reason,
            f"#{change.test_id}" if change.test_id else "-",
        )
    console.print(table)
