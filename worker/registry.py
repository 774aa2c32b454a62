"""Registering skills: a parsed, validated skill file becomes a skill and its baseline variation."""

from __future__ import annotations

from pathlib import Path

from db.memory import PatternMemory
from worker.agents import get_agent
from worker.settings import Settings, get_settings
from worker.skills import Skill, load_skill_file, parse_skill


def register_skill(memory: PatternMemory, skill: Skill, replace: bool = False) -> str:
    """Store ``skill`` (its exact content) as a skill with that content in production; returns the variation id."""
    get_agent(skill.agent)  # an unknown default agent is refused now, not at the first run
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
    register_skill(memory, skill, replace=replace)
    return skill


def register_skill_text(
    memory: PatternMemory, text: str, source: str = "<string>", replace: bool = False
) -> Skill:
    skill = parse_skill(text, source=source, allowed_modules=get_settings().python_skill_modules)
    register_skill(memory, skill, replace=replace)
    return skill
