"""The ``simulated`` agent: a SIMULATION of an agent, for demos, tests and benchmarks. It calls no model.

A variation declares its own quality in its front matter, and this agent draws outcomes from it::

    simulation:
      pass_probability: 0.7          # an attempt passes every step with probability 0.7
    # or
    simulation:
      pass_probabilities: {summary: 0.9, priority: 0.6}   # each step passes on its own, every step listed

With ``pass_probability`` an attempt either passes every step, or breaks at a step chosen uniformly and fails
it and every later step (fidelity k/n for a break at step k, counted from 0). So with a threshold above
(n-1)/n (the default 0.9 and fewer than ten steps) ``pass_probability`` is exactly the variation's success
rate, which is what the A/B tests should discover. An optional ``generation`` counts simulated evolutions.

Every step must be a ``key`` check; the output is a JSON object holding a step's key iff the step passed, plus
``"_simulated": true``. Draws use ``random.Random`` seeded from (variation id, run id, attempt), so the same
attempt always has the same outcome, and a retry is a fresh draw.
"""

from __future__ import annotations

import hashlib
import random
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic reads typing's only from Python 3.12

from worker.skills import Skill

from .base import AttemptInfo

SIMULATION_FIELD = "simulation"
SIMULATED_MARKER = "_simulated"
SEED_BYTES = 8


class SimulationSpecError(ValueError):
    """A skill's ``simulation:`` declaration is missing or malformed, or its steps cannot be simulated."""


Probability = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Shift = Annotated[float, Strict(), Field(ge=-1.0, le=1.0)]
# What each field must be, in the words of the refusal.
RULES = {
    "pass_probability": "a probability between 0 and 1",
    "pass_probabilities": "a probability between 0 and 1",
    "generation": "a non-negative integer",
    "evolution": "{mean_shift: M, spread: S}",
    "mean_shift": "a number within -1..1",
    "spread": "a number within 0..1",
}


@with_config(ConfigDict(extra="forbid"))
class Evolution(TypedDict):
    mean_shift: Shift
    spread: Annotated[Shift, Field(ge=0.0)]


class SimulationSpec(BaseModel):
    """A variation's declared quality.

    :param pass_probability: chance that an attempt passes every step (None when per-step).
    :param pass_probabilities: chance per step id that the step passes (None when per-attempt).
    :param generation: how many simulated evolutions led to this variation (0 for a hand-written one).
    :param evolution: optional ``{mean_shift, spread}`` for the simulated evolver's draw (its defaults when
        None): lets a demo or a benchmark declare how good evolution is, instead of hiding it in code.
    """

    model_config = ConfigDict(frozen=True)

    pass_probability: Probability | None = None
    pass_probabilities: dict[str, Probability] | None = None
    generation: Annotated[int, Strict(), Field(ge=0)] = 0
    evolution: Evolution | None = None


def simulation_spec(skill: Skill) -> SimulationSpec:
    """Read and check a skill's ``simulation:`` declaration.

    :raises SimulationSpecError: no declaration, both or neither probability form, a figure out of range,
        per-step figures that do not match the steps, or a step that is not a ``key`` check.
    """
    for step in skill.steps:
        if step.kind != "key":
            raise SimulationSpecError(
                f"skill {skill.name!r}: the simulated agent needs 'key' checks, step {step.id!r} is {step.kind!r}"
            )
    keys = [step.argument for step in skill.steps]
    if len(set(keys)) != len(keys):
        raise SimulationSpecError(f"skill {skill.name!r}: two steps check the same key, cannot simulate them")
    raw = skill.extra.get(SIMULATION_FIELD)
    if not isinstance(raw, dict):
        raise SimulationSpecError(
            f"skill {skill.name!r}: the simulated agent needs 'simulation: {{pass_probability: P}}' "
            f"in the front matter, got {raw!r}"
        )
    if ("pass_probability" in raw) == ("pass_probabilities" in raw):
        raise SimulationSpecError(
            f"skill {skill.name!r}: declare exactly one of simulation.pass_probability "
            "and simulation.pass_probabilities"
        )
    step_ids = [step.id for step in skill.steps]
    per_step = raw.get("pass_probabilities")
    if per_step is not None and (not isinstance(per_step, dict) or sorted(per_step) != sorted(step_ids)):
        raise SimulationSpecError(
            f"simulation.pass_probabilities must give every step exactly once ({', '.join(step_ids)}), "
            f"got {per_step!r}"
        )
    declared = {key: raw[key] for key in SimulationSpec.model_fields if key in raw}
    if per_step is not None:
        declared["pass_probabilities"] = {step_id: per_step[step_id] for step_id in step_ids}  # in step order
    try:
        return SimulationSpec.model_validate(declared)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        rule = next((RULES[str(part)] for part in reversed(first["loc"]) if str(part) in RULES), first["msg"])
        raise SimulationSpecError(f"simulation.{where} must be {rule}, got {first['input']!r}") from None


def attempt_seed(variation_id: str, run_id: str, attempt: int) -> int:
    """The RNG seed of one attempt: a hash of (variation id, run id, attempt), stable across processes."""
    digest = hashlib.sha256(f"{variation_id}\x1f{run_id}\x1f{attempt}".encode()).digest()
    return int.from_bytes(digest[:SEED_BYTES], "big")


def simulate_passes(spec: SimulationSpec, step_ids: list[str], rng: random.Random) -> list[bool]:
    """Draw which steps pass.

    :param step_ids: the skill's steps, in order.
    :param rng: the attempt's seeded generator.
    """
    if spec.pass_probabilities is not None:
        return [rng.random() < spec.pass_probabilities[step_id] for step_id in step_ids]
    assert spec.pass_probability is not None  # simulation_spec sets exactly one of the two
    if rng.random() < spec.pass_probability:
        return [True] * len(step_ids)
    break_at = rng.randrange(len(step_ids))
    return [index < break_at for index in range(len(step_ids))]


class SimulatedAgent:
    """A SIMULATED agent: draws each attempt's outcome from the variation's declared quality."""

    name = "simulated"

    def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
        """Produce a simulated output for this attempt.

        :param skill: the variation; must declare ``simulation:`` and have only ``key`` checks.
        :param context: unused: a simulation does not read its input.
        :param attempt: seeds the draw together with the variation id.
        """
        spec = simulation_spec(skill)
        rng = random.Random(attempt_seed(attempt.variation_id, attempt.run_id, attempt.attempt))
        passes = simulate_passes(spec, [step.id for step in skill.steps], rng)
        output: dict[str, Any] = {SIMULATED_MARKER: True}
        for step, passed in zip(skill.steps, passes, strict=True):
            if passed:
                output[str(step.argument)] = f"simulated {step.id}"
        return output
