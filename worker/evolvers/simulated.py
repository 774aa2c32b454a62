"""The ``simulated`` evolver: a SIMULATION of evolution, for demos, tests and benchmarks.

It does not improve anything. It draws the new variation's declared quality around the parent's
(``p' = clamp(p + N(MEAN_SHIFT, SHIFT_SPREAD))``, seeded), so some variations are better and some worse, and
the A/B tests have a known truth to find. The body gets a note naming the generation and the draw.
"""

from __future__ import annotations

import hashlib
import random
import re
from typing import Any

from worker.agents.simulated import SIMULATION_FIELD, SimulationSpecError, simulation_spec
from worker.skills import Skill, render_skill

from .base import EvolutionRefused, Failure, validate_proposal

# A small average gain and a wider spread: about 60% of variations are better than their parent, 40% worse.
MEAN_SHIFT = 0.02
SHIFT_SPREAD = 0.08
PROBABILITY_FLOOR = 0.01
PROBABILITY_CEILING = 0.99
PROBABILITY_DECIMALS = 3
NOTE_PREFIX = "> Simulated evolution"
NOTE_LINE = re.compile(rf"^{re.escape(NOTE_PREFIX)}.*$\n?", re.MULTILINE)


def _clamp(value: float) -> float:
    return round(min(PROBABILITY_CEILING, max(PROBABILITY_FLOOR, value)), PROBABILITY_DECIMALS)


def _rng(seed: str, skill: Skill, candidate: int) -> random.Random:
    # The first candidate keeps the draw one proposal per evolution always had (same seed, same variation).
    suffix = f"\x1f{candidate}" if candidate else ""
    digest = hashlib.sha256(f"{seed}\x1f{skill.variation_id}{suffix}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


class SimulatedEvolver:
    """A SIMULATED evolver: shifts the declared pass probability by a seeded random draw."""

    name = "simulated"

    def propose(self, skill: Skill, failures: list[Failure], seed: str, candidate: int = 0) -> str:
        """Propose a variation with a redrawn declared quality.

        :param skill: the parent; must declare ``simulation:``.
        :param failures: unused: a simulation learns nothing from them.
        :param seed: seeds the draw (with the parent's variation id and the candidate).
        :param candidate: which candidate: each is its own draw.
        :raises EvolutionRefused: the parent has no valid ``simulation:`` declaration.
        """
        try:
            spec = simulation_spec(skill)
        except SimulationSpecError as error:
            raise EvolutionRefused(f"cannot simulate evolving {skill.name!r}: {error}") from error
        rng = _rng(seed, skill, candidate)
        mean_shift, spread = MEAN_SHIFT, SHIFT_SPREAD
        if spec.evolution is not None:
            mean_shift, spread = spec.evolution["mean_shift"], spec.evolution["spread"]
        generation = spec.generation + 1
        simulation: dict[str, Any] = {}
        if spec.pass_probability is not None:
            before = spec.pass_probability
            after = _clamp(before + rng.gauss(mean_shift, spread))
            simulation["pass_probability"] = after
            change = f"declared pass probability {before:g} → {after:g}"
        else:
            assert spec.pass_probabilities is not None  # simulation_spec sets exactly one of the two
            drawn = {
                step_id: _clamp(p + rng.gauss(mean_shift, spread))
                for step_id, p in spec.pass_probabilities.items()
            }
            simulation["pass_probabilities"] = drawn
            change = "declared step pass probabilities " + ", ".join(
                f"{step_id} {spec.pass_probabilities[step_id]:g} → {p:g}" for step_id, p in drawn.items()
            )
        simulation["generation"] = generation
        if spec.evolution is not None:
            simulation["evolution"] = dict(spec.evolution)
        front_matter = skill.front_matter()
        front_matter[SIMULATION_FIELD] = simulation
        note = f"{NOTE_PREFIX}, generation {generation}: {change}. (A simulation: the instructions did not change.)"
        body = NOTE_LINE.sub("", skill.instructions).rstrip()
        content = render_skill(front_matter, f"{body}\n\n{note}" if body else note)
        validate_proposal(skill, content)
        return content
