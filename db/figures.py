"""Read-only figures for the exporter and the report, each one query however many skills there are.

Two fidelities, each named: *delivered* fidelity is a run's final attempt (after ReAct retries, what the
producer got); *first-attempt* fidelity is the skill's own quality before retries rescue it (what A/B
tests and evolution change, the seed's "median fidelity").

A Prometheus scrape comes every few seconds and must not cost a query per skill, so these aggregate in SQL
with GROUP BY and window functions (both Postgres and SQLite have them). The definitions match
``PatternMemory.get_skill_dashboard``: a run is its final attempt, its retries are ``attempt - 1``, and the
repeated failure rate is retries / attempts (the seed's react_retry_count / total_executions, per skill).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, case, func, select, true

from db.memory import PatternMemory
from db.models import EVENTS, OUTCOMES, SKILLS

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


def skill_names(memory: PatternMemory) -> list[str]:
    """Every registered skill, by name."""
    with memory.transaction() as conn:
        return [str(name) for name in conn.execute(select(SKILLS.c.name).order_by(SKILLS.c.name)).scalars()]


def run_figures(memory: PatternMemory) -> dict[str, SkillRunFigures]:
    """Per-skill attempt and run counts from the outcomes (registered skills without runs included)."""
    final = OUTCOMES.c.final
    query = select(
        OUTCOMES.c.skill_name,
        func.count(),
        _count(final),
        _count(and_(final, ~OUTCOMES.c.success)),
        _count(and_(final, OUTCOMES.c.attempt > 1)),
        func.coalesce(func.sum(case((final, OUTCOMES.c.attempt - 1), else_=0)), 0),
    ).group_by(OUTCOMES.c.skill_name)
    with memory.transaction() as conn:
        rows = list(conn.execute(query))
    figures = {name: SkillRunFigures(name) for name in skill_names(memory)}
    for name, attempts, runs, failed, retried, retries in rows:
        figures[name] = SkillRunFigures(
            name, int(attempts), int(runs), int(failed), int(retried), int(retries)
        )
    return dict(sorted(figures.items()))


def recent_fidelity(
    memory: PatternMemory, window: int = DEFAULT_FIDELITY_WINDOW, first_attempts: bool = False
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


def _latest_attempts(memory: PatternMemory, window: int, first_attempts: bool) -> Select[Any]:
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


def event_counts(memory: PatternMemory) -> dict[tuple[str, str], int]:
    """How many promotions, rollbacks and archives each skill had: ``{(skill, event_type): count}``."""
    query = (
        select(EVENTS.c.skill_name, EVENTS.c.event_type, func.count())
        .where(EVENTS.c.event_type.in_(COUNTED_EVENTS))
        .group_by(EVENTS.c.skill_name, EVENTS.c.event_type)
    )
    with memory.transaction() as conn:
        return {(name, kind): int(count) for name, kind, count in conn.execute(query)}


def fidelity_buckets(memory: PatternMemory, buckets: int) -> dict[str, list[FidelityBucket]]:
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


def marked_events(memory: PatternMemory, limit: int = 500) -> list[dict[str, Any]]:
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


def _count(condition: Any) -> Any:
    """SUM(CASE WHEN condition THEN 1 ELSE 0 END), 0 when no rows: a portable COUNT ... FILTER."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
