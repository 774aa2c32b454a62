"""The evolver contract: propose a new variation's content from a skill and its recent failures.

The step checks are the contract between a skill and its callers, so an evolver may change the instructions
and, for a simulation, the declared quality (``simulation:``), and nothing else. :func:`validate_proposal`
enforces that on every proposal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from worker.skills import Skill, SkillFileError, parse_skill

MAX_FAILURE_OUTPUT_CHARS = 2000
ELLIPSIS = "…"
# Front-matter keys an evolver may change; everything else must stay as the parent has it.
EVOLVABLE_FIELDS = frozenset({"simulation"})


class EvolutionRefused(ValueError):
    """An evolver declined, or produced a proposal that is empty, unchanged or malformed."""


@dataclass(frozen=True)
class Failure:
    """One recent failed run an evolver learns from.

    :param run_id: the run.
    :param pattern_fidelity: its final attempt's fidelity.
    :param failed_at_step: the first step its final attempt failed, or None.
    :param error: the agent's error, or None.
    :param output: the output as text, trimmed to 2000 characters on construction.
    """

    run_id: str
    pattern_fidelity: float
    failed_at_step: str | None
    error: str | None
    output: str = ""

    def __post_init__(self) -> None:
        # Trimmed here so that no caller can hand an evolver (or an LLM prompt) a megabyte of output.
        if len(self.output) > MAX_FAILURE_OUTPUT_CHARS:
            object.__setattr__(self, "output", self.output[: MAX_FAILURE_OUTPUT_CHARS - 1] + ELLIPSIS)


class Evolver(Protocol):
    """Proposes new content (a full skill file) for a skill."""

    name: str

    def propose(self, skill: Skill, failures: list[Failure], seed: str) -> str:
        """Propose a variation of ``skill``.

        :param skill: the parent (the production variation).
        :param failures: recent failed runs, newest first.
        :param seed: makes any randomness reproducible (same seed, same proposal).
        :returns: the new content; it passed :func:`validate_proposal`.
        :raises EvolutionRefused: nothing to propose, or the proposal broke the contract.
        """
        ...


def _without(front_matter: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in front_matter.items() if key not in keys}


def validate_proposal(parent: Skill, content: object) -> Skill:
    """Check a proposal against its parent: it parses, differs, and keeps everything but what may evolve.

    :param parent: the skill the proposal evolves.
    :param content: the proposed content.
    :returns: the proposal, parsed.
    :raises EvolutionRefused: empty, unchanged, malformed, another skill, or changed checks or settings.
    """
    if not isinstance(content, str) or not content.strip():
        raise EvolutionRefused(f"empty proposal for {parent.name!r}")
    if content == parent.content:
        raise EvolutionRefused(f"the proposal for {parent.name!r} is unchanged")
    try:
        proposal = parse_skill(content, source=f"<proposal for {parent.name}>")
    except SkillFileError as error:
        raise EvolutionRefused(f"malformed proposal: {error}") from error
    if proposal.name != parent.name:
        raise EvolutionRefused(f"the proposal is for {proposal.name!r}, not {parent.name!r}")
    if proposal.steps != parent.steps:
        raise EvolutionRefused(
            "the proposal changes the steps: the checks are the contract and may not evolve"
        )
    mine, theirs = (
        _without(parent.front_matter(), EVOLVABLE_FIELDS),
        _without(proposal.front_matter(), EVOLVABLE_FIELDS),
    )
    changed = sorted(key for key in mine.keys() | theirs.keys() if mine.get(key) != theirs.get(key))
    if changed:
        raise EvolutionRefused(f"the proposal changes {', '.join(changed)}: only the instructions may evolve")
    return proposal
