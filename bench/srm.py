"""The sample-ratio mismatch check asked at every look: false pauses of healthy tests and time to catch real ones.

``scheduler.health.srm_check`` is asked by every evaluation round, so what matters is its error over a test's
whole life, not at one sample size. Replicates of a test's unit stream are checked after every unit with
(a) the fixed-sample chi-square at p < 0.001 with the rule-of-five floor (wre's check until 2026-11-30,
GrowthBook's statistic) and (b) the anytime-valid Beta-mixture e-value at the same 0.001 (wre's check now).
Healthy streams follow the routing share; broken ones lose a share of one arm's units (a crash between the
routing and the ledger write on one arm, say). A numpy twin of both statistics runs the replicates; it is
checked against ``srm_check`` on sampled states first.
"""

from __future__ import annotations

import math
import time

import numpy as np
from numpy.typing import NDArray

from bench.common import Report, base_parser
from scheduler.health import SRM_P_VALUE, SRM_PRIOR_UNITS, srm_check

FloatArray = NDArray[np.float64]
CHUNK = 500  # replicates simulated at once (units x chunk floats per array)
MIN_EXPECTED = 5.0  # the chi-square's floor of expected units per arm, as wre had it
CHI2_CRITICAL = 10.827566170662733  # P(chi2_1 >= x) = 0.001


def _flags(
    on_treatment: NDArray[np.bool_], share: float
) -> tuple[NDArray[np.bool_], NDArray[np.bool_], FloatArray]:
    """Per stream and look (after each unit): chi-square flags, e-value flags, and the log e-value."""
    treatment = np.cumsum(on_treatment, axis=1, dtype=np.float64)
    total = np.arange(1, on_treatment.shape[1] + 1, dtype=np.float64)
    control = total - treatment
    expected_t, expected_c = total * share, total * (1.0 - share)
    chi2 = (treatment - expected_t) ** 2 / expected_t + (control - expected_c) ** 2 / expected_c
    chi_flags = (chi2 > CHI2_CRITICAL) & (np.minimum(expected_t, expected_c) >= MIN_EXPECTED)
    # The mixture's Bayes factor one unit at a time: a unit on an arm multiplies it by that arm's posterior
    # predictive under the Beta(k share, k (1 - share)) prior over its probability under the share.
    a, b = SRM_PRIOR_UNITS * share, SRM_PRIOR_UNITS * (1.0 - share)
    seen = total - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):  # np.where computes the branch not taken too
        step = np.where(
            on_treatment,
            np.log((a + treatment - 1.0) / (a + b + seen)) - math.log(share),
            np.log((b + control - 1.0) / (a + b + seen)) - math.log1p(-share),
        )
    log_e = np.cumsum(step, axis=1)
    return chi_flags, log_e >= -math.log(SRM_P_VALUE), log_e


def first_flags(flags: NDArray[np.bool_]) -> FloatArray:
    """The look (units seen) of each stream's first flag, or NaN if never."""
    first: FloatArray = flags.argmax(axis=1).astype(np.float64) + 1.0
    first[~flags.any(axis=1)] = np.nan
    return first


def verify_twin(seed: int, looks: int = 1500) -> float:
    """Replay streams unit by unit through ``srm_check``: the same mismatch at every look as the twin; returns
    the largest difference of the log e-values (relative, or absolute below 1)."""
    rng = np.random.default_rng(seed)
    worst = 0.0
    for share in (0.5, 0.9):
        on_treatment = rng.random((2, looks)) < share
        _, e_flags, log_e = _flags(on_treatment, share)
        for stream in range(2):
            treatment = 0
            for look in range(looks):
                treatment += bool(on_treatment[stream, look])
                check = srm_check(look + 1 - treatment, treatment, share)
                assert check.mismatch == bool(e_flags[stream, look]), (share, stream, look)
                twin = float(log_e[stream, look])
                worst = max(worst, abs(math.log(check.e_value) - twin) / max(1.0, abs(twin)))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(
        "The SRM check at every look: false pauses and time to detection, chi-square vs e-value."
    )
    parser.add_argument("--replicates", type=int, default=4000, help="streams per row (4000)")
    parser.add_argument("--units", type=int, default=5000, help="units per stream, a look after each (5000)")
    parser.add_argument("--seed", type=int, default=20261130)
    args = parser.parse_args(argv)
    begun = time.monotonic()
    report = Report("srm: the sample-ratio mismatch check asked after every unit")
    difference = verify_twin(args.seed)
    report.line(
        "twin vs srm_check, replayed unit by unit (2 streams x 1500 looks x 2 shares): the same mismatch at "
        f"every look, log e-values within {difference:.1e}"
    )
    report.line(
        f"{args.replicates} streams per row, {args.units} units each, checked after every unit; "
        f"threshold {SRM_P_VALUE} (chi-square: p < {SRM_P_VALUE} with >= {MIN_EXPECTED:.0f} expected per arm; "
        f"e-value: >= {1 / SRM_P_VALUE:.0f}, prior weight {SRM_PRIOR_UNITS:.0f} units)"
    )
    report.line(
        f"{'stream':<44} {'chi-square paused':>18} {'e-value paused':>15} {'median units to pause':>24}"
    )
    healthy: dict[float, float] = {}
    rows = [
        ("healthy 50/50 test", 0.5, 0.5),
        ("healthy guard (10% holdout)", 0.9, 0.9),
        ("50/50 test, 2% of treatment units lost", 0.5, 0.5 * 0.98 / (0.5 * 0.98 + 0.5)),
        ("50/50 test, 5% of treatment units lost", 0.5, 0.5 * 0.95 / (0.5 * 0.95 + 0.5)),
        ("50/50 test, 10% of treatment units lost", 0.5, 0.5 * 0.90 / (0.5 * 0.90 + 0.5)),
        ("guard, 20% of holdout units lost", 0.9, 0.9 / (0.9 + 0.1 * 0.8)),
    ]
    for index, (label, routed, actual) in enumerate(rows):
        chi_first, e_first = simulate_row(args.seed + index, args.replicates, args.units, routed, actual)
        chi_rate, e_rate = float(np.mean(~np.isnan(chi_first))), float(np.mean(~np.isnan(e_first)))
        if routed == actual:
            healthy[routed] = e_rate
        medians = "/".join(
            "never" if np.all(np.isnan(first)) else f"{np.nanmedian(first):.0f}"
            for first in (chi_first, e_first)
        )
        report.line(f"{label:<44} {chi_rate:>18.2%} {e_rate:>15.2%} {medians:>24}")
    # A rate of at most 0.1% over 4,000 streams: allow three standard errors of the binomial.
    allowed = SRM_P_VALUE + 3 * math.sqrt(SRM_P_VALUE * (1 - SRM_P_VALUE) / args.replicates)
    for share, rate in healthy.items():
        report.bar(
            f"healthy share {share}: e-value false pauses over all looks <= {SRM_P_VALUE} (+3 s.e.)",
            f"{rate:.2%}",
            rate <= allowed,
        )
    return report.finish(begun)


def simulate_row(
    seed: int, replicates: int, units: int, routed: float, actual: float
) -> tuple[FloatArray, FloatArray]:
    """First flags of streams whose units land on the treatment at ``actual`` while the check expects ``routed``."""
    rng = np.random.default_rng(seed)
    chi_first, e_first = [], []
    for start in range(0, replicates, CHUNK):
        count = min(CHUNK, replicates - start)
        chi, e, _ = _flags(rng.random((count, units)) < actual, routed)
        chi_first.append(first_flags(chi))
        e_first.append(first_flags(e))
    return np.concatenate(chi_first), np.concatenate(e_first)


if __name__ == "__main__":
    raise SystemExit(main())
