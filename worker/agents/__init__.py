"""Agents: what runs a skill on a context. One protocol (:class:`Agent`), a registry, and the attempt runner.

Known agents: ``python`` (calls the skill's allowed ``entrypoint``), ``simulated`` (a simulation that draws
outcomes from the variation's declared quality) and ``llm`` (a model behind an OpenAI-compatible API).
Agents know nothing of the database.
"""

from __future__ import annotations

from collections.abc import Callable

from .base import Agent, AgentConfigurationError, AgentInfrastructureError, AgentReply, AttemptInfo
from .isolation import AgentResult, run_attempt
from .llm import LlmAgent, LlmOverrideError
from .python import EntrypointError, ForbiddenEntrypointError, PythonAgent, load_entrypoint
from .simulated import SimulatedAgent, SimulationSpecError

_FACTORIES: dict[str, Callable[[], Agent]] = {
    LlmAgent.name: LlmAgent,
    PythonAgent.name: PythonAgent,
    SimulatedAgent.name: SimulatedAgent,
}
AGENT_NAMES: tuple[str, ...] = tuple(sorted(_FACTORIES))


class UnknownAgentError(ValueError):
    """An agent name that no agent answers to."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(f"unknown agent {name!r} (known agents: {', '.join(AGENT_NAMES)})")


def get_agent(name: str) -> Agent:
    """The agent called ``name``.

    :param name: one of :data:`AGENT_NAMES`.
    :raises UnknownAgentError: no such agent (the message lists the known ones).
    """
    factory = _FACTORIES.get(name) if isinstance(name, str) else None
    if factory is None:
        raise UnknownAgentError(name)
    return factory()


__all__ = [
    "AGENT_NAMES",
    "Agent",
    "AgentConfigurationError",
    "AgentInfrastructureError",
    "AgentReply",
    "AgentResult",
    "AttemptInfo",
    "EntrypointError",
    "ForbiddenEntrypointError",
    "LlmOverrideError",
    "SimulationSpecError",
    "UnknownAgentError",
    "get_agent",
    "load_entrypoint",
    "run_attempt",
]
