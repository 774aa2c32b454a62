"""The evolver contract: propose a new variation's content from a skill and its recent failures.

The step checks are the contract between a skill and its callers, so an evolver may change the instructions,
the values of the declared parameters (``params:``, within what each declares) and, for a simulation, the
declared quality (``simulation:``), and nothing else. :func:`validate_proposal` enforces that on every proposal.

What an evolver changes must be something the agent reads: the python agent reads only its parameters, the
simulated agent only ``simulation:``. :func:`evolution_blocker` says when a skill has nothing an evolver can
change; such a skill is not evolved.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Protocol

from worker.agents.isolation import trim
from worker.skills import (
    PARAMS_FIELD,
    PYTHON_AGENT,
    Param,
    ParamValue,
    Skill,
    SkillFileError,
    parse_skill,
    render_skill,
)

MAX_FAILURE_OUTPUT_CHARS = 2000
# Front-matter keys an evolver may change; everything else must stay as the parent has it.
EVOLVABLE_FIELDS = frozenset({"simulation", PARAMS_FIELD})
SIMULATED = "simulated"
# A range parameter moves by a normal step of this share of its width (so neighbours are likelier than ends).
RANGE_STEP_SHARE = 0.25
RANGE_DECIMALS = 4
MAX_REDRAWS = 8


class EvolutionRefused(ValueError):
    """An evolver declined, or produced a proposal that is empty, unchanged or malformed."""


@dataclass(frozen=True)
class Failure:
    """One recent failed run an evolver learns from.

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
            object.__setattr__(self, "output", trim(self.output, MAX_FAILURE_OUTPUT_CHARS))


class Evolver(Protocol):
    """Proposes new content (a full skill file) for a skill."""

    name: str

    def propose(self, skill: Skill, failures: list[Failure], seed: str, candidate: int = 0) -> str:
        """Propose a variation of ``skill``.

        :param skill: the parent (the production variation).
        :param failures: recent failed runs, newest first.
        :param seed: makes any randomness reproducible (same seed, same proposal).
        :param candidate: which of an evolution's candidates this is (from 0): evolvers that can, vary their
            proposals with it, so that screening has different candidates to choose from.
        :returns: the new content; it passed :func:`validate_proposal`.
        :raises EvolutionRefused: nothing to propose, or the proposal broke the contract.
        """
        ...


def evolution_blocker(skill: Skill) -> str | None:
    """Why no evolver can change what ``skill``'s agent does, or None when its evolver can.

    :param skill: the production variation (its default agent and declared evolver).
    """
    if skill.agent == PYTHON_AGENT:
        if not skill.params:
            return (
                "the python agent does not read instructions and the skill declares no params: "
                "nothing an evolver can change"
            )
        if skill.evolver == SIMULATED:
            return "the simulated evolver changes only simulation:, which the python agent does not read"
        return None
    if skill.agent == SIMULATED and skill.evolver != SIMULATED:
        return (
            f"the simulated agent reads only simulation:, which the {skill.evolver} evolver does not change"
        )
    if skill.agent != SIMULATED and skill.evolver == SIMULATED:
        return f"the simulated evolver changes only simulation:, which the {skill.agent} agent does not read"
    return None


def candidate_rng(seed: str, skill: Skill, candidate: int) -> random.Random:
    """A generator seeded by (seed, parent, candidate): the same evolution draws the same candidates."""
    digest = hashlib.sha256(f"{seed}\x1f{skill.variation_id}\x1f{candidate}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _moved(param: Param, rng: random.Random) -> ParamValue:
    """Another value of ``param`` within its domain (never the current one)."""
    if param.choices is not None:
        return rng.choice([choice for choice in param.choices if choice != param.value])
    assert param.minimum is not None and param.maximum is not None and isinstance(param.value, int | float)
    low, high, value = param.minimum, param.maximum, param.value
    for _ in range(MAX_REDRAWS):
        drawn = min(high, max(low, value + rng.gauss(0.0, RANGE_STEP_SHARE * (high - low))))
        moved: ParamValue = round(drawn) if param.integral else round(drawn, RANGE_DECIMALS)
        if moved != value:
            return moved
    # A narrow integer range can keep rounding back to the value: step to a neighbour instead.
    step = 1 if param.integral else (high - low) / 10
    return value + step if value + step <= high else value - step


def tuned_params(skill: Skill, seed: str, candidate: int) -> str:
    """The parent with one parameter moved to another allowed value, drawn from (the evolution's seed, the
    candidate's index); :class:`EvolutionRefused` when it declares no ``params:``."""
    if not skill.params:
        raise EvolutionRefused(f"skill {skill.name!r} declares no params to tune")
    rng = candidate_rng(seed, skill, candidate)
    name = rng.choice(sorted(skill.params))
    front_matter = skill.front_matter()
    front_matter[PARAMS_FIELD][name]["value"] = _moved(skill.params[name], rng)
    return render_skill(front_matter, skill.instructions)


def _without(front_matter: dict[str, Any], keys: frozenset[str]) -> dict[str, Any]:
    return {key: value for key, value in front_matter.items() if key not in keys}


def validate_proposal(parent: Skill, content: object) -> Skill:
    """Check a proposal against its parent: it parses, differs, and keeps everything but what may evolve.

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
    domains = {name: param.domain() for name, param in parent.params.items()}
    if domains != {name: param.domain() for name, param in proposal.params.items()}:
        raise EvolutionRefused(
            "the proposal changes which params exist or what they may take: only values may evolve"
        )
    return proposal
