"""The agent contract: what an agent is given, what it returns, and how it says "not my skill's fault".

Agents know nothing of the database: they get a skill's content and the run's context and return an output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from worker.retries import InfrastructureError
from worker.skills import Skill


class AgentInfrastructureError(InfrastructureError):
    """Raised by an agent when the failure is not the skill's (e.g. an LLM server's 429, 5xx or timeout).

    :func:`worker.agents.run_attempt` re-raises it instead of recording an attempt error, so that the retry
    layer (worker/retries.py) retries the attempt without spending a ReAct iteration.
    """


class AgentConfigurationError(Exception):
    """Raised by an agent when no attempt can succeed until an operator fixes the setup (a refused API key,
    an unknown model, a malformed ``llm:`` block).

    :func:`worker.agents.run_attempt` records it as the attempt's error and marks the result ``fatal``, so
    the run finishes at once: no ReAct retries (each would fail the same way) and no evolution (a new
    variation cannot fix a key).
    """


@dataclass(frozen=True)
class AttemptInfo:
    """Which attempt an agent is running.

    :param run_id: the run's id (stable across the run's attempts and redeliveries).
    :param attempt: the attempt number, from 1.
    :param variation_id: the id of the variation whose content the agent runs.
    """

    run_id: str
    attempt: int
    variation_id: str

    def __post_init__(self) -> None:
        if isinstance(self.attempt, bool) or not isinstance(self.attempt, int) or self.attempt < 1:
            raise ValueError(f"attempt must be an integer from 1, got {self.attempt!r}")


@dataclass(frozen=True)
class AgentReply:
    """An output together with what producing it cost, for agents that can tell (tokens, calls).

    An agent may return this instead of a bare output; :func:`worker.agents.run_attempt` unpacks it.

    :param output: the output (a string or a JSON-able value).
    :param usage: JSON-able usage figures, e.g. ``{"prompt_tokens": 120, "completion_tokens": 40}``.
    """

    output: object
    usage: dict[str, Any] | None = None


class Agent(Protocol):
    """Something that runs a skill on a context.

    ``run`` returns the output (a string or a JSON-able value, or an :class:`AgentReply`) and raises on
    failure: any exception is the attempt's error, except :class:`AgentInfrastructureError`.
    """

    name: str

    def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
        """Run ``skill`` on ``context``.

        :param skill: the variation's parsed content.
        :param context: the run's input (a ReAct retry adds ``_react_retry`` and ``_previous_attempt``).
        :param attempt: which run and attempt this is.
        """
        ...
