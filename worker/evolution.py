"""Evolution of one skill: claim it, ask its evolver for a variation, store it, start its A/B test.

Shared by the ``wre.evolve_skill`` task and the in-process API.
"""

from __future__ import annotations

import logging
from typing import Any

from db.catalog import variation_id_for
from db.memory import AbTestConflictError, PatternMemory
from worker.evolvers import EvolutionRefused, Failure, get_evolver
from worker.screening import screen_candidates, screening_wait
from worker.settings import Settings
from worker.skills import parse_variation

log = logging.getLogger(__name__)
# Recent failed runs the evolver learns from.
FAILURE_WINDOW = 20


def evolve_skill(memory: PatternMemory, settings: Settings, skill_name: str) -> dict[str, Any]:
    """Propose and test a new variation of ``skill_name``; returns what happened as a dict.

    Does nothing while the skill has a test running or within the evolution cooldown, so a burst of
    failed runs produces one variation and one test.
    """
    # Nothing an evolver can change, or screening cannot run yet (budget, recorded inputs): no claim, so no
    # cooldown either; the next failed run asks again.
    waiting = screening_wait(memory, settings, parse_variation(memory.get_production(skill_name)[1]))
    if waiting is not None:
        return {"skill_name": skill_name, "status": "skipped", "reason": waiting}
    if not memory.claim_evolution(skill_name, settings.evolve_cooldown_seconds):
        return {"skill_name": skill_name, "status": "skipped", "reason": "test running or cooling down"}
    try:
        return _evolve_claimed(memory, settings, skill_name)
    except Exception as error:
        # Give the claim back, so the task's retry after an outage is not refused as "cooling down".
        memory.record_learning_event(skill_name, "evolution_failed", description=str(error)[:500])
        raise


def _evolve_claimed(memory: PatternMemory, settings: Settings, skill_name: str) -> dict[str, Any]:
    production_id, content = memory.get_production(skill_name)
    parent = parse_variation(content)
    failures = [
        Failure(row["run_id"], row["pattern_fidelity"], row["failed_at_step"], row["error"], row["output"] or "")
        for row in memory.recent_failures(skill_name, FAILURE_WINDOW)
    ]
    try:
        evolver = get_evolver(parent.evolver)
        # The newest failure names the draw: evolving the same production version again after new failures
        # must not repeat a proposal already tested (a count of failures stops changing at the window).
        seed = f"{production_id}:{failures[0].run_id if failures else 'no failures'}"
        # Candidates are held to the parent's contract and replayed before any live traffic; only one that
        # beat its parent on the replays comes back (worker/screening.py).
        proposal = screen_candidates(memory, settings, parent, production_id, evolver, failures, seed)
    except (EvolutionRefused, ValueError) as error:
        memory.record_learning_event(
            skill_name,
            "evolution_refused",
            production_id,
            description=str(error)[:500],
            details={"evolver": parent.evolver},
        )
        log.warning("evolver %s refused for %s: %s", parent.evolver, skill_name, error)
        return {"skill_name": skill_name, "status": "refused", "reason": str(error)}
    known = memory.get_variation(variation_id_for(proposal))
    if known is not None:
        reason = f"the evolver proposed a known variation ({known.variation_id}, {known.test_status})"
        memory.record_learning_event(skill_name, "evolution_refused", production_id, description=reason)
        return {"skill_name": skill_name, "status": "refused", "reason": reason}
    variation_id = memory.store_variation(
        skill_name,
        proposal,
        parent_version=production_id,
        created_by=f"evolver:{parent.evolver}",
        learned_from=[failure.run_id for failure in failures],
    )
    try:
        test_id = memory.schedule_ab_test(skill_name, production_id, variation_id, policy=settings.ab_policy)
    except AbTestConflictError as error:
        # A test started, or production changed (a rollback, a promotion) since production was read
        # above: a test against a version production no longer runs would mean nothing.
        memory.archive_variation(variation_id)  # not left "testing" without a test
        # Every claimed evolution writes how it ended: the claim holds until then (db/abtests.py).
        memory.record_learning_event(skill_name, "evolution_refused", variation_id, description=str(error)[:500])
        return {"skill_name": skill_name, "status": "skipped", "reason": str(error)}
    memory.record_learning_event(
        skill_name,
        "variation_proposed",
        variation_id,
        description=f"{parent.evolver} evolver proposed {variation_id} from {len(failures)} failed run(s)",
        details={"test_id": test_id, "parent": production_id, "learned_from": len(failures)},
    )
    return {"skill_name": skill_name, "status": "testing", "variation_id": variation_id, "test_id": test_id}
