"""`wre exporter`: Prometheus metrics read from the store on every scrape.

A custom collector, not process-global counters: every scrape asks the database, so any number of exporters
(or a restarted one) report the same figures, and nothing drifts from what the workers recorded. Counts
come out as Prometheus counters (monotonic as long as outcomes are not deleted), rates and fidelities as
gauges. All names start with ``wre_``; the docs/OPERATIONS.md table says what each one means.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy.exc import SQLAlchemyError

from db.figures import (
    ARCHIVED_EVENT,
    DEFAULT_FIDELITY_WINDOW,
    PROMOTED_EVENT,
    ROLLBACK_EVENT,
    event_counts,
    recent_fidelity,
    run_figures,
)
from db.memory import PatternMemory
from db.screening import fleet_screening_spent

log = logging.getLogger(__name__)

DEFAULT_PORT = 9808
# Loopback unless told otherwise: the metrics name skills and tests; compose passes --address 0.0.0.0.
DEFAULT_ADDRESS = "127.0.0.1"
PREFIX = "wre"
EVOLUTIONS_COUNTER = "evolutions_triggered"
SKILL = ["skill"]
ARM_LABELS = ["test_id", "skill", "arm"]


class StoreCollector(Collector):
    """Collects wre's metrics from a PatternMemory (any dialect) at scrape time; ``window``: finished runs
    per skill behind the fidelity and success-rate gauges."""

    def __init__(self, memory: PatternMemory, window: int = DEFAULT_FIDELITY_WINDOW) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.memory = memory
        self.window = window

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        try:
            metrics = list(self._store_metrics())
            up = 1.0
        except SQLAlchemyError as error:
            # An unreachable database must show as wre_up 0, not as a failed scrape with no series at all.
            log.warning("wre exporter: cannot read the store: %s", error)
            metrics, up = [], 0.0
        yield from metrics
        yield GaugeMetricFamily(f"{PREFIX}_up", "1 if the store answered this scrape, else 0.", value=up)
        yield GaugeMetricFamily(f"{PREFIX}_scrape_duration_seconds", "Seconds this scrape spent reading the store.",
                                value=time.perf_counter() - started)

    def _store_metrics(self) -> Iterator[Metric]:
        yield from self._run_metrics()
        yield from self._fidelity_metrics()
        yield from self._test_metrics()
        yield from self._event_metrics()
        yield CounterMetricFamily(
            f"{PREFIX}_evolution_triggers",
            "Evolution triggers: runs that exhausted their attempts (a claim and cooldown make fewer evolutions).",
            self.memory.get_counter(EVOLUTIONS_COUNTER),
        )
        calls, runs = fleet_screening_spent(self.memory)
        yield GaugeMetricFamily(
            f"{PREFIX}_screening_calls",
            "Agent calls spent on screening replays, every skill, those reserved by screenings under way "
            "included (a gauge: a screening gives back what it did not use).",
            value=calls,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_screening_share",
            "Screening calls / finished live runs of every skill (the budget keeps it within WRE_SCREEN_BUDGET_SHARE).",
            value=calls / runs if runs else 0.0,
        )
        overall = self.memory.get_telemetry_dashboard(window=self.window)
        yield GaugeMetricFamily(
            f"{PREFIX}_variation_win_rate",
            "Promoted / (promoted + archived) tests; an inconclusive test archives its variation.",
            value=overall["variation_win_rate"],
        )
        yield CounterMetricFamily(
            f"{PREFIX}_ab_tests_inconclusive",
            "Tests closed inconclusive (counted as archived in the win rate).",
            overall["variations_inconclusive"],
        )

    def _run_metrics(self) -> Iterator[Metric]:
        families = {
            "attempts": _counter("attempts", "Attempts recorded, runs still in flight included."),
            "runs": _counter("runs", "Finished runs (their final attempts)."),
            "failed_runs": _counter("runs_failed", "Finished runs whose last attempt still failed."),
            "runs_retried": _counter("runs_retried", "Finished runs that needed more than one attempt."),
            "retries": _counter("retries", "ReAct retries: attempts after the first, over finished runs."),
        }
        rate = GaugeMetricFamily(
            f"{PREFIX}_repeated_failure_rate",
            "Retries / attempts of finished runs (the seed's react_retry_count / total_executions).",
            labels=SKILL,
        )
        for name, figures in run_figures(self.memory).items():
            for field, family in families.items():
                family.add_metric([name], getattr(figures, field))
            rate.add_metric([name], figures.repeated_failure_rate)
        yield from families.values()
        yield rate

    def _fidelity_metrics(self) -> Iterator[Metric]:
        first = f"the latest {self.window} runs' first attempts"
        delivered = f"the latest {self.window} finished runs' final attempts (after ReAct retries)"
        first_median = _gauge("first_attempt_fidelity_median", f"Median first-attempt fidelity of {first}.")
        median = _gauge("delivered_fidelity_median", f"Median delivered fidelity of {delivered}.")
        mean = _gauge("delivered_fidelity_mean", f"Mean delivered fidelity of {delivered}.")
        success = _gauge("success_rate", f"Share of {delivered} that succeeded.")
        covered = _gauge("fidelity_window_runs", "Finished runs behind the delivered fidelity gauges (at most the window).")
        for name, figures in recent_fidelity(self.memory, self.window).items():
            median.add_metric([name], figures.median)
            mean.add_metric([name], figures.mean)
            success.add_metric([name], figures.success_rate)
            covered.add_metric([name], figures.runs)
        for name, figures in recent_fidelity(self.memory, self.window, first_attempts=True).items():
            first_median.add_metric([name], figures.median)
        yield from (first_median, median, mean, success, covered)

    def _test_metrics(self) -> Iterator[Metric]:
        running = _gauge("ab_tests_running", "A/B tests running now (at most one per skill; guards apart).")
        guards = _gauge("guards_running", "Guards watching a promotion now (new production vs a holdout).")
        paused = _gauge("ab_tests_paused", "Tests paused by a health check (sample-ratio mismatch): they route nothing.")
        tested = _counter("variations_tested", "Variations put under an A/B test.")
        verdicts = CounterMetricFamily(
            f"{PREFIX}_ab_test_verdicts",
            "A/B tests decided, by winner (treatment, control, inconclusive).",
            labels=["skill", "winner"],
        )
        trials = GaugeMetricFamily(
            f"{PREFIX}_ab_test_trials", "Trials of a running test's arm.", labels=ARM_LABELS
        )
        wins = GaugeMetricFamily(
            f"{PREFIX}_ab_test_successes", "Successful trials of a running test's arm.", labels=ARM_LABELS
        )
        # Every skill with a test is listed under each figure, with 0 where it has none.
        counts: Counter[tuple[str, str]] = Counter()
        winners: Counter[tuple[str, str]] = Counter()
        treatments: dict[str, set[str]] = {}
        for test in self.memory.list_ab_tests():
            skill = test.skill_name
            treatments.setdefault(skill, set())
            counts[skill, "paused"] += test.status == "paused"
            if test.is_guard:
                counts[skill, "guards"] += test.status == "running"
                continue
            treatments[skill].add(test.treatment_version)
            if test.winner is not None:
                winners[skill, test.winner] += 1
            if test.status != "running":
                continue
            counts[skill, "running"] += 1
            for arm in ("control", "treatment"):
                labels = [str(test.test_id), skill, arm]
                trials.add_metric(labels, getattr(test, f"{arm}_trials"))
                wins.add_metric(labels, getattr(test, f"{arm}_successes"))
        for skill in sorted(treatments):
            running.add_metric([skill], counts[skill, "running"])
            guards.add_metric([skill], counts[skill, "guards"])
            paused.add_metric([skill], counts[skill, "paused"])
            tested.add_metric([skill], len(treatments[skill]))
        for (skill, winner), count in sorted(winners.items()):
            verdicts.add_metric([skill, winner], count)
        yield from (running, guards, paused, tested, verdicts, trials, wins)

    def _event_metrics(self) -> Iterator[Metric]:
        families = {
            PROMOTED_EVENT: _counter("promotions", "Variations promoted to production (by a test or by hand)."),
            ROLLBACK_EVENT: _counter("rollbacks", "Rollbacks to the previous production version."),
            ARCHIVED_EVENT: _counter("variations_archived", "Variations archived (lost a test, or archived by hand)."),
        }
        for (skill, kind), count in sorted(event_counts(self.memory).items()):
            families[kind].add_metric([skill], count)
        yield from families.values()


def _counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", documentation, labels=SKILL)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", documentation, labels=SKILL)


def start(memory: PatternMemory, port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS,
          window: int = DEFAULT_FIDELITY_WINDOW) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``/metrics`` on ``address:port`` (0 picks a free port: ``server.server_port``) from a daemon
    thread, with only wre's collector (no process or platform metrics of the exporter itself)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(memory, window))
    return start_http_server(port, addr=address, registry=registry)
