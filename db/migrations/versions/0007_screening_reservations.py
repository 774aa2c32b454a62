"""Screening's reservations leave the settled counters: ``screening_calls`` and ``skill.screening_calls:NAME``
count settled calls only, each reservation counts in a counter of its own until it is settled or too old.

Until now a reservation was added to those counters, and the reservation of a worker killed during a
screening stayed in them for good. They (and only they) are recomputed from the events, as revision 0006
computed them, which gives those back. Stop the workers that evolve (the maintenance queue) across the upgrade, as for 0006: the
reservation of a screening under way would be lost too. Going down keeps the recomputed figures (right for
the older code as well, with no screening under way).

Revision ID: 0007_screening_reservations
Revises: 0006_fleet_budget_counters
Create Date: 2026-12-07 21:10:00

"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

revision: str = "0007_screening_reservations"
down_revision: str | Sequence[str] | None = "0006_fleet_budget_counters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 0006's recount of the screening counters alone (fleet.runs stays as the workers keep it), loaded from its
    # file (revision files are not an importable package).
    backfill_file = Path(__file__).with_name("0006_fleet_budget_counters.py")
    spec = importlib.util.spec_from_file_location("backfill", backfill_file)
    assert spec is not None and spec.loader is not None
    backfill = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backfill)
    backfill.forget(runs=False)
    backfill.recount_screening_calls()


def downgrade() -> None:
    pass
