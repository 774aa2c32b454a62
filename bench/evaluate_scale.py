"""Evaluation at scale: one round of ``wre.evaluate_ab_tests`` over 10,000 running tests and 1,000,000 outcomes.

The store is bulk-loaded with COPY: 10,000 skills, each with a control and a treatment variation and one running
A/B test at 50 trials per arm in its trial ledger (1,000,000 ledger rows: a round reads every running test's
ledger), and 100 recorded outcomes per test (1,000,000 rows). One test in 20 has a clear
verdict (half promote, half archive); the others are undecided. Rounds alternate 1,000 running tests (the other
9,000 set aside) and 10,000, the store restored between rounds. Each round is timed and its SQL counted:

- the round with verdicts (what beat does when results arrive), then at once a round with none left;
- bars: the queries of a round do not grow with the number of tests (a round without verdicts makes the same
  queries at 1,000 and 10,000 tests; a verdict costs the same queries at both), and the time per test at
  10,000 is at most 1.2× the time per test at 1,000.

    python -m bench.evaluate_scale                          # 10,000 tests, 1,000,000 outcomes (~3 minutes)
    python -m bench.evaluate_scale --tests 500 --small 50   # a quick look
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from bench.common import Report, base_parser
from db.engine import normalize_url
from db.migrate import upgrade
from scheduler.evaluation import promotion_memory, run_evaluation_round
from tests.conftest import create_database, drop_database
from worker.settings import Settings

BAR_TIME_RATIO = 1.2
TRIALS_PER_ARM = 50
DECIDED_EVERY = 20  # one test in 20 has a verdict: alternately a clear winner and a clear loser
SNAPSHOT_TABLES = {
    "ab_test_assignments": ("test_id", ("status", "winner", "decided_at", "completed_at", "decision")),
    "skills": ("name", ("production_variation_id", "previous_variation_id", "updated_at")),
    "skill_variations": ("variation_id", ("test_status", "promoted")),
}


def _arms(index: int) -> tuple[int, int]:
    """(control successes, treatment successes) of test ``index``, out of TRIALS_PER_ARM each."""
    if index % DECIDED_EVERY == 0:
        return (20, 45) if index % (2 * DECIDED_EVERY) == 0 else (40, 10)
    return 30, 30 + index % 4  # equal or nearly: undecided at 50 trials per arm


def _copy(conn: psycopg.Connection[Any], table: str, columns: str, rows: Iterator[tuple[Any, ...]]) -> None:
    with conn.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def load(url: str, tests: int, outcomes_per_test: int) -> None:
    """Bulk-load skills, variations, running tests and outcomes with COPY (one transaction)."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    ids = range(1, tests + 1)
    with psycopg.connect(dsn) as conn:
        _copy(
            conn,
            "skills",
            "name, description, default_agent, threshold, production_variation_id, created_at, updated_at",
            ((f"s{i:05d}", "", "python", None, f"c{i:05d}", "now", "now") for i in ids),
        )
        _copy(
            conn,
            "skill_variations",
            "variation_id, skill_name, parent_version, variation_content, created_at, created_by, test_status, "
            "promoted, learned_from",
            (
                row
                for i in ids
                for row in (
                    (f"c{i:05d}", f"s{i:05d}", None, f"control {i}", "now", "registration", "baseline", True, "[]"),
                    (f"t{i:05d}", f"s{i:05d}", f"c{i:05d}", f"treatment {i}", "now", "evolver:hints", "testing", False, "[]"),
                )
            ),
        )
        _copy(
            conn,
            "ab_test_assignments",
            "test_id, skill_name, control_version, treatment_version, sample_size_target, control_trials, "
            "control_successes, treatment_trials, treatment_successes, control_fidelity_sum, "
            "treatment_fidelity_sum, status, policy, started_at",
            (
                (i, f"s{i:05d}", f"c{i:05d}", f"t{i:05d}", 20, TRIALS_PER_ARM, control, TRIALS_PER_ARM, treatment,
                 float(control), float(treatment), "running", "sequential", "now")
                for i in ids
                for control, treatment in [_arms(i)]
            ),
        )
        _copy(
            conn,
            "skill_outcomes",
            "run_id, attempt, final, skill_name, variation_id, agent, test_id, arm, success, execution_success, "
            "pattern_fidelity, step_results, input_context, execution_time_ms, created_at",
            _outcomes(tests, outcomes_per_test),
        )
        _copy(
            conn,
            "ab_trials",
            "test_id, run_id, unit_key, arm, assigned_at, deadline, completed_at, success, fidelity",
            _trials(tests),
        )
        conn.execute("SELECT setval('ab_test_assignments_test_id_seq', %s)", (tests,))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _trials(tests: int) -> Iterator[tuple[Any, ...]]:
    """The ledger: TRIALS_PER_ARM completed single-run units per arm of every test (what verdicts read),
    assigned an hour ago (a verdict does not count what was assigned in its last few seconds)."""
    at = datetime.now(UTC) - timedelta(hours=1)
    for i in range(1, tests + 1):
        for arm, successes in zip(("control", "treatment"), _arms(i), strict=True):
            for j in range(TRIALS_PER_ARM):
                run_id = f"t{i}-{arm[0]}{j}"
                passed = j < successes
                yield (i, run_id, f"run:{run_id}", arm, at, at, at, passed, 1.0 if passed else 0.0)


def _outcomes(tests: int, per_test: int) -> Iterator[tuple[Any, ...]]:
    for i in range(1, tests + 1):
        control, treatment = _arms(i)
        for j in range(per_test):
            arm = "control" if j % 2 == 0 else "treatment"
            passed = j // 2 < (control if arm == "control" else treatment)
            yield (f"r{i}-{j}", 1, True, f"s{i:05d}", f"{arm[0]}{i:05d}", "python", i, arm, passed, True,
                   1.0 if passed else 0.5, "[]", "{}", 1.0, "now")


@dataclass
class Sql:
    """Counts what one engine sends: statements, and pings of idle pooled connections."""

    engine: Engine
    counts: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        event.listen(self.engine, "before_cursor_execute", lambda *_: self.counts.update(["statements"]))
        original = self.engine.dialect.do_ping

        def ping(dbapi_connection: Any) -> bool:
            self.counts.update(["pings"])
            return bool(original(dbapi_connection))

        self.engine.dialect.do_ping = ping  # type: ignore[method-assign]

    def take(self) -> Counter[str]:
        found, self.counts = self.counts, Counter()
        return found


@dataclass
class Round:
    running: int
    seconds: float
    statements: int
    pings: int
    verdicts: int


class Store:
    """The loaded store: a snapshot of what a round changes, restored before each round."""

    def __init__(self, url: str) -> None:
        self.admin = create_engine(normalize_url(url), isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            for table, (key, columns) in SNAPSHOT_TABLES.items():
                conn.execute(
                    text(f"CREATE TABLE bench_{table} AS SELECT {key}, {', '.join(columns)} FROM {table}")  # noqa: S608 - names are constants
                )
            self.last_event = conn.execute(
                text("SELECT coalesce(max(event_id), 0) FROM learning_events")
            ).scalar_one()

    def prepare(self, running: int) -> None:
        """Restore the loaded state, then keep only tests 1..``running`` running; vacuum what changed."""
        with self.admin.connect() as conn:
            # What a round added: the guards its promotions started, the lineage of production.
            conn.execute(text("DELETE FROM ab_test_assignments WHERE kind = 'guard'"))
            conn.execute(text("DELETE FROM production_changes"))
            for table, (key, columns) in SNAPSHOT_TABLES.items():
                assignments = ", ".join(f"{column} = s.{column}" for column in columns)
                changed = " OR ".join(f"t.{column} IS DISTINCT FROM s.{column}" for column in columns)
                conn.execute(
                    text(
                        f"UPDATE {table} t SET {assignments} FROM bench_{table} s WHERE t.{key} = s.{key} AND ({changed})"  # noqa: S608 - names are constants
                    )
                )
            conn.execute(
                text("DELETE FROM learning_events WHERE event_id > :last"), {"last": self.last_event}
            )
            conn.execute(
                text("UPDATE ab_test_assignments SET status = 'stopped' WHERE test_id > :running"),
                {"running": running},
            )
            for table in (*SNAPSHOT_TABLES, "learning_events", "production_changes"):
                conn.execute(text(f"VACUUM ANALYZE {table}"))

    def dispose(self) -> None:
        self.admin.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "One evaluation round over 1,000 and 10,000 running A/B tests and 1,000,000 outcomes."
    )
    parser.add_argument(
        "--tests", type=int, default=10_000, help="running tests at full size (default 10000)"
    )
    parser.add_argument("--small", type=int, default=1_000, help="running tests at small size (default 1000)")
    parser.add_argument("--outcomes-per-test", type=int, default=100, help="recorded outcomes per test (100)")
    parser.add_argument("--alternations", type=int, default=3, help="small/full round pairs (default 3)")
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report("evaluate_scale: evaluation rounds over many running A/B tests")
    url = create_database("wre_bench_scale")
    try:
        upgrade(url)
        loading = time.monotonic()
        load(url, args.tests, args.outcomes_per_test)
        report.line(
            f"loaded {args.tests} skills, {2 * args.tests} variations, {args.tests} running tests "
            f"({TRIALS_PER_ARM} trials per arm; 1 in {DECIDED_EVERY} decidable), "
            f"{args.tests * args.outcomes_per_test} outcomes with COPY in {time.monotonic() - loading:.0f} s"
        )
        store = Store(url)
        memory = promotion_memory(Settings(database_url=url))
        sql = Sql(memory.engine)
        store.prepare(args.small)  # warm-up: connection, compiled statements
        run_evaluation_round(memory)
        rounds: dict[tuple[int, bool], list[Round]] = {}
        report.line(
            f"{'running':>8} {'round':<16} {'verdicts':>8} {'statements':>10} {'pings':>5} {'seconds':>8} {'ms/test':>8}"
        )
        for _ in range(args.alternations):
            for running in (args.small, args.tests):
                store.prepare(running)
                for fresh in (True, False):
                    sql.take()
                    started = time.perf_counter()
                    conclusions = run_evaluation_round(memory)
                    seconds = time.perf_counter() - started
                    counts = sql.take()
                    found = Round(running, seconds, counts["statements"], counts["pings"], len(conclusions))
                    rounds.setdefault((running, fresh), []).append(found)
                    label = "with verdicts" if fresh else "none left"
                    report.line(
                        f"{running:>8} {label:<16} {found.verdicts:>8} {found.statements:>10} {found.pings:>5} "
                        f"{seconds:>8.3f} {1000 * seconds / running:>8.4f}"
                    )
        store.dispose()
        memory.dispose()
    finally:
        drop_database(url)

    def per_test(running: int, fresh: bool) -> float:
        done = rounds[(running, fresh)]
        return sum(r.seconds for r in done) / (running * len(done))

    def per_verdict(running: int) -> float:
        done, idle = rounds[(running, True)], rounds[(running, False)]
        extra = sum(r.statements for r in done) / len(done) - sum(r.statements for r in idle) / len(idle)
        return extra / (sum(r.verdicts for r in done) / len(done))

    small, full = args.small, args.tests
    idle_statements = {n: sorted({r.statements for r in rounds[(n, False)]}) for n in (small, full)}
    verdict_cost = {n: per_verdict(n) for n in (small, full)}
    report.line()
    for n in (small, full):
        report.line(
            f"{n:>6} tests: {per_test(n, True) * 1e6:7.1f} µs per test with verdicts, "
            f"{per_test(n, False) * 1e6:7.1f} µs without; statements: {idle_statements[n]} per round without "
            f"verdicts, {verdict_cost[n]:.2f} more per verdict"
        )
    ratio = per_test(full, True) / per_test(small, True)
    ratio_idle = per_test(full, False) / per_test(small, False)
    report.line(f"time per test, {full} vs {small}: {ratio:.2f} with verdicts, {ratio_idle:.2f} without")
    same_queries = (
        idle_statements[small] == idle_statements[full]
        and abs(verdict_cost[small] - verdict_cost[full]) < 0.5
    )
    report.bar(
        "queries per round independent of the number of tests",
        f"{idle_statements[small]} vs {idle_statements[full]} without verdicts; "
        f"{verdict_cost[small]:.2f} vs {verdict_cost[full]:.2f} per verdict",
        same_queries,
    )
    report.bar(f"time per test {full} vs {small} ≤ {BAR_TIME_RATIO}", f"{ratio:.2f}", ratio <= BAR_TIME_RATIO)
    return report.finish(begun)


if __name__ == "__main__":
    sys.exit(main())
