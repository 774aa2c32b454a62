"""Registering skills: parsed, validated skill files become skills and their baseline variations.

Several files are all-or-nothing: every file is parsed and checked first, then all are stored in one
transaction. Re-adding an unchanged file is a no-op, also after a promotion (production descends from
it); a changed file is refused with what differs unless ``replace``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from db.catalog import RegistrationResult, SkillRegistration
from db.memory import PatternMemory
from worker.agents import get_agent
from worker.settings import Settings, get_settings
from worker.skills import Skill, load_skill_file, parse_skill

# The parts of a skill file a changed file is compared on (``instructions`` is the Markdown body), in the
# order they are named.
COMPARED_PARTS = (
    "description", "agent", "threshold", "time_limit", "entrypoint", "evolver", "steps", "input_schema",
    "extra", "instructions",
)


@dataclass(frozen=True)
class Registered:
    """One registered file: its skill and what registration did."""

    skill: Skill
    result: RegistrationResult
    source: str


def register_skills(
    memory: PatternMemory,
    skills: Sequence[tuple[Skill, str]],
    replace: bool = False,
    settings: Settings | None = None,
) -> list[Registered]:
    """Check every skill, then store them all in one transaction.

    :param skills: (parsed skill, where it came from) pairs.
    :param replace: make a changed file production (the current production, promoted or not, is kept as
        the previous version for rollback).
    :raises ValueError: naming the file and what is wrong; nothing is stored.
    """
    names = [skill.name for skill, _ in skills]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"skill {repeated[0]!r} is defined by more than one of the files")
    for skill, source in skills:
        try:
            get_agent(skill.agent)  # an unknown default agent is refused now, not at the first run
            check_time_limit(skill, settings or get_settings())
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        if not replace:
            _refuse_changed(memory, skill, source)
    registrations = [
        SkillRegistration(skill.name, skill.content, skill.agent, skill.description, skill.threshold)
        for skill, _ in skills
    ]
    results = memory.register_skills(registrations, replace=replace)
    return [Registered(skill, result, source) for (skill, source), result in zip(skills, results, strict=True)]


def _refuse_changed(memory: PatternMemory, skill: Skill, source: str) -> None:
    if memory.get_skill(skill.name) is None or skill.variation_id in memory.lineage(skill.name):
        return
    production, content = memory.get_production(skill.name)
    old = parse_skill(content, source="<production>")
    changed = [part for part in COMPARED_PARTS if getattr(old, part) != getattr(skill, part)] or [
        "front matter formatting"
    ]
    promoted = memory.get_variation(production)
    evolved = promoted is not None and promoted.created_by != "registration"
    what = f"an evolved version ({production}) that " if evolved else f"{production}, which "
    raise ValueError(
        f"{source}: skill {skill.name!r} differs from production in {', '.join(changed)}; "
        f"`wre skill add --replace` makes this file production and replaces {what}stays available "
        f"to `wre ab rollback {skill.name}`"
    )


def check_time_limit(skill: Skill, settings: Settings) -> None:
    """Refuse a skill whose run could outlast the broker's visibility timeout: the broker would hand its
    messages to a second worker while the first still runs them (each attempt costing twice).

    :raises ValueError: time limit x attempts reaches ``WRE_VISIBILITY_TIMEOUT_SECONDS``.
    """
    limit = skill.time_limit or settings.default_time_limit_seconds
    attempts = settings.react_max_iter if settings.react_mode else 1
    if limit * attempts >= settings.visibility_timeout_seconds:
        raise ValueError(
            f"skill {skill.name!r}: time limit {limit:g}s x {attempts} attempt(s) (WRE_REACT_MAX_ITER) reaches "
            f"the broker's visibility timeout of {settings.visibility_timeout_seconds:g}s "
            "(WRE_VISIBILITY_TIMEOUT_SECONDS): lower time_limit or raise the timeout"
        )


def register_skill(
    memory: PatternMemory, skill: Skill, replace: bool = False, settings: Settings | None = None
) -> str:
    """Store ``skill`` (its exact content) as a skill with that content in production; returns the variation id."""
    return register_skills(memory, [(skill, skill.name)], replace=replace, settings=settings)[0].result.variation_id


def register_skill_files(
    memory: PatternMemory, paths: Sequence[str | Path], replace: bool = False, settings: Settings | None = None
) -> list[Registered]:
    """Parse every file first (a malformed one raises with its path, line and field), then register them all
    or none."""
    allowed = (settings or get_settings()).python_skill_modules
    parsed = [(load_skill_file(path, allowed_modules=allowed), str(path)) for path in paths]
    return register_skills(memory, parsed, replace=replace, settings=settings)


def register_skill_file(
    memory: PatternMemory, path: str | Path, replace: bool = False, settings: Settings | None = None
) -> Skill:
    """Parse and register the skill file at ``path``; a malformed file raises with its path, line and field."""
    return register_skill_files(memory, [path], replace=replace, settings=settings)[0].skill


def register_skill_text(
    memory: PatternMemory, text: str, source: str = "<string>", replace: bool = False
) -> Skill:
    skill = parse_skill(text, source=source, allowed_modules=get_settings().python_skill_modules)
    register_skill(memory, skill, replace=replace)
    return skill
