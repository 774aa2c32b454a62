"""The in-process API with the seed's names: the same steps as the Celery task, driven in a loop.

Used by the embedded demo, by tests and by anyone who wants a run without a broker. The seed's signatures
and defaults hold: ``max_iterations`` and ``fidelity_threshold`` default to ``WRE_REACT_MAX_ITER`` and
``WRE_REACT_FIDELITY``, and ``execute_skill`` follows ``WRE_REACT_MODE``.
"""

from __future__ import annotations

import uuid
from typing import Any

from db.memory import PatternMemory
from worker.evolution import evolve_skill
from worker.runner import AttemptOutcome, SkillRunner
from worker.settings import Settings, get_settings


class Orchestrator:
    """Runs skills in this process against a store.

    :param memory: the store (a PatternMemory on WRE_DATABASE_URL when None).
    :param settings: wre's settings (read from the environment when None).
    :param evolve: run the evolver in-process when a run ends below threshold.
    """

    def __init__(
        self, memory: PatternMemory | None = None, settings: Settings | None = None, evolve: bool = True
    ) -> None:
        self.settings = settings or get_settings()
        self.memory = memory or PatternMemory(self.settings.database_url)
        self.runner = SkillRunner(self.memory, self.settings)
        self.evolve = evolve

    def execute_skill(
        self, skill_name: str, agent: str | None, input_context: dict[str, Any], force: bool = False
    ) -> dict[str, Any]:
        """The default entry point: with ReAct when ``WRE_REACT_MODE`` is on (the default), else one attempt."""
        if self.settings.react_mode:
            return self.execute_skill_with_reasoning(skill_name, agent, input_context, force=force)
        return self._run(skill_name, agent, input_context, force, max_iterations=1, threshold=None)

    def execute_skill_with_reasoning(
        self,
        skill_name: str,
        agent: str | None,
        input_context: dict[str, Any],
        max_iterations: int | None = None,
        fidelity_threshold: float | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Up to ``max_iterations`` attempts (clamped to 1..10), each told what the previous one failed.

        :param max_iterations: None means ``WRE_REACT_MAX_ITER`` (3).
        :param fidelity_threshold: the fidelity that ends the run early; None means ``WRE_REACT_FIDELITY``
            (0.90), as the seed defines it. Pass a skill's own threshold to judge as the Celery task does.
        """
        if max_iterations is None:
            max_iterations = self.settings.react_max_iter
        if fidelity_threshold is None:
            fidelity_threshold = self.settings.react_fidelity
        return self._run(skill_name, agent, input_context, force, max_iterations, fidelity_threshold)

    def _run(
        self,
        skill_name: str,
        agent: str | None,
        input_context: dict[str, Any],
        force: bool,
        max_iterations: int,
        threshold: float | None,
    ) -> dict[str, Any]:
        run_id = uuid.uuid4().hex
        request = self.runner.validate(
            {"skill_name": skill_name, "agent": agent, "input_context": input_context, "force": force}
        )
        version = self.runner.resolve(request, run_id)
        state = self.runner.start_state(request, version, max_iterations, threshold, react_mode=True)
        outcome: AttemptOutcome = self.runner.attempt(request, version, state, run_id)
        while outcome.decision.action == "retry" and outcome.decision.next_state is not None:
            state = outcome.decision.next_state
            outcome = self.runner.attempt(request, version, state, run_id)
        if outcome.decision.evolve and self.evolve:
            evolve_skill(self.memory, self.settings, skill_name)
        return self.runner.result(request, version, run_id, outcome)
