"""Evolvers: propose a new variation of a skill from its recent failures.

Known evolvers: ``hints`` (deterministic hints added to the instructions), ``simulated`` (a simulation that
redraws the declared quality) and ``llm`` (a model rewrites the instructions). Every proposal is checked by
:func:`validate_proposal`.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import EvolutionRefused, Evolver, Failure, validate_proposal
from .hints import HintsEvolver
from .llm import LlmEvolver
from .simulated import SimulatedEvolver

_FACTORIES: dict[str, Callable[[], Evolver]] = {
    HintsEvolver.name: HintsEvolver,
    LlmEvolver.name: LlmEvolver,
    SimulatedEvolver.name: SimulatedEvolver,
}
EVOLVER_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))


class UnknownEvolverError(ValueError):
    """An evolver name that no evolver answers to."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(f"unknown evolver {name!r} (known evolvers: {', '.join(EVOLVER_NAMES)})")


def get_evolver(name: str) -> Evolver:
    """The evolver called ``name``.

    :param name: one of :data:`EVOLVER_NAMES`.
    :raises UnknownEvolverError: no such evolver (the message lists the known ones).
    """
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise UnknownEvolverError(name)
    return factory()


__all__ = [
    "EVOLVER_NAMES",
    "EvolutionRefused",
    "Evolver",
    "Failure",
    "UnknownEvolverError",
    "get_evolver",
    "validate_proposal",
]
