"""`wre skill add | list | show`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from worker.registry import register_skill_file
from wre.context import console, store, user_errors

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
        test = memory.running_test(skill.name)
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
