"""`wre ab list | show | start | stop | rollback`: the A/B tests and production, by hand."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Group

from wre.context import command, console, known_skill, print_json, record_panel, show, store, table

if TYPE_CHECKING:
    from db.memory import AbTestRecord

app = typer.Typer(help="A/B tests: list, inspect, start, stop; roll production back.", no_args_is_help=True)


def _rate(successes: int, trials: int) -> str:
    return f"{successes}/{trials} ({successes / trials:.0%})" if trials else "0/0"


@command(app, "list")
def list_tests(
    status: str | None = typer.Option(None, metavar="STATUS", help="Only tests running, paused, completed or stopped."),
    skill: str | None = typer.Option(None, metavar="SKILL", help="Only this skill's tests."),
    as_json: bool = typer.Option(False, "--json", help="Print the tests as JSON."),
) -> None:
    """A/B tests, newest last."""
    from db.models import TEST_STATUSES

    if status is not None and status not in TEST_STATUSES:
        raise ValueError(f"--status must be one of {', '.join(TEST_STATUSES)}, got {status!r}")
    memory = store()
    if skill is not None:
        known_skill(memory, skill)
    tests = memory.list_ab_tests(status=status, skill_name=skill)
    if as_json:
        print_json([test.to_dict() for test in tests])
        return
    shown = table("test", "skill", "status", "policy", "control", "treatment", "winner")
    for t in tests:
        shown.add_row(f"#{t.test_id}", t.skill_name, t.status, t.policy, _rate(t.control_successes, t.control_trials),
                      _rate(t.treatment_successes, t.treatment_trials), t.winner or "-")
    show(shown)


def test_view(test: AbTestRecord) -> dict[str, Any]:
    """Every field of the record (new ones included), arms summed up first, dates on one line."""
    fields = test.to_dict()
    view: dict[str, Any] = {"skill": fields.pop("skill_name"), "status": fields.pop("status")}
    for arm in ("control", "treatment"):
        # Summed up in the arm's line; the fidelity mean is named for what it is.
        successes, trials = fields.pop(f"{arm}_successes"), fields.pop(f"{arm}_trials")
        view[arm] = f"{fields.pop(f'{arm}_version')}: {_rate(successes, trials)} successes"
        fields.pop(f"{arm}_fidelity_sum", None)
        if f"{arm}_fidelity" in fields:
            fields[f"{arm} first-attempt fidelity (mean)"] = fields.pop(f"{arm}_fidelity")
    for key, value in fields.items():
        if key not in ("test_id", "decision"):
            view[key] = value.replace("T", " ")[:19] if key.endswith("_at") and isinstance(value, str) else value
    return view


@command(app, "show")
def show_test(
    test_id: int = typer.Argument(..., metavar="TEST_ID", help="The test's id."),
    as_json: bool = typer.Option(False, "--json", help="Print the test and the policy's verdict as JSON."),
) -> None:
    """One test: its arms, and what the policy says now (or said when it decided)."""
    memory = store()
    test = memory.get_ab_test(test_id)
    if test is None:
        raise ValueError(f"unknown A/B test {test_id}; `wre ab list` shows the tests")
    verdict = memory.ab_verdict(test_id) if test.status == "running" else None
    if as_json:
        print_json({**test.to_dict(), "verdict_now": verdict})
        return
    panels = [record_panel(f"A/B test #{test.test_id}", test_view(test))]
    if test.decision:
        panels.append(record_panel("the decision", test.decision))
    if verdict is not None:
        panels.append(record_panel("the policy now", verdict))
    show(Group(*panels))


@command(app, "start")
def start(
    skill: str = typer.Argument(..., metavar="SKILL", help="The skill."),
    treatment: str = typer.Argument(
        ..., metavar="FILE_OR_VARIATION_ID", help="A skill file (stored as a variation) or a variation id."
    ),
    policy: str | None = typer.Option(None, metavar="POLICY", help="sequential (default: WRE_AB_POLICY)."),
) -> None:
    """Start an A/B test of a hand-written skill file, or of a stored variation, against production."""
    from worker.settings import AB_POLICIES, get_settings
    from worker.skills import parse_skill

    memory = store()
    chosen = policy or get_settings().ab_policy
    if chosen not in AB_POLICIES:  # refused here, before anything is written
        raise ValueError(
            f"unknown policy {chosen!r}: tests run with {', '.join(AB_POLICIES)} (the seed's margin rule is kept "
            "for comparison only)"
        )
    production, _ = memory.get_production(skill)
    path = Path(treatment)
    if path.is_file():
        content = path.read_text(encoding="utf-8")
        parsed = parse_skill(content, source=str(path))  # path, line and field on any error
        if parsed.name != skill:
            raise ValueError(f"{path} is skill {parsed.name!r}, not {skill!r}")
        variation = memory.store_variation(skill, content, parent_version=production, created_by="operator")
    else:
        variation = treatment
        if memory.get_variation(variation) is None:
            raise ValueError(f"{treatment!r} is neither a skill file nor a known variation id")
    test_id = memory.schedule_ab_test(skill, production, variation, policy=chosen)
    console.print(f"started A/B test #{test_id}: {production} (control) vs {variation} (treatment)")


@command(app, "stop")
def stop(test_id: int = typer.Argument(..., metavar="TEST_ID", help="The test's id.")) -> None:
    """Stop a running test without a verdict; its treatment is archived."""
    store().stop_ab_test(test_id)
    console.print(f"stopped A/B test #{test_id}")


@command(app, "rollback")
def rollback(
    skill: str = typer.Argument(..., metavar="SKILL", help="The skill."),
    to: str | None = typer.Option(
        None, "--to", metavar="VARIATION", help="An earlier production version (default: the one replaced)."
    ),
    expect: str | None = typer.Option(
        None, "--expect", metavar="CURRENT", help="The production version you saw; refused if production changed since."
    ),
) -> None:
    """Restore an earlier production version (see `wre skill history`). Stops the skill's open test and guard."""
    memory = store()
    if expect is None:
        current, _ = memory.get_production(skill)
        raise ValueError(
            f"production of {skill!r} is {current}; to roll it back, say so: "
            f"wre ab rollback {skill}{' --to ' + to if to else ''} --expect {current}"
        )
    old, new = memory.rollback_skill(skill, to=to, expected_current=expect)
    console.print(f"{skill}: production rolled back from {old} to {new}")
