"""Registering skills: a parsed, validated skill file becomes a skill and its baseline variation."""

from __future__ import annotations

from pathlib import Path

from db.memory import PatternMemory
from worker.agents import get_agent
from worker.settings import Settings, get_settings
from worker.skills import Skill, load_skill_file, parse_skill


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
    get_agent(skill.agent)  # an unknown default agent is refused now, not at the first run
    check_time_limit(skill, settings or get_settings())
    return memory.register_skill(
        skill.name,
        skill.content,
        default_agent=skill.agent,
        description=skill.description,
        threshold=skill.threshold,
        replace=replace,
    )


def register_skill_file(
    memory: PatternMemory, path: str | Path, replace: bool = False, settings: Settings | None = None
) -> Skill:
    """Parse and register the skill file at ``path``; a malformed file raises with its path, line and field."""
    allowed = (settings or get_settings()).python_skill_modules
    skill = load_skill_file(path, allowed_modules=allowed)
    register_skill(memory, skill, replace=replace, settings=settings)
    return skill


def register_skill_text(
    memory: PatternMemory, text: str, source: str = "<string>", replace: bool = False
) -> Skill:
    skill = parse_skill(text, source=source, allowed_modules=get_settings().python_skill_modules)
    register_skill(memory, skill, replace=replace)
    return skill
