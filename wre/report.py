"""`wre report`: one self-contained HTML file with wre's history, for a browser without a network.

Fidelity over time per skill (finished runs, in buckets of consecutive runs) with promotions, rollbacks
and archives marked; each A/B test's arms with their success rates and Wilson 95% intervals, plus the
figures its decision recorded. Inline CSS and SVG only: no script, no font, no URL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

from db.figures import (
    ARCHIVED_EVENT,
    DEFAULT_FIDELITY_WINDOW,
    PROMOTED_EVENT,
    ROLLBACK_EVENT,
    FidelityBucket,
    RecentFidelity,
    SkillRunFigures,
    event_counts,
    fidelity_buckets,
    marked_events,
    recent_fidelity,
    run_figures,
)
from db.memory import AbTestRecord, PatternMemory
from db.screening import latest_screenings, screened
from wre.charts import IntervalRow, Marker, Point, Series, interval_chart, time_series_chart
from wre.context import number, percent

DEFAULT_BUCKETS = 30
# z for a two-sided 95% interval.
Z_95 = 1.959963984540054
FIDELITY_COLOR = "#2563eb"
SUCCESS_COLOR = "#059669"
ARM_COLORS = {"control": "#6b7280", "treatment": "#2563eb"}
EVENT_STYLE = {
    PROMOTED_EVENT: ("promoted", "#7c3aed"),
    ROLLBACK_EVENT: ("rollback", "#dc2626"),
    ARCHIVED_EVENT: ("archived", "#9ca3af"),
}
# Decision figures longer than this (nested structures) are left out of the report's figure lists.
MAX_FIGURE_CHARS = 80

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; margin: 2rem auto;
       max-width: 780px; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { margin-top: 2.2rem; border-bottom: 1px solid #e5e7eb; }
h3 { margin-bottom: 0.3rem; } .muted { color: #6b7280; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; } th, td { padding: 3px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; } thead th { border-bottom: 1px solid #d1d5db; }
.legend span { display: inline-block; margin-right: 1rem; } .swatch { display: inline-block; width: 14px;
       height: 3px; vertical-align: middle; margin-right: 4px; }
dl.figures { display: grid; grid-template-columns: max-content auto; gap: 0 1rem; margin: 0.3rem 0 1rem; }
dl.figures dt { color: #6b7280; } dl.figures dd { margin: 0; font-family: ui-monospace, monospace; }
svg { max-width: 100%; height: auto; } .when { white-space: nowrap; }
"""


@dataclass(frozen=True)
class Report:
    """A rendered report and what it covers."""

    html: str
    skills: int
    tests: int
    runs: int

    def summary(self) -> str:
        return f"{self.skills} skills, {self.tests} A/B tests, {self.runs} finished runs"


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success rate (sound at 0 and at n, unlike the normal one); no trials
    give the uninformative (0, 1); ``z`` is the normal quantile of its coverage (1.96 for 95%)."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be within 0..{trials}, got {successes}")
    rate = successes / trials
    denominator = 1 + z * z / trials
    centre = (rate + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def build_report(memory: PatternMemory, buckets: int = DEFAULT_BUCKETS, now: datetime | None = None) -> Report:
    """Render the report from the store, with ``buckets`` points per skill on the fidelity charts."""
    runs = run_figures(memory)
    recent = recent_fidelity(memory, DEFAULT_FIDELITY_WINDOW)
    first = recent_fidelity(memory, DEFAULT_FIDELITY_WINDOW, first_attempts=True)
    series = fidelity_buckets(memory, buckets)
    events = marked_events(memory)
    counts = event_counts(memory)
    tests = memory.list_ab_tests()
    total_runs = sum(figures.runs for figures in runs.values())
    generated = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")

    body = [
        "<h1>wre report</h1>",
        f'<p class="muted">Generated {escape(generated)}: {len(runs)} skills, {len(tests)} A/B tests, '
        f"{total_runs} finished runs.</p>",
        "<h2>Skills</h2>",
        '<p class="muted"><i>First-attempt fidelity</i> is a run\'s first attempt: the skill itself, what A/B '
        "tests compare and evolution should raise. <i>Delivered fidelity</i> is a run's final attempt, after "
        "ReAct retries: what the producer got. Repeated failure rate = retries / attempts.</p>",
        _skill_table(runs, recent, first, counts),
    ]
    for index, name in enumerate(runs):
        skill_events = [event for event in events if event["skill_name"] == name]
        body.append(_skill_section(index, name, series.get(name, []), skill_events))
    body.append("<h2>A/B tests</h2>")
    body.extend(_test_section(test) for test in tests)
    if not tests:
        body.append('<p class="muted">No A/B tests yet.</p>')
    body.append(_screening_section(latest_screenings(memory), total_runs))
    body.append("<h2>Promotions, rollbacks and archives</h2>")
    body.append(_event_table(events))
    html = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>wre report</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
    return Report(html=html, skills=len(runs), tests=len(tests), runs=total_runs)


def write_report(memory: PatternMemory, path: str | Path, buckets: int = DEFAULT_BUCKETS) -> str:
    """Render the report and write it to ``path`` (replaced if it exists); returns a one-line summary."""
    report = build_report(memory, buckets)
    Path(path).write_text(report.html, encoding="utf-8")
    return report.summary()


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    """An HTML table of cells that are HTML already (the callers escape what they put in)."""
    head = "".join(f"<th>{header}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _skill_table(
    runs: dict[str, SkillRunFigures],
    recent: dict[str, RecentFidelity],
    first: dict[str, RecentFidelity],
    counts: dict[tuple[str, str], int],
) -> str:
    rows = []
    for index, (name, figures) in enumerate(runs.items()):
        latest, first_tries = recent.get(name), first.get(name)
        rows.append([
            # The anchors match _skill_section's ids: the same order, by index (names may hold any text).
            f'<a href="#skill-{index}">{escape(name)}</a>', figures.runs, figures.retries,
            f"{figures.repeated_failure_rate:.0%}", number(first_tries.median if first_tries else None),
            number(latest.median if latest else None), percent(latest.success_rate if latest else None),
            counts.get((name, PROMOTED_EVENT), 0), counts.get((name, ROLLBACK_EVENT), 0),
        ])
    return _table(["skill", "runs", "retries", "repeated failure rate",
                   f"median first-attempt fidelity (latest {DEFAULT_FIDELITY_WINDOW})",
                   f"median delivered fidelity (latest {DEFAULT_FIDELITY_WINDOW})", "success rate", "promotions",
                   "rollbacks"], rows)


def _skill_section(index: int, name: str, buckets: list[FidelityBucket], events: list[dict[str, Any]]) -> str:
    heading = f'<section id="skill-{index}">\n<h3>{escape(name)}</h3>'
    if not buckets:
        return f'{heading}\n<p class="muted">No finished runs yet.</p>\n</section>'
    fidelity = Series("mean delivered fidelity", FIDELITY_COLOR,
                      [Point(b.middle_at, b.mean_fidelity, _bucket_tooltip(b)) for b in buckets])
    success = Series("success rate", SUCCESS_COLOR,
                     [Point(b.middle_at, b.success_rate, _bucket_tooltip(b)) for b in buckets], dashed=True)
    chart = time_series_chart(f"fidelity of {name} over time", [fidelity, success], [_marker(e) for e in events])
    kinds = {event["event_type"] for event in events}
    legend = [_swatch(FIDELITY_COLOR, "mean delivered fidelity of finished runs"), _swatch(SUCCESS_COLOR, "success rate")]
    legend += [_swatch(color, label) for kind, (label, color) in EVENT_STYLE.items() if kind in kinds]
    per_point = sum(b.runs for b in buckets) / len(buckets)
    return (
        f"{heading}\n{chart}\n"
        f'<p class="legend">{"".join(legend)}<span class="muted">about {per_point:.0f} runs per point, '
        "times in UTC; a break in a line is a time without runs</span></p>\n</section>"
    )


def _test_section(test: AbTestRecord) -> str:
    verdict = test.winner or ("undecided" if test.status == "running" else "none")
    heading = (
        f'<section id="test-{test.test_id}">\n<h3>A/B test {test.test_id}: {escape(test.skill_name)}</h3>\n'
        f'<p class="muted">{escape(test.status)}, policy {escape(test.policy)}, winner: {escape(verdict)}; '
        f'started <span class="when">{_time(test.started_at)}</span>'
        + (f', decided <span class="when">{_time(test.decided_at)}</span>' if test.decided_at else "")
        + "</p>"
    )
    rows, table = [], []  # the chart's rows, the table's rows
    for arm in ("control", "treatment"):
        trials, successes = int(getattr(test, f"{arm}_trials")), int(getattr(test, f"{arm}_successes"))
        version, fidelity = str(getattr(test, f"{arm}_version")), getattr(test, f"{arm}_fidelity")
        low, high = wilson_interval(successes, trials)
        rate = successes / trials if trials else None
        note = f"{arm} {version}: " + (
            f"{successes}/{trials} succeeded = {rate:.1%}, 95% interval {low:.1%} to {high:.1%}"
            if rate is not None else "no trials yet")
        rows.append(IntervalRow(arm, rate, low, high, ARM_COLORS[arm], note))
        table.append([arm, escape(version), trials, successes, percent(rate),
                      f"{low:.0%} to {high:.0%}" if trials else "-", number(fidelity)])
    chart = interval_chart(f"success rates of the arms of A/B test {test.test_id}", rows)
    headers = ["arm", "variation", "trials", "successes", "success rate", "Wilson 95% interval",
               "mean first-attempt fidelity"]
    return (f"{heading}\n{chart}\n{_table(headers, table)}\n"
            f"{_decision_words(test)}{_decision_figures(test.decision)}</section>")


# What each figure a policy records means, in words (figures without an entry are listed by their key).
FIGURE_MEANINGS = {
    "lift": "treatment's success rate minus control's",
    "statistic": "the evidence for the verdict (log-likelihood ratio of the sequential test)",
    "threshold": "the evidence a verdict needs: log(1/alpha)",
    "evidence_treatment": "evidence that treatment is better",
    "evidence_control": "evidence that control is better",
    "critical_lift": "the smallest |lift| that would decide at these counts",
    "lift_ci_low": "lower end of the lift's always-valid interval",
    "lift_ci_high": "upper end of the lift's always-valid interval",
    "control_rate": "control's success rate",
    "treatment_rate": "treatment's success rate",
}
WORDS_OF_WINNER = {
    "treatment": "Promoted: the treatment won",
    "control": "Archived: the control won",
    "inconclusive": "Closed inconclusive: the per-arm maximum came without a verdict; the treatment was archived",
}


def _decision_words(test: AbTestRecord) -> str:
    """What decided the test, in a sentence: the verdict, the lift, the evidence against its bar, the counts."""
    decision = test.decision or {}
    if not test.winner:
        return ""
    said = [WORDS_OF_WINNER.get(test.winner, f"Decided: {test.winner}")]
    lift = decision.get("lift")
    if isinstance(lift, int | float):
        said.append(f"at a lift of {lift:+.2f} (treatment {percent(decision.get('treatment_rate'))} "
                    f"vs control {percent(decision.get('control_rate'))} success)")
    statistic, threshold = decision.get("statistic"), decision.get("threshold")
    if isinstance(statistic, int | float) and isinstance(threshold, int | float):
        said.append(f"with evidence {statistic:.3g} against the {threshold:.3g} a verdict needs")
    said.append(f"after {test.control_trials} control and {test.treatment_trials} treatment trials, "
                f"by the {test.policy} policy")
    reason = decision.get("reason")
    text = ", ".join(said) + "." + (f" The policy said: {reason}." if isinstance(reason, str) else "")
    return f"<p>{escape(text)}</p>\n"


def _decision_figures(decision: dict[str, Any] | None) -> str:
    """The decision's own figures, each with what it means (flat values only)."""
    if not decision:
        return ""
    items = []
    for key, value in sorted(decision.items()):
        shown = _figure(value)
        if shown is not None and key != "reason":
            meaning = FIGURE_MEANINGS.get(key, "")
            items.append(
                f"<dt>{escape(str(key))}</dt><dd>{escape(shown)}"
                + (f' <span class="muted">— {escape(meaning)}</span>' if meaning else "")
                + "</dd>"
            )
    if not items:
        return ""
    return '<p class="muted">The figures the decision recorded:</p>\n<dl class="figures">' + "".join(items) + "</dl>\n"


def _figure(value: Any) -> str | None:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool | int | str) or value is None:
        text = str(value)
    elif isinstance(value, list | tuple) and all(isinstance(v, int | float) for v in value):
        text = "[" + ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value) + "]"
    else:
        return None
    return text if len(text) <= MAX_FIGURE_CHARS else None


def _screening_section(screenings: list[dict[str, Any]], total_runs: int) -> str:
    """Candidates screened by replay before live traffic: what each screening spent, scored and chose."""
    heading = "<h2>Screening</h2>"
    if not screenings:
        return f'{heading}\n<p class="muted">No screenings yet.</p>'
    calls = sum(int(item["details"].get("calls", 0)) for item in screenings)
    share = f" ({calls / total_runs:.1%} of the finished runs)" if total_runs else ""
    rows = []
    for item in screenings:
        details = item["details"]
        parent = details.get("parent", {})
        candidates = details.get("candidates", [])  # the last round's, which the sign test judged
        best = max((c.get("fidelity", 0.0) for c in candidates), default=None)
        rounds, screened_count = screened(details)
        inputs = details.get("inputs", {})
        tokens = details.get("tokens")
        rows.append([
            _time(item["created_at"]), escape(item["skill_name"]), f"{screened_count} in {rounds}",
            f"{inputs.get('failed', 0)} / {inputs.get('passed', 0)}", details.get("calls", 0),
            "-" if tokens is None else tokens, f"{number(parent.get('fidelity'))} → {number(best)}",
            escape(details.get("chosen") or "none"),
        ])
    return (
        f'{heading}\n<p class="muted">Candidates replayed with production on recorded inputs before any live '
        f"traffic (replays are not runs): {len(screenings)} screenings, {calls} agent calls{share}.</p>\n"
        + _table(["time (UTC)", "skill", "candidates in rounds", "inputs failed / passed", "calls", "tokens",
                  "replay fidelity (last round): production → best", "chosen"], rows)
    )


def _event_table(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="muted">None yet.</p>'
    rows = []
    for event in events:
        label, color = EVENT_STYLE[event["event_type"]]
        rows.append([
            f'<span class="when">{_time(event["created_at"])}</span>', escape(event["skill_name"]),
            f'<span style="color:{color}">{label}</span>', escape(event["variation_id"] or "-"),
            f"{number(event['fidelity_before'])} → {number(event['fidelity_after'])}",
            escape(event["description"] or ""),
        ])
    return _table(["time (UTC)", "skill", "event", "variation", "first-attempt fidelity before → after", "what"],
                  rows)


def _marker(event: dict[str, Any]) -> Marker:
    label, color = EVENT_STYLE[event["event_type"]]
    before, after = event["fidelity_before"], event["fidelity_after"]
    tooltip = f"{label} {event['variation_id'] or ''} at {_time(event['created_at'])}"
    if before is not None and after is not None:
        tooltip += f": fidelity {before:.2f} → {after:.2f}"
    return Marker(event["created_at"], label, color, tooltip)


def _bucket_tooltip(bucket: FidelityBucket) -> str:
    return (f"{bucket.runs} runs, {_time(bucket.first_at)} to {_time(bucket.last_at)}: "
            f"mean fidelity {bucket.mean_fidelity:.2f}, success rate {bucket.success_rate:.0%}")


def _swatch(color: str, label: str) -> str:
    return f'<span><i class="swatch" style="background:{color}"></i>{escape(label)}</span>'


def _time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")
