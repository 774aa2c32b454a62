"""Assignment units of one arm of a test, aggregated: what the statistics read instead of run counts.

Pure (stdlib only). A *unit* is what the router assigns to an arm: the assignment key, or the run itself
when the producer passes no key. The runs of one unit share its arm and are correlated (one user's runs
are alike), so the independent draws of a test are its units, not its runs. Each unit ``i`` brings
``y_i`` successes in ``m_i`` trials (runs' first attempts); the statistics need only the five sums kept
here, so the caller may aggregate in SQL (``count(*)``, ``sum(m)``, ``sum(m * m)``, ...) or in Python
with :meth:`ArmUnits.from_units`. docs/STATISTICS.md ("Units") explains how they are used.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import SupportsIndex


def as_count(name: str, value: object, minimum: int = 0) -> int:
    """``value`` as an int >= ``minimum``; a ValueError naming ``name`` otherwise.

    bool is an int subclass, but a True/False count is always a caller's bug, never a tally; floats are
    refused even when whole (a count that went through float arithmetic is suspect).
    """
    if isinstance(value, bool) or not isinstance(value, SupportsIndex):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    number = operator.index(value)
    if number < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {number}")
    return number


def as_real(
    name: str, value: object, low: float, high: float, *, low_open: bool = True, high_open: bool = True
) -> float:
    """``value`` as a float inside the interval (open or closed at each end); a ValueError naming ``name``
    otherwise (NaN and infinities included: they fail the comparisons)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    number = float(value)
    above = low < number if low_open else low <= number
    below = number < high if high_open else number <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {number!r}")
    return number


def set_checked(instance: object, **values: object) -> None:
    """Store a frozen dataclass's fields as ``__post_init__`` checked (and normalised) them."""
    for name, value in values.items():
        object.__setattr__(instance, name, value)


_FIELDS = ("units", "trials", "successes", "sum_trials_sq", "sum_successes_sq", "sum_cross")


@dataclass(frozen=True)
class ArmUnits:
    """One arm's units, aggregated; every field an int >= 0, checked on construction.

    Attributes:
        units: n, the arm's units.
        trials: sum of m_i, the trials of those units.
        successes: sum of y_i.
        sum_trials_sq: sum of m_i ** 2.
        sum_successes_sq: sum of y_i ** 2.
        sum_cross: sum of y_i * m_i.

    Raises:
        ValueError: a field that is not an int (bools and floats included) or is negative, or sums no
            set of units can have (successes above trials, trials below units, a sum of squares below
            its sum, ...). Not every impossible combination is caught: the checks are the ones that
            keep the statistics' formulas meaningful (non-negative variances).
    """

    units: int
    trials: int
    successes: int
    sum_trials_sq: int
    sum_successes_sq: int
    sum_cross: int

    def __post_init__(self) -> None:
        set_checked(self, **{name: as_count(name, getattr(self, name)) for name in _FIELDS})
        n, m, y = self.units, self.trials, self.successes
        if y > m:
            raise ValueError(f"successes ({y}) exceed trials ({m})")
        # Units without trials are allowed (a unit assigned whose trials are all still pending is not
        # counted by the cohort rule, but a caller may still report it), trials without units are not.
        if m and not n:
            raise ValueError(f"{m} trials without units")
        # m_i >= 0 integers: m <= sum m^2 <= m^2, and by Cauchy-Schwarz m^2 <= n * sum m^2.
        if not (m <= self.sum_trials_sq <= m * m and m * m <= n * self.sum_trials_sq):
            raise ValueError(f"sum_trials_sq ({self.sum_trials_sq}) impossible for {n} units with {m} trials")
        if not y <= self.sum_successes_sq <= y * y:
            raise ValueError(f"sum_successes_sq ({self.sum_successes_sq}) impossible for {y} successes")
        # y_i <= m_i: y_i^2 <= y_i m_i <= m_i^2, termwise.
        if not (self.sum_successes_sq <= self.sum_cross <= self.sum_trials_sq):
            raise ValueError(
                f"sum_cross ({self.sum_cross}) must lie between sum_successes_sq "
                f"({self.sum_successes_sq}) and sum_trials_sq ({self.sum_trials_sq})"
            )

    @classmethod
    def from_units(cls, units: Iterable[tuple[int, int]]) -> ArmUnits:
        """Aggregate ``(successes, trials)`` per unit.

        Raises:
            ValueError: a unit's figure that is not an int >= 0, or successes above its trials.
        """
        n = m = y = mm = yy = ym = 0
        for index, unit in enumerate(units):
            successes, trials = unit
            y_i = as_count(f"unit {index} successes", successes)
            m_i = as_count(f"unit {index} trials", trials)
            if y_i > m_i:
                raise ValueError(f"unit {index}: successes ({y_i}) exceed trials ({m_i})")
            n, m, y = n + 1, m + m_i, y + y_i
            mm, yy, ym = mm + m_i * m_i, yy + y_i * y_i, ym + y_i * m_i
        return cls(n, m, y, mm, yy, ym)

    @classmethod
    def from_counts(cls, successes: int, trials: int) -> ArmUnits:
        """Every unit one trial (no assignment key): the run counts of today's tests."""
        y, m = as_count("successes", successes), as_count("trials", trials)
        if y > m:
            raise ValueError(f"successes ({y}) exceed trials ({m})")
        return cls(m, m, y, m, y, y)

    @classmethod
    def empty(cls) -> ArmUnits:
        return cls(0, 0, 0, 0, 0, 0)

    def __add__(self, other: ArmUnits) -> ArmUnits:
        """The union of two disjoint sets of units."""
        return ArmUnits(*(getattr(self, name) + getattr(other, name) for name in _FIELDS))

    @property
    def rate(self) -> float | None:
        """The ratio of sums, successes / trials; None without trials."""
        return self.successes / self.trials if self.trials else None

    def squared_deviations(self, rate: float) -> float:
        """sum_i (y_i - rate * m_i) ** 2: the units' spread around ``rate`` (>= 0, rounding aside)."""
        value = self.sum_successes_sq - 2.0 * rate * self.sum_cross + rate * rate * self.sum_trials_sq
        return max(0.0, value)


def check_arms(**arms: object) -> None:
    """Refuse an arm that is not an ArmUnits (a tuple of counts passed by mistake), naming it."""
    for name, arm in arms.items():
        if not isinstance(arm, ArmUnits):
            raise ValueError(f"{name} must be an ArmUnits, got {type(arm).__name__}")


def null_variance(first: ArmUnits, second: ArmUnits) -> float | None:
    """Variance of first.rate - second.rate under "no difference", over units; None while an arm has no trials.

    Each arm's units deviate from the *pooled* rate (the variance the null implies, as a score test does),
    divided by the arm's trials squared, so an unequal split enters as 1 / m_1 + 1 / m_2 and nothing else.
    """
    if not (first.trials and second.trials):
        return None
    both = first + second
    pooled = both.successes / both.trials
    return (
        first.squared_deviations(pooled) / first.trials**2
        + second.squared_deviations(pooled) / second.trials**2
    )
