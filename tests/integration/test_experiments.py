"""Experiments under the conditions deployments create, end to end: a real worker and a real beat.

Each scenario is one that the naive design (count a trial when its outcome is recorded; one run, one
independent trial; nothing after a promotion) gets wrong:

- slow failures of a worse treatment arrive after its fast successes: it must not be promoted;
- equal arms with users pinned to arms by key (users differ a lot): no winner;
- a promotion that degrades afterwards: the guard rolls it back;
- arms whose unit counts depart from the routing share: the test is paused, never promoted;
- the next test runs beside a guard: it promotes while the guard keeps its holdout on the confirmed version.

The outcome of every run is fixed by its context (a ``draw`` against each arm's ``rate``), so each scenario is
deterministic given the test id; the arms' entrypoints are in tests/fixtures/entrypoints.py.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult
from sqlalchemy import select

from db.memory import PatternMemory
from db.models import OUTCOMES
from scheduler.policies import decide
from tests.processes import Process, broker_app, running, service_env, start_beat, start_worker, wait_until
from worker.client import enqueue_skill
from worker.registry import register_skill_text
from worker.runner import choose_arm

pytestmark = pytest.mark.integration

SKILL = "scenario"


def _skill(entrypoint: str, body: str) -> str:
    return f"""---
name: {SKILL}
description: an A/B scenario
agent: python
entrypoint: tests.fixtures.entrypoints:{entrypoint}
threshold: 0.9
time_limit: 10
evolver: hints
steps:
  - id: answer
    description: a non-empty answer
    expect: {{key: answer}}
---
{body}
"""


def _draw(*parts: object) -> float:
    """A deterministic uniform draw in [0, 1) from its parts."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _settle(predicate: Any, seconds: float = 3.0) -> bool:
    """Poll ``predicate`` for up to ``seconds`` (a few beat rounds); whether it became true."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return bool(predicate())


def _context(draw: float, control: dict[str, float], treatment: dict[str, float]) -> dict[str, Any]:
    return {"draw": draw, "control": control, "treatment": treatment}


class Scenario:
    """A skill whose control and treatment behave as each run's context says, under a real worker and beat."""

    def __init__(self, memory: PatternMemory, app: Celery) -> None:
        self.memory, self.app = memory, app
        register_skill_text(memory, _skill("as_control", "The production version."))
        self.control, _ = memory.get_production(SKILL)
        self.treatment = memory.store_variation(SKILL, _skill("as_treatment", "The candidate."), parent_version=self.control)
        self.test_id = memory.schedule_ab_test(SKILL, self.control, self.treatment)

    def send(self, contexts: list[dict[str, Any]], keys: list[str | None] | None = None) -> list[AsyncResult]:  # type: ignore[type-arg]
        keys = keys or [None] * len(contexts)
        return [enqueue_skill(SKILL, c, assignment_key=k, app=self.app) for c, k in zip(contexts, keys, strict=True)]

    def run(self, contexts: list[dict[str, Any]], keys: list[str | None] | None = None) -> list[dict[str, Any]]:
        return [result.get(timeout=120) for result in self.send(contexts, keys)]

    def events(self, event_type: str) -> list[Any]:
        return [e for e in self.memory.get_evolution_history(SKILL) if e.event_type == event_type]

    def production(self) -> str:
        return self.memory.get_production(SKILL)[0]


@pytest.fixture
def scenario(memory: PatternMemory, database_url: str, broker_url: str) -> Scenario:
    return Scenario(memory, broker_app(database_url, broker_url))


@pytest.fixture
def services(database_url: str, broker_url: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Process]:
    overrides: dict[str, str] = getattr(request, "param", {})
    env = service_env(
        database_url,
        broker_url,
        WRE_AB_EVAL_SECONDS="1",
        WRE_REACT_MAX_ITER="1",
        **overrides,
    )
    app = broker_app(database_url, broker_url)
    # Many threads: while slow failures hold some, the fast outcomes of the others pile up ahead of them.
    worker = start_worker(app, env, tmp_path, concurrency=48)
    beat = start_beat(env, tmp_path)
    with running(beat, worker):
        # Runs start once beat is looking: the scenarios are about what it sees while outcomes come in.
        wait_until(lambda: "Sending due task" in beat.log(), timeout=60, what="beat's first evaluation")
        yield beat


def test_slow_failures_of_a_worse_treatment_do_not_buy_a_promotion(scenario: Scenario, services: Process) -> None:
    """The treatment succeeds less often (50% vs 65%), but its failures take 4 s: counted when recorded, its
    fast successes would arrive first and promote it. Counted from assignment on complete cohorts, never."""
    control, treatment = {"rate": 0.65}, {"rate": 0.5, "fail_seconds": 4.0}
    pending = []
    for wave in range(6):  # in waves, so that beat looks while fast outcomes run ahead of slow ones
        pending += scenario.send([_context(_draw("slow", wave, i), control, treatment) for i in range(50)])
        time.sleep(1.0)
    results = [result.get(timeout=120) for result in pending]
    wait_until(lambda: scenario.memory.cohorts([scenario.test_id])[scenario.test_id].pending == 0, timeout=30,
               what="every trial to complete")
    services.stop()
    test = scenario.memory.get_ab_test(scenario.test_id)
    assert test is not None and test.winner != "treatment"
    assert scenario.production() == scenario.control
    assert not scenario.events("variation_promoted")
    arms = {r["arm"] for r in results}
    assert arms <= {"control", "treatment", None} and "treatment" in arms


@pytest.mark.parametrize("services", [{"WRE_AB_MIN_TRIALS_PER_ARM": "10"}], indirect=True)
def test_equal_arms_with_clustered_users_do_not_promote(scenario: Scenario, services: Process) -> None:
    """40 users pinned to arms by key, half of them easy (95%) and half hard (5%), equal arms. Counted per run,
    the arms differ by which users they drew; counted per user (the unit of assignment), they do not."""
    users = [f"user-{u}" for u in range(40)]
    rates = {user: 0.95 if _draw("easy", user) < 0.5 else 0.05 for user in users}
    contexts, keys = [], []
    for i in range(15):
        for user in users:
            behaviour = {"rate": rates[user]}
            contexts.append(_context(_draw("clustered", user, i), behaviour, behaviour))
            keys.append(user)
    scenario.run(contexts, keys)
    wait_until(lambda: scenario.memory.cohorts([scenario.test_id])[scenario.test_id].pending == 0, timeout=30,
               what="every trial to complete")
    _settle(lambda: False)  # a few more evaluation rounds on the complete ledger
    services.stop()
    test = scenario.memory.get_ab_test(scenario.test_id)
    assert test is not None and test.winner not in ("treatment", "control"), test.decision
    assert scenario.production() == scenario.control
    # The trap is real: counted per run, the same outcomes give a verdict.
    naive = decide(test.control_successes, test.control_trials, test.treatment_successes, test.treatment_trials,
                   min_trials_per_arm=10)
    easy = {arm: sum(1 for u in users if choose_arm(scenario.test_id, u) == arm and rates[u] > 0.5)
            for arm in ("control", "treatment")}
    assert naive.winner in ("treatment", "control"), (naive.reason, easy)


@pytest.mark.parametrize(
    "services",
    [{"WRE_GUARD_HOLDOUT_SHARE": "0.3", "WRE_GUARD_MIN_UNITS": "10", "WRE_AB_MIN_TRIALS_PER_ARM": "10"}],
    indirect=True,
)
def test_a_promotion_that_degrades_is_rolled_back_by_the_guard(scenario: Scenario, services: Process) -> None:
    """The treatment is much better at first (novelty) and much worse later: promoted, then rolled back."""
    control = {"rate": 0.6}
    batch = 0
    while scenario.production() != scenario.treatment:
        batch += 1
        assert batch <= 10, "the treatment was never promoted"
        scenario.run([_context(_draw("early", batch, i), control, {"rate": 1.0}) for i in range(40)])
        _settle(lambda: scenario.production() == scenario.treatment)
    [promoted] = scenario.events("variation_promoted")
    guard_id = promoted.details["decision"]["guard_test_id"]
    guard = scenario.memory.get_ab_test(guard_id)
    assert guard is not None and guard.kind == "guard" and guard.status == "running"
    late = 0
    while scenario.production() == scenario.treatment:
        late += 1
        assert late <= 10, "the guard never rolled the regression back"
        scenario.run([_context(_draw("late", late, i), control, {"rate": 0.1}) for i in range(40)])
        _settle(lambda: scenario.production() != scenario.treatment)
    services.stop()
    [rollback] = scenario.events("guard_rollback")
    assert rollback.details["test_id"] == guard_id and rollback.details["decision"]["reason"]
    assert scenario.production() == scenario.control
    assert scenario.memory.get_variation(scenario.treatment).test_status == "archived"  # type: ignore[union-attr]
    reasons = [change.reason for change in scenario.memory.production_history(SKILL)]
    assert reasons == ["registration", "promotion", "guard_rollback"]


def _promote(scenario: Scenario, candidate: str, behaviour: dict[str, dict[str, float]], label: str) -> None:
    """Send batches of runs whose arms behave as ``behaviour`` says until beat promotes ``candidate``."""
    batch = 0
    while scenario.production() != candidate:
        batch += 1
        assert batch <= 10, f"{candidate} was never promoted"
        scenario.run([{"draw": _draw(label, batch, i), **behaviour} for i in range(40)])
        _settle(lambda: scenario.production() == candidate)


@pytest.mark.parametrize(
    "services",
    [{"WRE_GUARD_HOLDOUT_SHARE": "0.3", "WRE_GUARD_MIN_UNITS": "10", "WRE_AB_MIN_TRIALS_PER_ARM": "10"}],
    indirect=True,
)
def test_the_next_test_runs_beside_the_guard(scenario: Scenario, services: Process) -> None:
    """Promoted once, the skill is guarded; a third version is tested beside the guard (against the new
    production, inside the guard's share) and promoted: the guard is superseded and the next one keeps the holdout
    on the first version, the last one confirmed."""
    behaviour = {"control": {"rate": 0.2}, "treatment": {"rate": 0.6}, "third": {"rate": 1.0}}
    _promote(scenario, scenario.treatment, behaviour, "first")
    first_guard, _ = scenario.memory.running_routes(SKILL)
    assert first_guard is not None and first_guard.control_version == scenario.control
    third = scenario.memory.store_variation(SKILL, _skill("as_third", "The third."), parent_version=scenario.treatment)
    test_id = scenario.memory.schedule_ab_test(SKILL, scenario.treatment, third)
    started = scenario.memory.get_ab_test(test_id).started_at  # type: ignore[union-attr]
    _promote(scenario, third, behaviour, "beside")
    services.stop()
    superseded = scenario.memory.get_ab_test(first_guard.test_id)
    assert superseded is not None and superseded.status == "stopped"
    guard, test = scenario.memory.running_routes(SKILL)
    assert test is None and guard is not None and guard.parent_test_id == test_id
    assert (guard.control_version, guard.treatment_version) == (scenario.control, third)
    # While the test ran, the first guard's holdout kept running the first version beside it.
    with scenario.memory.transaction() as conn:
        served = {
            row.variation_id
            for row in conn.execute(
                select(OUTCOMES.c.variation_id).where(
                    OUTCOMES.c.test_id == first_guard.test_id, OUTCOMES.c.created_at > started
                )
            )
        }
    assert scenario.control in served
    assert [c.reason for c in scenario.memory.production_history(SKILL)] == ["registration", "promotion", "promotion"]


def test_a_sample_ratio_mismatch_pauses_the_test(scenario: Scenario, services: Process) -> None:
    """60 users where a fair router would split 30/30 arrive 50/10: the routing is broken somewhere (here: the
    producer picks its users by arm). The test is paused, flagged and never promoted, although the treatment
    looks far better."""
    control_users = [k for k in (f"c-{i}" for i in range(400)) if choose_arm(scenario.test_id, k) == "control"][:50]
    treatment_users = [k for k in (f"t-{i}" for i in range(400)) if choose_arm(scenario.test_id, k) == "treatment"][:10]
    keys: list[str | None] = [*control_users, *treatment_users]
    scenario.run([_context(0.5, {"rate": 0.2}, {"rate": 1.0}) for _ in keys], keys)
    wait_until(lambda: scenario.memory.get_ab_test(scenario.test_id).status == "paused",  # type: ignore[union-attr]
               timeout=20, what="beat to pause the test")
    after = scenario.run([_context(0.5, {"rate": 0.2}, {"rate": 1.0})], ["late-user"])
    services.stop()
    test = scenario.memory.get_ab_test(scenario.test_id)
    assert test is not None and test.health is not None and test.health["srm"]["mismatch"] is True
    [paused] = scenario.events("ab_test_paused")
    assert "sample-ratio mismatch" in paused.description
    assert scenario.production() == scenario.control and not scenario.events("variation_promoted")
    assert after[0]["test_id"] is None  # a paused test routes nothing
