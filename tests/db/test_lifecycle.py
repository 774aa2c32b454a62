"""Production's lifecycle on real Postgres: scheduling invariants, guards, pauses, lineage and rollback."""

from __future__ import annotations

import pytest
from rich.console import Console

from db.memory import AbTestConflictError, PatternMemory
from scheduler.evaluation import PromotionPolicy, run_evaluation_round
from tests.ledger import fill_ledger
from worker.settings import Settings
from worker.skills import check_variation
from wre.dashboard import build_dashboard, dashboard_data
from wre.exporter import StoreCollector


def _content(body: str, name: str = "s") -> str:
    return (
        f"---\nname: {name}\ndescription: d\nagent: python\nentrypoint: skills.examples:extract_contact\n"
        "steps:\n  - id: answer\n    description: an answer\n    expect: {key: answer}\n"
        f"---\n{body}\n"
    )


def _skill(memory: PatternMemory) -> tuple[str, str]:
    base = memory.register_skill("s", _content("base"), default_agent="python")
    treatment = memory.store_variation("s", _content("better"), parent_version=base)
    return base, treatment


def _store(database_url: str, **settings: object) -> PatternMemory:
    policy = PromotionPolicy(Settings(database_url=database_url, **settings))  # type: ignore[arg-type]
    return PatternMemory(database_url, policy=policy, variation_check=check_variation)


def _events(memory: PatternMemory, event_type: str) -> list[object]:
    return [e for e in memory.get_evolution_history("s") if e.event_type == event_type]


def _promoted(store: PatternMemory) -> tuple[str, str, int]:
    """A skill whose treatment was just promoted by a test: (previous production, new production, guard id)."""
    base, treatment = _skill(store)
    test_id = store.schedule_ab_test("s", base, treatment)
    fill_ledger(store, test_id, "control", 20, 100)
    fill_ledger(store, test_id, "treatment", 90, 100)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "promote" and store.get_production("s")[0] == treatment
    guard = store.running_test("s")
    assert guard is not None and guard.kind == "guard" and guard.parent_test_id == test_id
    return base, treatment, guard.test_id


def _test_beside_the_guard(store: PatternMemory, production: str) -> tuple[str, int]:
    """A test of a third version against ``production``, beside the open guard, whose ledger says the third
    version wins: (third version, test id)."""
    third = store.store_variation("s", _content("third"), parent_version=production)
    test_id = store.schedule_ab_test("s", production, third)
    fill_ledger(store, test_id, "control", 20, 100)
    fill_ledger(store, test_id, "treatment", 90, 100)
    return third, test_id


def test_a_claim_holds_until_its_evolution_ends_or_its_lease_runs_out(memory: PatternMemory) -> None:
    _skill(memory)
    assert memory.claim_evolution("s", cooldown_seconds=0)
    # No cooldown, but the first evolution has not said how it ended: a second would screen on the same budget.
    assert not memory.claim_evolution("s", cooldown_seconds=0)
    memory.record_learning_event("s", "evolution_refused", None, description="screening: none beat the parent")
    assert memory.claim_evolution("s", cooldown_seconds=0)
    # A worker killed mid-evolution writes no end: the claim lapses after the lease.
    assert not memory.claim_evolution("s", cooldown_seconds=0, lease_seconds=3600)
    assert memory.claim_evolution("s", cooldown_seconds=0, lease_seconds=0)
    # An evolution that failed (an outage) gives its claim back at once.
    memory.record_learning_event("s", "evolution_failed", None, description="database went away")
    assert memory.claim_evolution("s", cooldown_seconds=0)


def test_a_test_is_scheduled_against_production_only(memory: PatternMemory) -> None:
    base, treatment = _skill(memory)
    other = memory.store_variation("s", _content("other"), parent_version=base)
    memory.promote_variation(other)
    # An evolution that read production before it changed must not test against the old version.
    with pytest.raises(AbTestConflictError, match="production changed meanwhile"):
        memory.schedule_ab_test("s", base, treatment)
    assert memory.list_ab_tests() == []


def test_a_treatment_that_does_not_parse_as_the_skill_is_refused(memory: PatternMemory, database_url: str) -> None:
    store = _store(database_url)
    base, _ = _skill(store)
    broken = store.store_variation("s", "---\nname: s\nsteps: [oops\n---\nx", parent_version=base)
    renamed = store.store_variation("s", _content("x", name="other"), parent_version=base)
    with pytest.raises(ValueError):
        store.schedule_ab_test("s", base, broken)
    with pytest.raises(ValueError, match="not 's'"):
        store.schedule_ab_test("s", base, renamed)
    assert store.list_ab_tests() == []


def test_a_promotion_starts_a_guard_beside_which_the_next_test_may_run(
    memory: PatternMemory, database_url: str
) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    base, treatment, guard_id = _promoted(store)
    guard = store.get_ab_test(guard_id)
    assert guard is not None and guard.status == "running"
    assert (guard.control_version, guard.treatment_version) == (base, treatment)
    assert guard.treatment_share == pytest.approx(0.8)
    # The guard holds its own slot, not the skill's: the next candidate is tested against the new production.
    assert store.claim_evolution("s", cooldown_seconds=0)
    with pytest.raises(AbTestConflictError, match="production changed meanwhile"):
        store.schedule_ab_test("s", base, store.store_variation("s", _content("against the holdout")))
    test_id = store.schedule_ab_test("s", treatment, store.store_variation("s", _content("third")))
    assert store.running_routes("s") == (store.get_ab_test(guard_id), store.get_ab_test(test_id))
    assert not store.claim_evolution("s", cooldown_seconds=0)  # but one test at a time
    with pytest.raises(AbTestConflictError, match="already has an open A/B test"):
        store.schedule_ab_test("s", treatment, store.store_variation("s", _content("fourth")))


def test_a_promotion_beside_a_guard_keeps_the_holdout_on_the_last_confirmed_version(
    memory: PatternMemory, database_url: str
) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    base, second, first_guard = _promoted(store)
    third, test_id = _test_beside_the_guard(store, second)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "promote" and store.get_production("s")[0] == third
    old = store.get_ab_test(first_guard)
    assert old is not None and old.status == "stopped"
    guard, test = store.running_routes("s")
    assert test is None and guard is not None and guard.parent_test_id == test_id
    # The chain base -> second -> third is watched as a whole: the holdout still runs base.
    assert (guard.control_version, guard.treatment_version) == (base, third)
    [stopped] = _events(store, "ab_test_stopped")
    assert "superseded" in stopped.description  # type: ignore[attr-defined]


def test_a_guard_rollback_stops_the_test_beside_it(memory: PatternMemory, database_url: str) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    base, second, guard_id = _promoted(store)
    third, test_id = _test_beside_the_guard(store, second)  # it would promote, but the guard goes first
    fill_ledger(store, guard_id, "control", 90, 100)
    fill_ledger(store, guard_id, "treatment", 100, 400)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "rollback" and store.get_production("s")[0] == base
    test = store.get_ab_test(test_id)
    assert test is not None and test.status == "stopped"
    assert store.get_variation(third).test_status == "archived"  # type: ignore[union-attr]
    assert store.running_routes("s") == (None, None)


def test_the_guard_rolls_a_regression_back(memory: PatternMemory, database_url: str) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    base, treatment, guard_id = _promoted(store)
    fill_ledger(store, guard_id, "control", 90, 100)  # the holdout: the previous version
    fill_ledger(store, guard_id, "treatment", 100, 400)  # the new production, now far worse
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "rollback"
    assert store.get_production("s")[0] == base
    assert store.get_variation(treatment).test_status == "archived"  # type: ignore[union-attr]
    [event] = _events(store, "guard_rollback")
    assert event.details["decision"]["reason"]  # type: ignore[attr-defined]
    assert [c.reason for c in store.production_history("s")] == ["registration", "promotion", "guard_rollback"]


def test_a_clean_guard_confirms_the_promotion(memory: PatternMemory, database_url: str) -> None:
    store = _store(database_url, guard_holdout_share=0.2, guard_units=200)
    _, treatment, guard_id = _promoted(store)
    fill_ledger(store, guard_id, "control", 25, 50)
    fill_ledger(store, guard_id, "treatment", 180, 200)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "confirm" and store.get_production("s")[0] == treatment
    assert len(_events(store, "promotion_confirmed")) == 1
    assert store.claim_evolution("s", cooldown_seconds=0)


def test_a_sample_ratio_mismatch_pauses_and_holds_the_slot(memory: PatternMemory) -> None:
    base, treatment = _skill(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    fill_ledger(memory, test_id, "control", 10, 300)
    fill_ledger(memory, test_id, "treatment", 150, 150)  # far better, and far too few units
    [conclusion] = run_evaluation_round(memory)
    assert conclusion.action == "pause"
    test = memory.get_ab_test(test_id)
    assert test is not None and test.status == "paused" and test.health is not None
    assert test.health["srm"]["mismatch"] is True and test.health["srm"]["p_value"] < 0.001
    assert memory.running_test("s") is None  # a paused test routes nothing
    assert memory.get_production("s")[0] == base
    assert run_evaluation_round(memory) == []  # and decides nothing
    with pytest.raises(AbTestConflictError):
        memory.schedule_ab_test("s", base, memory.store_variation("s", _content("third")))
    # Flagged where operators look: the dashboard, `wre ab show` (the record's health), the exporter.
    assert [t["test_id"] for t in dashboard_data(memory)["paused_tests"]] == [test_id]
    screen = Console(width=200, record=True)
    screen.print(build_dashboard(memory))
    text = screen.export_text()
    assert "PAUSED" in text and "sample-ratio mismatch" in text
    paused = {
        sample.labels["skill"]: sample.value
        for metric in StoreCollector(memory).collect()
        if metric.name == "wre_ab_tests_paused"
        for sample in metric.samples
    }
    assert paused == {"s": 1}
    memory.stop_ab_test(test_id)
    assert memory.get_ab_test(test_id).status == "stopped"  # type: ignore[union-attr]


def test_a_null_test_closes_early_for_futility(memory: PatternMemory) -> None:
    base, treatment = _skill(memory)
    test_id = memory.schedule_ab_test("s", base, treatment)
    fill_ledger(memory, test_id, "control", 560, 800)
    fill_ledger(memory, test_id, "treatment", 560, 800)
    [conclusion] = run_evaluation_round(memory)
    assert conclusion.action == "inconclusive" and conclusion.decision["stop"] == "futility"
    assert memory.get_variation(treatment).test_status == "archived"  # type: ignore[union-attr]


def test_rollback_goes_to_any_earlier_version_and_checks_what_the_operator_saw(memory: PatternMemory) -> None:
    base, second = _skill(memory)
    memory.promote_variation(second)
    third = memory.store_variation("s", _content("third"), parent_version=second)
    memory.promote_variation(third)
    with pytest.raises(ValueError, match="changed since you looked"):
        memory.rollback_skill("s", expected_current=second)
    assert memory.get_production("s")[0] == third
    with pytest.raises(ValueError, match="never production"):
        memory.rollback_skill("s", to=memory.store_variation("s", _content("never")), expected_current=third)
    assert memory.rollback_skill("s", to=base, expected_current=third) == (third, base)
    assert memory.get_production("s")[0] == base
    # Rolling back again does not bring back what was rolled back for cause.
    assert memory.rollback_skill("s") == (base, second)
    history = memory.production_history("s")
    assert [(c.reason, c.variation_id) for c in history] == [
        ("registration", base),
        ("manual", second),
        ("manual", third),
        ("rollback", base),
        ("rollback", second),
    ]


def test_a_version_promoted_again_after_a_rollback_is_a_rollback_target_again(memory: PatternMemory) -> None:
    base, second = _skill(memory)
    memory.promote_variation(second)
    memory.rollback_skill("s")  # second rolled back for cause
    memory.promote_variation(second)  # and promoted again later
    third = memory.store_variation("s", _content("third"), parent_version=second)
    memory.promote_variation(third)
    assert memory.rollback_skill("s", expected_current=third) == (third, second)


def test_a_paused_guard_holds_evolution_and_scheduling(memory: PatternMemory, database_url: str) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    _, second, guard_id = _promoted(store)
    fill_ledger(store, guard_id, "control", 50, 100)  # the holdout: 100 units where 20 of 200 were due
    fill_ledger(store, guard_id, "treatment", 50, 100)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "pause"
    assert not store.claim_evolution("s", cooldown_seconds=0)
    with pytest.raises(AbTestConflictError, match="paused"):
        store.schedule_ab_test("s", second, store.store_variation("s", _content("third")))
    store.stop_ab_test(guard_id)  # the operator acts
    assert store.claim_evolution("s", cooldown_seconds=0)


def test_a_guard_rollback_of_a_chain_leaves_its_links_out_of_later_rollbacks(
    memory: PatternMemory, database_url: str
) -> None:
    store = _store(database_url, guard_holdout_share=0.2)
    base, second, _ = _promoted(store)
    _test_beside_the_guard(store, second)
    run_evaluation_round(store)  # third promoted beside the guard; the new guard's holdout is still base
    guard, _ = store.running_routes("s")
    assert guard is not None and guard.control_version == base
    fill_ledger(store, guard.test_id, "control", 90, 100)
    fill_ledger(store, guard.test_id, "treatment", 100, 400)
    [conclusion] = run_evaluation_round(store)
    assert conclusion.action == "rollback" and store.get_production("s")[0] == base
    # A later rollback by hand must not bring back `second`, a link of the chain the guard went past.
    with pytest.raises(ValueError, match="no previous production version"):
        store.rollback_skill("s")


def test_a_test_under_a_policy_the_evaluator_does_not_know_is_refused(memory: PatternMemory) -> None:
    # It would hold the skill's test slot for ever: the evaluator refuses an unknown policy at every round.
    base, treatment = _skill(memory)
    before = memory.get_variation(treatment)
    with pytest.raises(ValueError, match="unknown promotion policy 'bayes'; known: sequential, margin"):
        memory.schedule_ab_test("s", base, treatment, policy="bayes")
    assert memory.running_test("s") is None
    assert memory.get_variation(treatment) == before
    test_id = memory.schedule_ab_test("s", base, treatment, policy="margin")
    test = memory.get_ab_test(test_id)
    assert test is not None and test.policy == "margin"
