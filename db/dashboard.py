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
        counters = self.get_counters(DASHBOARD_COUNTERS)
        runs, attempts = counters[COUNTER_TOTAL_RUNS], counters[COUNTER_TOTAL_EXECUTIONS]
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
            delivered = self._delivered_median(conn, window, None)
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

    def get_skill_dashboard(self, skill_name: str, window: int = DEFAULT_WINDOW_RUNS) -> dict[str, Any]:
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
        with self.transaction() as conn:
            runs, retried, retries, successes = (int(v) for v in conn.execute(query).one())
            first, now = self._window_medians(conn, window, skill_name)
            delivered = self._delivered_median(conn, window, skill_name)
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

    def _delivered_median(self, conn: Connection, window: int, skill_name: str | None) -> float | None:
        """Median delivered fidelity (runs' final attempts, after ReAct) of the latest ``window`` runs."""
        scope = and_(OUTCOMES.c.final, OUTCOMES.c.skill_name == skill_name) if skill_name else OUTCOMES.c.final
        query = select(OUTCOMES.c.pattern_fidelity).where(scope).order_by(OUTCOMES.c.id.desc()).limit(window)
        return self.median(conn, query)


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
