"""The complete-prefix rule: which trials of a test a verdict may read, so outcome delay cannot bias it.

A pure reference model (stdlib only): the store's ledger SQL (``PatternMemory.cohorts``) is tested against it
(tests/db/test_trials.py), and bench.promotion_mechanisms replays its simulations through it
(docs/STATISTICS.md, "Delay"). No production code imports it.

A trial counts from the moment its run is routed into the test (``assigned_at``), not from the moment
its outcome is recorded. If the policy read every recorded outcome, outcomes that arrive fast (often
successes) would be counted before slow ones (timeouts, long calls that end badly) and an arm whose
failures are slow would look better than it is for as long as the test runs. So a verdict reads only the
*complete prefix*: the trials assigned before the oldest trial still pending. Which trials are in the
prefix then depends on assignment times alone, which the router sets before any outcome exists, and the
prefix grows in assignment order whatever the delays: the test sees the same sequence of cohorts it
would see with instant outcomes, only later.

A trial still pending after its ``deadline`` (its first attempt's time limit plus slack) counts as a
failure of its arm, so a lost or hung run cannot hold the prefix back for ever. If its outcome arrives
after all, the recorded outcome replaces the failure.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from scheduler.units import ArmUnits

CONTROL: Final = "control"
TREATMENT: Final = "treatment"
ARMS: Final = (CONTROL, TREATMENT)


@dataclass(frozen=True)
class Trial:
    """One run routed into a test, as the ledger holds it.

    Attributes:
        unit: the assignment unit (the key, or the run id when the producer passed no key).
        arm: ``"control"`` or ``"treatment"``.
        assigned_at: when the router assigned it (seconds, any epoch shared by the trials and ``now``).
        deadline: when a still-pending trial starts counting as a failure.
        success: the first attempt's outcome; None while pending.

    Raises:
        ValueError: an unknown arm, an empty unit, a time that is not a finite number, a deadline
            before the assignment, or a success that is not a bool or None.
    """

    unit: str
    arm: Literal["control", "treatment"]
    assigned_at: float
    deadline: float
    success: bool | None

    def __post_init__(self) -> None:
        if not isinstance(self.unit, str) or not self.unit:
            raise ValueError(f"unit must be a non-empty string, got {self.unit!r}")
        if self.arm not in ARMS:
            raise ValueError(f"arm must be 'control' or 'treatment', got {self.arm!r}")
        for name in ("assigned_at", "deadline"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.deadline < self.assigned_at:
            raise ValueError(f"deadline ({self.deadline}) before assigned_at ({self.assigned_at})")
        if self.success is not None and not isinstance(self.success, bool):
            raise ValueError(f"success must be True, False or None, got {self.success!r}")

    def expired(self, now: float) -> bool:
        return self.success is None and self.deadline < now


@dataclass(frozen=True)
class Cohort:
    """What the complete prefix holds at ``now``: both arms' units and what was left out.

    Attributes:
        control, treatment: the counted trials, aggregated per unit and then per arm.
        cutoff: ``assigned_at`` of the oldest pending, not expired trial; None when nothing is
            pending (then every trial counts).
        pending: trials still pending and not expired (all assigned at or after the cutoff).
        expired: trials pending past their deadline, counted as failures where they fall before the
            cutoff (all of them when nothing is pending).
        excluded: trials with an outcome (recorded, or expired) assigned at or after the cutoff: they
            wait for the cohort ahead of them.
    """

    control: ArmUnits
    treatment: ArmUnits
    cutoff: float | None
    pending: int
    expired: int
    excluded: int


def complete_prefix(trials: Iterable[Trial], now: float, grace: float = 0.0) -> Cohort:
    """The complete prefix of a test's trials at time ``now``.

    Everything is judged at the horizon ``now - grace``: a trial assigned after it may not be visible yet (its
    row is stamped before it commits, by a worker whose clock may run a little apart), so it waits. A pending
    trial whose deadline is before the horizon counts as a failure of its arm. ``cutoff`` is the earliest
    ``assigned_at`` of the trials still pending and not expired; only trials assigned strictly before both
    the cutoff and the horizon count. Counted trials are summed per (arm, unit), then aggregated per arm. A
    unit is meant to sit on one arm; if a unit shows up on both (a router bug), each arm counts its own part.
    """
    listed = list(trials)
    for name, value in (("now", now), ("grace", grace)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if grace < 0:
        raise ValueError(f"grace must be >= 0, got {grace!r}")
    horizon = now - grace
    waiting = [t.assigned_at for t in listed if t.success is None and not t.expired(horizon)]
    cutoff = min(waiting) if waiting else None
    limit = horizon if cutoff is None else min(cutoff, horizon)
    per_unit: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    excluded = 0
    for trial in listed:
        if trial.success is None and not trial.expired(horizon):
            continue
        if trial.assigned_at >= limit:
            excluded += 1
            continue
        tally = per_unit[(trial.arm, trial.unit)]
        tally[0] += 1 if trial.success else 0  # None here is an expired trial: a failure
        tally[1] += 1
    arms = {
        arm: ArmUnits.from_units((y, m) for (side, _), (y, m) in per_unit.items() if side == arm)
        for arm in ARMS
    }
    return Cohort(
        control=arms[CONTROL],
        treatment=arms[TREATMENT],
        cutoff=cutoff,
        pending=len(waiting),
        expired=sum(1 for t in listed if t.expired(horizon)),
        excluded=excluded,
    )
