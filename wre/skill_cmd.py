"""`wre skill add | list | show`."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Group
from rich.text import Text

from wre.context import command, console, known_skill, print_json, record_panel, show, store, table

SCREENINGS_SHOWN = 5

app = typer.Typer(help="Register and inspect skills.", no_args_is_help=True)

ACTIONS = {"added": "registered", "unchanged": "unchanged", "replaced": "replaced production of"}


@command(app, "add")
def add(
    paths: list[Path] = typer.Argument(..., metavar="FILE...", help="Skill files (Markdown with YAML front matter)."),
    replace: bool = typer.Option(
        False,
        "--replace",
        help="Make a changed file production. The version it replaces, promoted or not, stays available "
        "to `wre ab rollback`.",
    ),
) -> None:
    """Register skill files: all are checked first, then added together (all or none).

    A file whose content production is, or was evolved from, changes nothing; a changed file is refused
    with what differs unless --replace.
    """
    from worker.registry import register_skill_files

    for registered in register_skill_files(store(), paths, replace=replace):
        result = registered.result
        note = f" (production {result.previous})" if result.action == "unchanged" and result.previous else ""
        if result.action == "replaced":
            note = f" (was {result.previous}; `wre ab rollback {result.name}` restores it)"
        console.print(
            f"{ACTIONS[result.action]} [bold]{result.name}[/] ({result.variation_id}) from {registered.source}{note}",
            soft_wrap=True,
        )


@command(app, "list")
def list_skills(as_json: bool = typer.Option(False, "--json", help="Print the skills as JSON.")) -> None:
    """The registered skills and the variation production runs."""
    memory = store()
    rows = []
    for skill in memory.list_skills():
        guard, test = memory.running_routes(skill.name)
        rows.append(
            {
                "name": skill.name,
                "default_agent": skill.default_agent,
                "threshold": skill.threshold,
                "production_variation_id": skill.production_variation_id,
                "previous_variation_id": skill.previous_variation_id,
                "running_test_id": test.test_id if test else None,
                "running_guard_id": guard.test_id if guard else None,
                "description": skill.description,
            }
        )
    if as_json:
        print_json(rows)
        return
    shown = table("skill", "agent", "threshold", "production", "running test, guard", "description")
    for row in rows:
        test_id, guard_id = row["running_test_id"], row["running_guard_id"]
        routes = f"{f'#{test_id} ' if test_id else ''}{f'guard #{guard_id}' if guard_id else ''}".strip()
        threshold = "default" if row["threshold"] is None else f"{row['threshold']:.2f}"
        shown.add_row(row["name"], row["default_agent"], threshold, row["production_variation_id"] or "-",
                      routes or "-", row["description"])
    show(shown)


@command(app, "show")
def show_skill(
    name: str = typer.Argument(..., metavar="NAME", help="The skill's name."),
    as_json: bool = typer.Option(False, "--json", help="Print the skill as JSON."),
) -> None:
    """A skill's production content, its variations and its recent metrics."""
    memory = store()
    known_skill(memory, name)
    production, content = memory.get_production(name)
    variations = [
        {
            "variation_id": variation.variation_id,
            "parent_version": variation.parent_version,
            "test_status": variation.test_status,
            "created_by": variation.created_by,
            "created_at": variation.created_at.isoformat(timespec="seconds") if variation.created_at else None,
        }
        for variation in memory.list_variations(name)
    ]
    metrics = memory.get_skill_metrics(name)
    evolution = _evolution(name, content)
    if as_json:
        print_json(
            {"name": name, "production_variation_id": production, "content": content,
             "variations": variations, "metrics": metrics, "evolution": evolution}
        )
        return
    console.rule(f"{name} — production {production}")
    console.print(content, markup=False, highlight=False, soft_wrap=True)
    listed = table("variation", "parent", "status", "created by", "created", title="variations")
    for row in variations:
        listed.add_row(row["variation_id"], row["parent_version"] or "-", row["test_status"], row["created_by"],
                       (row["created_at"] or "-").replace("T", " "))
    figures = {key: value for key, value in metrics.items() if key not in ("skill_name", "days")}
    show(Group(listed, record_panel(f"last {metrics['days']:g} days", figures), *_evolution_lines(evolution)))


def _evolution(name: str, content: str) -> dict[str, Any]:
    """Whether the skill evolves (and why not), what screening has spent, and its latest screenings."""
    from db.screening import SCREENING_EVENT
    from worker.evolvers.base import evolution_blocker
    from worker.screening import screening_budget, screening_wait
    from worker.settings import get_settings
    from worker.skills import parse_variation

    memory = store()
    variation = parse_variation(content)
    blocker = evolution_blocker(variation)
    settings = get_settings()
    budget = screening_budget(memory, settings, name)
    screenings = [event for event in memory.get_evolution_history(name) if event.event_type == SCREENING_EVENT]
    return {
        "evolved": blocker is None,
        "not_evolved_because": blocker,
        "screening_calls": budget.skill_spent,
        "live_runs": budget.skill_runs,
        "fleet_screening_calls": budget.fleet_spent,
        "fleet_live_runs": budget.fleet_runs,
        # What the next screening may spend now, and why it waits (below the smallest screening, say).
        "next_screening_calls": max(budget.calls, 0),
        "screening_waits": None if blocker else screening_wait(memory, settings, variation, budget),
        "latest_screenings": [
            {"created_at": event.created_at.isoformat(timespec="seconds") if event.created_at else None,
             **event.details}
            for event in screenings[-SCREENINGS_SHOWN:]
        ],
    }


def _evolution_lines(evolution: dict[str, Any]) -> list[Any]:
    from db.screening import screened

    state = "on" if evolution["evolved"] else f"not evolved: {evolution['not_evolved_because']}"
    lines: list[Any] = [
        Text(f"evolution: {state}"),
        Text(
            f"screening: {evolution['screening_calls']} replay calls for {evolution['live_runs']} live runs"
            + f"; the fleet {evolution['fleet_screening_calls']} for {evolution['fleet_live_runs']}"
            + f" (next screening may spend {evolution['next_screening_calls']})"
        ),
        *([Text(f"waits: {evolution['screening_waits']}")] if evolution["screening_waits"] else []),
    ]
    if not evolution["latest_screenings"]:
        return lines
    listed = table("screened", "rounds", "calls", "parent", "last round's candidates (replay fidelity, "
                   "wins-losses, p)", "chosen", title="latest screenings")
    for details in evolution["latest_screenings"]:
        parent = details.get("parent", {})
        listed.add_row(
            (details["created_at"] or "-").replace("T", " "),
            "{} ({} candidates)".format(*screened(details)),
            str(details.get("calls", 0)),
            f"{parent.get('variation_id', '-')} {parent.get('fidelity', 0.0):.2f}",
            ", ".join(
                f"{item['variation_id']} {item['fidelity']:.2f} {item['wins']}-{item['losses']} "
                f"p={item['p_value']:.3f}"
                for item in details.get("candidates", [])
            ),
            details.get("chosen") or "none",
        )
    return [*lines, listed]


@command(app, "history")
def history(
    name: str = typer.Argument(..., metavar="NAME", help="The skill's name."),
    as_json: bool = typer.Option(False, "--json", help="Print the lineage as JSON."),
) -> None:
    """The skill's production lineage: every version that was production, when and why."""
    memory = store()
    known_skill(memory, name)
    changes = memory.production_history(name)
    if as_json:
        print_json([{**asdict(c), "created_at": c.created_at.isoformat() if c.created_at else None} for c in changes])
        return
    listed = table("#", "since", "production", "replaced", "why", "test", title=f"{name}: production lineage")
    for c in changes:
        since = c.created_at.strftime("%Y-%m-%d %H:%M:%S") if c.created_at else "-"
        listed.add_row(str(c.change_id), since, c.variation_id, c.previous_variation_id or "-", c.reason,
                       f"#{c.test_id}" if c.test_id else "-")
    show(listed)
