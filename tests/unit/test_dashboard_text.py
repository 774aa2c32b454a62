"""The dashboard's words for a running test's distance to a verdict."""

from __future__ import annotations

from scheduler.policies import decide
from wre.dashboard import distance_to_verdict


def test_before_the_minimum_it_says_how_many_trials_are_missing() -> None:
    text = distance_to_verdict(decide(3, 10, 5, 10).to_dict())
    assert "needs 20 on each arm" in text


def test_after_the_minimum_it_gives_the_lift_a_verdict_needs() -> None:
    decision = decide(23, 57, 18, 43).to_dict()
    text = distance_to_verdict(decision)
    assert f"{decision['critical_lift']:.2f}" in text and f"{decision['lift']:+.2f}" in text
