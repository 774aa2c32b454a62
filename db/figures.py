"""Read-only figures: the dashboards, the exporter's and the report's, each one query however many skills.

Two fidelities, each named: *delivered* fidelity is a run's final attempt (after ReAct retries, what the
producer got); *first-attempt* fidelity is the skill's own quality before retries rescue it (what A/B
tests and evolution change, the seed's "median fidelity").

The dashboards (``PatternMemory.get_telemetry_dashboard``, ``get_skill_dashboard``, ``get_skill_metrics``)
and the exporter's and report's figures. A Prometheus scrape comes every few seconds and must not cost a
query per skill, so these aggregate in SQL with GROUP BY and window functions (both Postgres and SQLite have
them). Everywhere a run is its final attempt, its retries are ``attempt - 1``, and the repeated failure rate
is retries / attempts (the seed's react_retry_count / total_executions, per skill).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, and_, case, func, select, true

from db.counters import (
    COUNTER_EVOLUTIONS,
    COUNTER_RETRIES,
    COUNTER_RUNS_RETRIED,
    COUNTER_TOTAL_EXECUTIONS,
    COUNTER_TOTAL_RUNS,
    DASHBOARD_COUNTERS,
    SKILL_COUNTER_FIELDS,
    read_counters,
    skill_counter_name,
)
from db.models import EVENTS, OUTCOMES, SKILLS, TESTS, utcnow
from db.store import Store

# Runs per window: the dashboards' "first" and "now" windows, the exporter's latest runs per skill.
DEFAULT_FIDELITY_WINDOW = 100
PROMOTED_EVENT = "variation_promoted"
ROLLBACK_EVENT = "rollback"
ARCHIVED_EVENT = "variation_archived"
# The learning events the exporter counts and the report marks on its charts.
COUNTED_EVENTS = (PROMOTED_EVENT, ROLLBACK_EVENT, ARCHIVED_EVENT)


@dataclass(frozen=True)
class SkillRunFigures:
    """What the outcomes table says about one skill.

    :param attempts: every recorded attempt, runs still in flight included.
    :param runs: finished runs (final attempts).
    :param failed_runs: finished runs whose last attempt still failed.
    :param runs_retried: finished runs that needed more than one attempt.
    :param retries: attempts after the first, summed over finished runs.
    """

    skill_name: str
    attempts: int = 0
    runs: int = 0
    failed_runs: int = 0
    runs_retried: int = 0
    retries: int = 0

    @property
    def repeated_failure_rate(self) -> float:
        """Retries / attempts of finished runs: the seed's react_retry_count / total_executions, per skill."""
        attempts = self.runs + self.retries
        return self.retries / attempts if attempts else 0.0


@dataclass(frozen=True)
class RecentFidelity:
    """Fidelity and success of a skill's latest finished runs (at most the window's size)."""

    skill_name: str
    runs: int
    median: float
    mean: float
    success_rate: float


@dataclass(frozen=True)
class FidelityBucket:
    """One point of a fidelity-over-time chart: consecutive finished runs of one skill."""

    runs: int
    mean_fidelity: float
    success_rate: float
    first_at: datetime
    last_at: datetime

    @property
    def middle_at(self) -> datetime:
        return self.first_at + (self.last_at - self.first_at) / 2


def skill_names(memory: Store) -> list[str]:
    """Every registered skill, by name."""
    with memory.transaction() as conn:
        return [str(name) for name in conn.execute(select(SKILLS.c.name).order_by(SKILLS.c.name)).scalars()]


def run_figures(memory: Store) -> dict[str, SkillRunFigures]:
    """Per-skill attempt and run counts of every registered skill, from the per-skill counters that each
    recorded attempt bumps: one read of (skills x 5) counters, whatever the number of outcomes."""
    names = skill_names(memory)
    wanted = {(name, field): skill_counter_name(field, name) for name in names for field in SKILL_COUNTER_FIELDS}
    with memory.transaction() as conn:
        values = read_counters(conn, wanted.values()) if wanted else {}
    return {
        name: SkillRunFigures(name, *(values[wanted[name, field]] for field in SKILL_COUNTER_FIELDS))
        for name in names
    }


def recent_fidelity(
    memory: Store, window: int = DEFAULT_FIDELITY_WINDOW, first_attempts: bool = False
) -> dict[str, RecentFidelity]:
    """Median and mean fidelity and the success rate of each skill's latest ``window`` runs.

    :param window: runs per skill that the figures cover (the latest ones, by id).
    :param first_attempts: read first-attempt fidelity (runs' first attempts) instead of delivered fidelity
        (finished runs' final attempts).
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    per_skill: dict[str, list[tuple[float, bool]]] = {}
    with memory.transaction() as conn:
        for name, fidelity, success in conn.execute(_latest_attempts(memory, window, first_attempts)):
            per_skill.setdefault(name, []).append((float(fidelity), bool(success)))
    return {
        name: RecentFidelity(
            skill_name=name,
            runs=len(values),
            median=statistics.median(f for f, _ in values),
            mean=statistics.fmean(f for f, _ in values),
            success_rate=sum(s for _, s in values) / len(values),
        )
        for name, values in sorted(per_skill.items())
    }


def _latest_attempts(memory: Store, window: int, first_attempts: bool) -> Select[Any]:
    """(skill, fidelity, success) of each skill's latest ``window`` final (or first) attempts.

    On Postgres a LATERAL join per registered skill reads only those rows through the
    (skill_name, final, id) index, so a scrape costs skills x window rows however long the history is.
    SQLite (the embedded store) has no LATERAL: a window function over the final attempts does it there.
    """
    scope = OUTCOMES.c.attempt == 1 if first_attempts else OUTCOMES.c.final
    if memory.is_postgres:
        latest = (
            select(OUTCOMES.c.pattern_fidelity, OUTCOMES.c.success)
            .where(OUTCOMES.c.skill_name == SKILLS.c.name, scope)
            .order_by(OUTCOMES.c.id.desc())
            .limit(window)
            .lateral("latest")
        )
        return select(SKILLS.c.name, latest.c.pattern_fidelity, latest.c.success).select_from(
            SKILLS.join(latest, true())
        )
    newest_first = (
        func.row_number()
        .over(partition_by=OUTCOMES.c.skill_name, order_by=OUTCOMES.c.id.desc())
        .label("position")
    )
    ranked = (
        select(OUTCOMES.c.skill_name, OUTCOMES.c.pattern_fidelity, OUTCOMES.c.success, newest_first)
        .where(scope)
        .subquery()
    )
    return select(ranked.c.skill_name, ranked.c.pattern_fidelity, ranked.c.success).where(
        ranked.c.position <= window
    )


def event_counts(memory: Store) -> dict[tuple[str, str], int]:
    """How many promotions, rollbacks and archives each skill had: ``{(skill, event_type): count}``."""
    query = (
        select(EVENTS.c.skill_name, EVENTS.c.event_type, func.count())
        .where(EVENTS.c.event_type.in_(COUNTED_EVENTS))
        .group_by(EVENTS.c.skill_name, EVENTS.c.event_type)
    )
    with memory.transaction() as conn:
        return {(name, kind): int(count) for name, kind, count in conn.execute(query)}


def fidelity_buckets(memory: Store, buckets: int) -> dict[str, list[FidelityBucket]]:
    """Each skill's finished runs in ``buckets`` groups of consecutive runs (fewer when it has fewer runs).

    Equal-count groups (``ntile``) rather than equal time spans: every point then averages about as many runs,
    and quiet hours leave no empty points. Each point carries its time span for the x axis.

    :param buckets: points per skill, at least 1.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    numbered = select(
        OUTCOMES.c.skill_name,
        OUTCOMES.c.pattern_fidelity,
        OUTCOMES.c.success,
        OUTCOMES.c.created_at,
        func.ntile(buckets).over(partition_by=OUTCOMES.c.skill_name, order_by=OUTCOMES.c.id).label("bucket"),
    ).where(OUTCOMES.c.final)
    runs = numbered.subquery()
    query = (
        select(
            runs.c.skill_name,
            func.count(),
            func.avg(runs.c.pattern_fidelity),
            _count(runs.c.success),
            func.min(runs.c.created_at),
            func.max(runs.c.created_at),
        )
        .group_by(runs.c.skill_name, runs.c.bucket)
        .order_by(runs.c.skill_name, runs.c.bucket)
    )
    series: dict[str, list[FidelityBucket]] = {}
    with memory.transaction() as conn:
        for name, count, mean, successes, first_at, last_at in conn.execute(query):
            series.setdefault(name, []).append(
                FidelityBucket(int(count), float(mean), int(successes) / int(count), first_at, last_at)
            )
    return series


def marked_events(memory: Store, limit: int = 500) -> list[dict[str, Any]]:
    """The latest promotions, rollbacks and archives, oldest first (what the report marks on its charts)."""
    query = (
        select(
            EVENTS.c.skill_name,
            EVENTS.c.event_type,
            EVENTS.c.variation_id,
            EVENTS.c.fidelity_before,
            EVENTS.c.fidelity_after,
            EVENTS.c.description,
            EVENTS.c.created_at,
        )
        .where(EVENTS.c.event_type.in_(COUNTED_EVENTS))
        .order_by(EVENTS.c.event_id.desc())
        .limit(limit)
    )
    with memory.transaction() as conn:
        return [dict(row._mapping) for row in reversed(list(conn.execute(query)))]


def telemetry_dashboard(memory: Store, window: int = DEFAULT_FIDELITY_WINDOW) -> dict[str, Any]:
    """wre's figures in one dict; every number is 0 (not None) when there is nothing yet.

    The seed's gate metrics, as the seed defines them: ``repeated_failure_rate`` = react_retry_count /
    total_executions; ``variation_win_rate`` = promoted / (promoted + archived), where a test that closes
    inconclusive archives its variation (counted as archived, and shown apart as
    ``variations_inconclusive``); first-attempt fidelity now vs the first window (the "median
    fidelity +20%" gate). ``delivered_fidelity_now`` is after ReAct retries, labelled apart.

    :param window: runs in the "first" and "now" windows whose medians are compared.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a whole number of runs, at least 1, got {window!r}")
    with memory.transaction() as conn:
        counters = read_counters(conn, DASHBOARD_COUNTERS)
        tests = _test_figures(conn)
        fidelity_delta = conn.execute(
            select(func.avg(EVENTS.c.fidelity_after - EVENTS.c.fidelity_before)).where(
                EVENTS.c.event_type == "variation_promoted",
                EVENTS.c.fidelity_before.is_not(None),
                EVENTS.c.fidelity_after.is_not(None),
            )
        ).scalar()
        first, now = _window_medians(memory, conn, window, None)
        delivered = _delivered_median(memory, conn, window, None)
    runs, attempts = counters[COUNTER_TOTAL_RUNS], counters[COUNTER_TOTAL_EXECUTIONS]
    closed = tests["promoted"] + tests["archived"]
    return {
        "retry_count": counters[COUNTER_RETRIES],
        "total_executions": attempts,
        "total_runs": runs,
        "runs_retried": counters[COUNTER_RUNS_RETRIED],
        "repeated_failure_rate": counters[COUNTER_RETRIES] / attempts if attempts else 0.0,
        "evolutions_triggered": counters[COUNTER_EVOLUTIONS],
        "variations_tested": tests["tested"],
        "variations_promoted": tests["promoted"],
        "variations_archived": tests["archived"],
        "variations_inconclusive": tests["inconclusive"],
        "variations_rolled_back": tests["rolled_back"],
        "tests_running": tests["running"],
        "tests_decided": closed,
        "variation_win_rate": tests["promoted"] / closed if closed else 0.0,
        "avg_fidelity_delta": float(fidelity_delta) if fidelity_delta is not None else 0.0,
        "first_attempt_fidelity_first_window": first or 0.0,
        "first_attempt_fidelity_now": now or 0.0,
        "first_attempt_fidelity_gain": _relative_gain(first, now) or 0.0,
        "delivered_fidelity_now": delivered or 0.0,
        "window_runs": window,
    }


def skill_dashboard(memory: Store, skill_name: str, window: int = DEFAULT_FIDELITY_WINDOW) -> dict[str, Any]:
    """Per-skill figures from the outcomes themselves (counters are global), named as the overall ones.

    ``repeated_failure_rate`` = retries / attempts of finished runs (the seed's ratio, per skill).
    """
    final = and_(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.final)
    query = select(
        func.count(),
        func.coalesce(func.sum(case((OUTCOMES.c.attempt > 1, 1), else_=0)), 0),
        func.coalesce(func.sum(OUTCOMES.c.attempt - 1), 0),
        func.coalesce(func.sum(case((OUTCOMES.c.success, 1), else_=0)), 0),
    ).where(final)
    tokens = select(OUTCOMES.c.token_usage).where(
        OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.token_usage.is_not(None)
    )
    with memory.transaction() as conn:
        runs, retried, retries, successes = (int(v) for v in conn.execute(query).one())
        first, now = _window_medians(memory, conn, window, skill_name)
        delivered = _delivered_median(memory, conn, window, skill_name)
        usage = [row for row in conn.execute(tokens).scalars() if isinstance(row, dict)]
    attempts = runs + retries
    return {
        "skill_name": skill_name,
        "runs": runs,
        "runs_retried": retried,
        "retries": retries,
        "repeated_failure_rate": retries / attempts if attempts else 0.0,
        "success_rate": successes / runs if runs else None,
        "first_attempt_fidelity_first_window": first,
        "first_attempt_fidelity_now": now,
        "first_attempt_fidelity_gain": _relative_gain(first, now),
        "delivered_fidelity_now": delivered,
        "total_tokens": sum(int(u.get("total_tokens", 0) or 0) for u in usage),
    }


def _window_medians(
    memory: Store, conn: Connection, window: int, skill_name: str | None
) -> tuple[float | None, float | None]:
    """Median first-attempt fidelity of the first and of the latest ``window`` runs.

    First attempts measure the skill itself; a run's final attempt has been rescued by retries, so its
    fidelity would show ReAct at work rather than the skill getting better.
    """
    scope = OUTCOMES.c.attempt == 1
    if skill_name is not None:
        scope = and_(scope, OUTCOMES.c.skill_name == skill_name)
    base = select(OUTCOMES.c.pattern_fidelity).where(scope)
    first = memory.median(conn, base.order_by(OUTCOMES.c.id).limit(window))
    now = memory.median(conn, base.order_by(OUTCOMES.c.id.desc()).limit(window))
    return first, now

def _delivered_median(memory: Store, conn: Connection, window: int, skill_name: str | None) -> float | None:
    """Median delivered fidelity (runs' final attempts, after ReAct) of the latest ``window`` runs."""
    scope = and_(OUTCOMES.c.final, OUTCOMES.c.skill_name == skill_name) if skill_name else OUTCOMES.c.final
    query = select(OUTCOMES.c.pattern_fidelity).where(scope).order_by(OUTCOMES.c.id.desc()).limit(window)
    return memory.median(conn, query)


def _test_figures(conn: Connection) -> dict[str, int]:
    """Tests by how they ended: promoted (treatment won), archived (control won, or inconclusive: its
    variation is archived too), of which inconclusive; stopped by hand counts in neither."""
    query = select(
        func.count(),
        func.coalesce(func.sum(case((TESTS.c.status == "running", 1), else_=0)), 0),
        func.coalesce(func.sum(case((TESTS.c.winner == "treatment", 1), else_=0)), 0),
        func.coalesce(func.sum(case((TESTS.c.winner.in_(("control", "inconclusive")), 1), else_=0)), 0),
        func.coalesce(func.sum(case((TESTS.c.winner == "inconclusive", 1), else_=0)), 0),
    ).where(TESTS.c.kind == "test")  # a guard watches a promotion; it tests no new variation
    tested, running, promoted, archived, inconclusive = (int(v) for v in conn.execute(query).one())
    # A promotion its guard rolled back was a wrong win: it counts as archived, and is shown apart.
    rolled_back = int(
        conn.execute(
            select(func.count()).where(TESTS.c.kind == "guard", TESTS.c.winner == "control")
        ).scalar_one()
    )
    return {
        "tested": tested,
        "running": running,
        "promoted": promoted - rolled_back,
        "archived": archived + rolled_back,
        "inconclusive": inconclusive,
        "rolled_back": rolled_back,
    }


def _relative_gain(first: float | None, now: float | None) -> float | None:
    if first is None or now is None or first == 0:
        return None
    return (now - first) / first


def skill_metrics(memory: Store, skill_name: str, days: float = 7) -> dict[str, Any]:
    """Execution figures of the last ``days`` days.

    execution_count counts attempts; run_count and success_rate count runs (their final attempts).
    ``median_fidelity`` — the seed's gate metric — is the median *first-attempt* fidelity (what the
    skill delivers on its first try, what tests and evolution change; ``median_fidelity_reads`` says so);
    ``median_delivered_fidelity`` is the median of runs' final attempts (after ReAct retries).
    """
    since = utcnow() - timedelta(days=days)
    scope = and_(OUTCOMES.c.skill_name == skill_name, OUTCOMES.c.created_at >= since)
    query = select(
        func.count(),
        func.coalesce(func.sum(case((OUTCOMES.c.final, 1), else_=0)), 0),
        func.coalesce(func.sum(case((and_(OUTCOMES.c.final, OUTCOMES.c.success), 1), else_=0)), 0),
        func.avg(case((OUTCOMES.c.attempt == 1, OUTCOMES.c.pattern_fidelity))),
        func.avg(OUTCOMES.c.execution_time_ms),
    ).where(scope)
    with memory.transaction() as conn:
        attempts, runs, successes, avg_fidelity, avg_time = conn.execute(query).one()
        first = memory.median(conn, select(OUTCOMES.c.pattern_fidelity).where(scope, OUTCOMES.c.attempt == 1))
        delivered = memory.median(conn, select(OUTCOMES.c.pattern_fidelity).where(scope, OUTCOMES.c.final))
    return {
        "skill_name": skill_name,
        "days": days,
        "execution_count": int(attempts),
        "run_count": int(runs),
        "median_fidelity": first,
        "median_fidelity_reads": "first attempts",
        "avg_first_attempt_fidelity": float(avg_fidelity) if avg_fidelity is not None else None,
        "median_delivered_fidelity": delivered,
        "success_rate": successes / runs if runs else None,
        "avg_time_ms": float(avg_time) if avg_time is not None else None,
    }


def _count(condition: Any) -> Any:
    """SUM(CASE WHEN condition THEN 1 ELSE 0 END), 0 when no rows: a portable COUNT ... FILTER."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
