"""A store seeded with known runs, tests and events, for the exporter and report tests.

Everything goes through PatternMemory's public methods (the same ones the worker and beat use), so the
figures the tests expect follow from the rows below and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from db.memory import OutcomeRecord, PatternMemory
from tests.conftest import truncate_all

ALPHA, BETA, IDLE = "alpha", "beta", "idle"
# A name that needs escaping in HTML; the report must show it as text.
TRICKY = 'a<b>&"c'
SKILLS = (ALPHA, BETA, IDLE, TRICKY)


def content(skill: str, note: str = "") -> str:
    return f"---\nname: {skill}\n---\nDo it.{note}"


ACTIONS = {"treatment": "promote", "control": "archive", "inconclusive": "inconclusive"}


@dataclass(frozen=True)
class Verdict:
    winner: str | None
    guard_share: float = 0.0  # a scripted promotion starts no guard

    @property
    def action(self) -> str | None:
        return ACTIONS.get(self.winner or "")

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "statistic": 3.5, "threshold": 2.99, "lift_interval": [0.05, 0.4]}


class ScriptedPolicy:
    """A promotion policy that decides exactly the tests it is told to (the statistics are not under test)."""

    def __init__(self) -> None:
        self.winners: dict[int, str] = {}

    def __call__(self, test: Any, cohort: Any = None, **overrides: Any) -> Verdict:
        return Verdict(self.winners.get(test.test_id))


@dataclass(frozen=True)
class Seeded:
    memory: PatternMemory
    running_test: int
    promoted_test: int
    archived_test: int


def empty_store(database_url: str) -> PatternMemory:
    """An empty store whose policy decides only what a test scripts."""
    memory = PatternMemory(database_url, policy=ScriptedPolicy())
    truncate_all(memory)
    return memory


def attempt(
    memory: PatternMemory, skill: str, run: str, number: int, fidelity: float, success: bool, final: bool
) -> None:
    stored = memory.record_attempt(
        OutcomeRecord(
            run_id=f"{skill}-{run}",
            attempt=number,
            skill_name=skill,
            variation_id=memory.get_production(skill)[0],
            agent="python",
            success=success,
            execution_success=True,
            pattern_fidelity=fidelity,
            final=final,
        )
    )
    assert stored


def decide(memory: PatternMemory, test_id: int, winner: str) -> None:
    policy = memory.policy
    assert isinstance(policy, ScriptedPolicy)
    policy.winners[test_id] = winner
    [conclusion] = memory.evaluate_running_tests()
    assert conclusion.test_id == test_id and conclusion.winner == winner


def seed(memory: PatternMemory) -> Seeded:
    """alpha: 3 finished runs (one retried once, one failed after 3 attempts), 1 in flight, a running test.
    beta: 1 run, a promoted variation then rolled back, then an archived one. idle: nothing. TRICKY: 1 run.
    """
    base = {skill: memory.register_skill(skill, content(skill), default_agent="python") for skill in SKILLS}
    attempt(memory, ALPHA, "r1", 1, 1.0, True, True)
    attempt(memory, ALPHA, "r2", 1, 0.5, False, False)
    attempt(memory, ALPHA, "r2", 2, 1.0, True, True)
    for number, fidelity in enumerate((0.5, 0.5, 0.0), start=1):
        attempt(memory, ALPHA, "r3", number, fidelity, False, number == 3)
    attempt(memory, ALPHA, "r4", 1, 0.5, False, False)
    attempt(memory, BETA, "r1", 1, 0.75, True, True)
    attempt(memory, TRICKY, "r1", 1, 0.25, False, True)

    better = memory.store_variation(BETA, content(BETA, " Better."), parent_version=base[BETA])
    promoted = memory.schedule_ab_test(BETA, base[BETA], better)
    for success in (True, False):
        memory.record_ab_outcome(promoted, "control", success, 1.0 if success else 0.0)
    memory.record_ab_outcome(promoted, "treatment", True, 1.0)
    decide(memory, promoted, "treatment")
    memory.rollback_skill(BETA)
    worse = memory.store_variation(BETA, content(BETA, " Worse."), parent_version=base[BETA])
    archived = memory.schedule_ab_test(BETA, base[BETA], worse)
    memory.record_ab_outcome(archived, "treatment", False, 0.0)
    decide(memory, archived, "control")

    treatment = memory.store_variation(ALPHA, content(ALPHA, " Try harder."), parent_version=base[ALPHA])
    running = memory.schedule_ab_test(ALPHA, base[ALPHA], treatment)
    for success in (True, True, False):
        memory.record_ab_outcome(running, "control", success)
    for success in (True, True):
        memory.record_ab_outcome(running, "treatment", success)
    memory.increment_counter("evolutions_triggered", 2)
    return Seeded(memory, running, promoted, archived)
