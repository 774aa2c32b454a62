"""The telemetry dashboard: retry rate, win rate, fidelity deltas, fidelity now vs the first window."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, and_, case, func, select

from db.lifecycle import LifecycleStore
from db.models import EVENTS, OUTCOMES, TESTS

DEFAULT_WINDOW_RUNS = 100

COUNTER_TOTAL_EXECUTIONS = "total_executions"
COUNTER_TOTAL_RUNS = "total_runs"
COUNTER_RETRIES = "react_retry_count"
COUNTER_RUNS_RETRIED = "runs_retried"
COUNTER_EVOLUTIONS = "evolutions_triggered"
DASHBOARD_COUNTERS = (
    COUNTER_TOTAL_EXECUTIONS,
    COUNTER_TOTAL_RUNS,
    COUNTER_RETRIES,
    COUNTER_RUNS_RETRIED,
    COUNTER_EVOLUTIONS,
)


class DashboardStore(LifecycleStore):
    def get_telemetry_dashboard(self, window: int = DEFAULT_WINDOW_RUNS) -> dict[str, Any]:
        """wre's figures in one dict.

        :param window: runs in the "first" and "now" windows whose median first-attempt fidelity is compared
            (the seed's "median fidelity +20%" gate).
        """
        counters = self.get_counters(DASHBOARD_COUNTERS)
        runs = counters[COUNTER_TOTAL_RUNS]
        with self.transaction() as conn:
            tests = _test_figures(conn)
            fidelity_delta = conn.execute(
                select(func.avg(EVENTS.c.fidelity_after - EVENTS.c.fidelity_before)).where(
                    EVENTS.c.event_type == "variation_promoted",
                    EVENTS.c.fidelity_before.is_not(None),
                    EVENTS.c.fidelity_after.is_not(None),
                )
            ).scalar()
            first, now = self._window_medians(conn, window, None)
        return {
            "retry_count": counters[COUNTER_RETRIES],
            "total_executions": counters[COUNTER_TOTAL_EXECUTIONS],
            "total_runs": runs,
            "runs_retried": counters[COUNTER_RUNS_RETRIED],
            "repeated_failure_rate": counters[COUNTER_RUNS_RETRIED] / runs if runs else 0.0,
            "evolutions_triggered": counters[COUNTER_EVOLUTIONS],
            "variations_tested": tests["tested"],
            "variations_promoted": tests["promoted"],
            "tests_running": tests["running"],
            "tests_decided": tests["decided"],
            "variation_win_rate": tests["promoted"] / tests["decided"] if tests["decided"] else 0.0,
            "avg_fidelity_delta": float(fidelity_delta) if fidelity_delta is not None else None,
            "median_fidelity_first_window": first,
            "median_fidelity_now": now,
            "median_fidelity_gain": _relative_gain(first, now),
            "window_runs": window,
        }

    def get_skill_dashboard(self, skill_name: str, window: int = DEFAULT_WINDOW_RUNS) -> dict[str, Any]:
        """Per-skill figures from the outcomes themselves (counters are global)."""
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
        with self.transaction() as conn:
            runs, retried, retries, successes = (int(v) for v in conn.execute(query).one())
            first, now = self._window_medians(conn, window, skill_name)
            usage = [row for row in conn.execute(tokens).scalars() if isinstance(row, dict)]
        return {
            "skill_name": skill_name,
            "runs": runs,
            "retries": retries,
            "repeated_failure_rate": retried / runs if runs else 0.0,
            "success_rate": successes / runs if runs else None,
            "median_fidelity_first_window": first,
            "median_fidelity_now": now,
            "median_fidelity_gain": _relative_gain(first, now),
            "total_tokens": sum(int(u.get("total_tokens", 0) or 0) for u in usage),
        }

    def _window_medians(
        self, conn: Connection, window: int, skill_name: str | None
    ) -> tuple[float | None, float | None]:
        """Median first-attempt fidelity of the first and of the latest ``window`` runs.

        First attempts measure the skill itself; a run's final attempt has been rescued by retries, so its
        fidelity would show ReAct at work rather than the skill getting better.
        """
        scope = OUTCOMES.c.attempt == 1
        if skill_name is not None:
            scope = and_(scope, OUTCOMES.c.skill_name == skill_name)
        base = select(OUTCOMES.c.pattern_fidelity).where(scope)
        first = self.median(conn, base.order_by(OUTCOMES.c.id).limit(window))
        now = self.median(conn, base.order_by(OUTCOMES.c.id.desc()).limit(window))
        return first, now


def _test_figures(conn: Connection) -> dict[str, int]:
    query = select(
        func.count(),
        func.coalesce(func.sum(case((TESTS.c.status == "running", 1), else_=0)), 0),
        func.coalesce(func.sum(case((TESTS.c.winner.is_not(None), 1), else_=0)), 0),
        func.coalesce(func.sum(case((TESTS.c.winner == "treatment", 1), else_=0)), 0),
    ).where(TESTS.c.kind == "test")  # a guard watches a promotion; it tests no new variation
    tested, running, decided, promoted = (int(v) for v in conn.execute(query).one())
    return {"tested": tested, "running": running, "decided": decided, "promoted": promoted}


def _relative_gain(first: float | None, now: float | None) -> float | None:
    if first is None or now is None or first == 0:
        return None
    return (now - first) / first
