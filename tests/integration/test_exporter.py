"""`wre exporter`: scrape /metrics over HTTP and check every figure against a seeded Postgres store."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from db.memory import PatternMemory
from tests.integration.store_seed import ALPHA, BETA, IDLE, TRICKY, Seeded, attempt, empty_store, seed
from tests.processes import Process, service_env, spare_port, wait_until
from wre.exporter import start

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
# The collector's fidelity window in these tests: small, so that it visibly cuts alpha's three runs to two.
WINDOW = 2


def scrape(url: str) -> Samples:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    return seed(empty_store(database_url))


@pytest.fixture
def metrics_url(seeded: Seeded) -> Iterator[str]:
    server, thread = start(seeded.memory, port=0, address="127.0.0.1", window=WINDOW)
    yield f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    thread.join(5)


def test_run_figures_per_skill(metrics_url: str, seeded: Seeded) -> None:
    samples = scrape(metrics_url)
    assert value(samples, "wre_up") == 1
    # alpha: r1 (1 attempt), r2 (2), r3 (3, failed), r4 in flight (1 attempt, not a finished run).
    expected = {
        "wre_attempts_total": {ALPHA: 7, BETA: 1, IDLE: 0, TRICKY: 1},
        "wre_runs_total": {ALPHA: 3, BETA: 1, IDLE: 0, TRICKY: 1},
        "wre_runs_failed_total": {ALPHA: 1, BETA: 0, IDLE: 0, TRICKY: 1},
        "wre_runs_retried_total": {ALPHA: 2, BETA: 0, IDLE: 0, TRICKY: 0},
        "wre_retries_total": {ALPHA: 3, BETA: 0, IDLE: 0, TRICKY: 0},
    }
    for name, per_skill in expected.items():
        for skill, count in per_skill.items():
            assert value(samples, name, skill=skill) == count, (name, skill)
    # The seed's ratio per skill: retries / attempts of finished runs, 3 / (3 runs + 3 retries).
    assert value(samples, "wre_repeated_failure_rate", skill=ALPHA) == pytest.approx(0.5)
    assert value(samples, "wre_repeated_failure_rate", skill=IDLE) == 0


def test_fidelity_covers_the_latest_window_of_finished_runs(metrics_url: str, seeded: Seeded) -> None:
    samples = scrape(metrics_url)
    # alpha's finished runs by age: 1.0 (r1), 1.0 (r2), 0.0 (r3); the window of 2 keeps r2 and r3.
    assert value(samples, "wre_fidelity_window_runs", skill=ALPHA) == 2
    assert value(samples, "wre_delivered_fidelity_median", skill=ALPHA) == pytest.approx(0.5)
    assert value(samples, "wre_delivered_fidelity_mean", skill=ALPHA) == pytest.approx(0.5)
    assert value(samples, "wre_success_rate", skill=ALPHA) == pytest.approx(0.5)
    assert value(samples, "wre_delivered_fidelity_median", skill=BETA) == pytest.approx(0.75)
    assert ("wre_delivered_fidelity_median", frozenset({("skill", IDLE)})) not in samples  # no runs, no figure
    # The same definitions, and names, as the dashboard's.
    dashboard = seeded.memory.get_skill_dashboard(ALPHA, window=WINDOW)
    assert dashboard["delivered_fidelity_now"] == value(samples, "wre_delivered_fidelity_median", skill=ALPHA)
    assert dashboard["first_attempt_fidelity_now"] == value(
        samples, "wre_first_attempt_fidelity_median", skill=ALPHA
    )
    assert dashboard["runs"] == value(samples, "wre_runs_total", skill=ALPHA)
    assert dashboard["retries"] == value(samples, "wre_retries_total", skill=ALPHA)
    assert dashboard["repeated_failure_rate"] == value(samples, "wre_repeated_failure_rate", skill=ALPHA)


def test_tests_promotions_rollbacks(metrics_url: str, seeded: Seeded) -> None:
    samples = scrape(metrics_url)
    assert value(samples, "wre_ab_tests_running", skill=ALPHA) == 1
    assert value(samples, "wre_ab_tests_running", skill=BETA) == 0
    assert value(samples, "wre_variations_tested_total", skill=ALPHA) == 1
    assert value(samples, "wre_variations_tested_total", skill=BETA) == 2
    assert value(samples, "wre_ab_test_verdicts_total", skill=BETA, winner="treatment") == 1
    assert value(samples, "wre_ab_test_verdicts_total", skill=BETA, winner="control") == 1
    test_id = str(seeded.running_test)
    for arm, trials, successes in (("control", 3, 2), ("treatment", 2, 2)):
        labels = {"test_id": test_id, "skill": ALPHA, "arm": arm}
        assert value(samples, "wre_ab_test_trials", **labels) == trials
        assert value(samples, "wre_ab_test_successes", **labels) == successes
    # Only running tests have per-arm series.
    assert not any(
        name == "wre_ab_test_trials" and ("test_id", str(seeded.promoted_test)) in labels
        for name, labels in samples
    )
    assert value(samples, "wre_promotions_total", skill=BETA) == 1
    assert value(samples, "wre_rollbacks_total", skill=BETA) == 1
    assert value(samples, "wre_variations_archived_total", skill=BETA) == 1
    assert value(samples, "wre_evolution_triggers_total") == 2
    assert value(samples, "wre_variation_win_rate") == pytest.approx(0.5)  # beta: one won, one lost


def test_every_scrape_reads_the_store(metrics_url: str, seeded: Seeded) -> None:
    samples = scrape(metrics_url)
    assert value(samples, "wre_runs_total", skill=IDLE) == 0
    runs = sum(value(samples, "wre_runs_total", skill=skill) for skill in (ALPHA, BETA, IDLE, TRICKY))
    assert (value(samples, "wre_screening_calls"), value(samples, "wre_screening_share")) == (0, 0)
    attempt(seeded.memory, IDLE, "r1", 1, 1.0, True, True)
    seeded.memory.add_to_counters({"screening_calls": 3})  # as a screening's reservation or event does
    samples = scrape(metrics_url)
    assert value(samples, "wre_runs_total", skill=IDLE) == 1
    assert value(samples, "wre_screening_calls") == 3
    assert value(samples, "wre_screening_share") == pytest.approx(3 / (runs + 1))
    assert value(samples, "wre_delivered_fidelity_median", skill=IDLE) == 1.0
    assert all(name.startswith("wre_") for name, _ in samples)


def test_unreachable_store_scrapes_as_down() -> None:
    # Port 1 on loopback refuses at once: the scrape still answers, with wre_up 0 and no store figures.
    memory = PatternMemory("postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    server, thread = start(memory, port=0, address="127.0.0.1")
    try:
        samples = scrape(f"http://127.0.0.1:{server.server_port}/metrics")
    finally:
        server.shutdown()
        thread.join(5)
        memory.dispose()
    assert value(samples, "wre_up") == 0
    assert not any(name == "wre_runs_total" for name, _ in samples)


def test_wre_exporter_command_serves_metrics(
    database_url: str, broker_url: str, seeded: Seeded, tmp_path: Path
) -> None:
    port = spare_port()
    wre = str(Path(sys.executable).with_name("wre"))
    args = [wre, "exporter", "--port", str(port), "--address", "127.0.0.1", "--window", "1"]
    process = Process(args, service_env(database_url, broker_url), tmp_path / "exporter.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def answers() -> bool:
            assert process.popen.poll() is None, process.log()
            try:
                return httpx.get(url, timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, timeout=20, what="wre exporter to answer")
        samples = scrape(url)
    finally:
        process.stop()
    assert value(samples, "wre_up") == 1
    assert value(samples, "wre_runs_total", skill=ALPHA) == 3
    assert value(samples, "wre_fidelity_window_runs", skill=ALPHA) == 1  # --window reached the collector
