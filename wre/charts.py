"""Inline SVG charts for the HTML report: a time series with event markers, and intervals on a 0..1 scale.

Plain SVG strings, no JavaScript and no external resource, so the report opens anywhere without a network.
Hover text comes from SVG ``<title>`` elements. Every caller-provided text is escaped here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

WIDTH = 720
HEIGHT = 240
MARGIN_LEFT = 44
MARGIN_RIGHT = 16
MARGIN_TOP = 18
MARGIN_BOTTOM = 30
Y_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
X_TICKS = 5
POINT_RADIUS = 3
MARKER_LABEL_ROWS = 3
MARKER_LABEL_STEP = 12
# A marker this close to the right edge puts its label on its left.
MARKER_LABEL_ROOM = 70
# A step between two points this many times the series' median step is a gap: no line is drawn across it.
GAP_FACTOR = 4.0
# A series whose times all coincide still needs a visible x span.
MIN_SPAN_SECONDS = 1.0
INTERVAL_ROW_HEIGHT = 34
INTERVAL_LABEL_WIDTH = 96
AXIS_COLOR = "#9ca3af"
GRID_COLOR = "#e5e7eb"
TEXT_COLOR = "#374151"


@dataclass(frozen=True)
class Point:
    at: datetime
    value: float
    tooltip: str = ""


@dataclass(frozen=True)
class Series:
    name: str
    color: str
    points: list[Point]
    dashed: bool = False


@dataclass(frozen=True)
class Marker:
    """A vertical line at a moment, e.g. a promotion."""

    at: datetime
    label: str
    color: str
    tooltip: str = ""


@dataclass(frozen=True)
class IntervalRow:
    """One estimate with its interval on 0..1, e.g. an A/B arm's success rate."""

    label: str
    estimate: float | None
    low: float
    high: float
    color: str
    note: str = ""


def epoch(moment: datetime) -> float:
    """Seconds since the epoch; a naive time (SQLite stores them so) is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def time_label(moment: float, span_seconds: float) -> str:
    """A tick label as precise as the span needs: seconds for a demo, dates for months of runs."""
    value = datetime.fromtimestamp(moment, UTC)
    if span_seconds < 3600:
        return value.strftime("%H:%M:%S")
    if span_seconds < 2 * 86400:
        return value.strftime("%m-%d %H:%M")
    return value.strftime("%Y-%m-%d")


def time_series_chart(title: str, series: list[Series], markers: list[Marker]) -> str:
    """An SVG chart of values in 0..1 over time (UTC), with vertical markers drawn behind the lines."""
    moments = [epoch(p.at) for s in series for p in s.points] + [epoch(m.at) for m in markers]
    if not moments:
        return ""
    start, end = min(moments), max(moments)
    if end - start < MIN_SPAN_SECONDS:
        start, end = start - MIN_SPAN_SECONDS / 2, end + MIN_SPAN_SECONDS / 2
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def x(moment: float) -> float:
        return MARGIN_LEFT + (moment - start) / (end - start) * plot_width

    def y(value: float) -> float:
        return MARGIN_TOP + (1.0 - max(0.0, min(1.0, value))) * plot_height

    parts = [_svg_open(WIDTH, HEIGHT, title)]
    for tick in Y_TICKS:
        parts.append(_line(MARGIN_LEFT, y(tick), WIDTH - MARGIN_RIGHT, y(tick), GRID_COLOR))
        parts.append(_text(MARGIN_LEFT - 6, y(tick) + 4, f"{tick:.2f}", anchor="end"))
    for index in range(X_TICKS):
        moment = start + (end - start) * index / (X_TICKS - 1)
        anchor = "start" if index == 0 else "end" if index == X_TICKS - 1 else "middle"
        parts.append(_text(x(moment), HEIGHT - 10, time_label(moment, end - start), anchor=anchor))
    parts.append(_line(MARGIN_LEFT, y(0.0), WIDTH - MARGIN_RIGHT, y(0.0), AXIS_COLOR))
    for index, marker in enumerate(markers):
        left = x(epoch(marker.at))
        # Events close in time would print their labels on top of each other: stagger them in rows.
        label_y = MARGIN_TOP + MARKER_LABEL_STEP * (1 + index % MARKER_LABEL_ROWS)
        anchor = "end" if left > WIDTH - MARGIN_RIGHT - MARKER_LABEL_ROOM else "start"
        offset = -3 if anchor == "end" else 3
        parts.append(
            f'<g class="marker"><title>{escape(marker.tooltip or marker.label)}</title>'
            + _line(left, MARGIN_TOP, left, y(0.0), marker.color, dashed=True, width=1.5)
            + _text(left + offset, label_y, marker.label, anchor=anchor, color=marker.color)
            + "</g>"
        )
    for line in series:
        dash = ' stroke-dasharray="5 4"' if line.dashed else ""
        for segment in segments(line.points):
            coordinates = " ".join(f"{x(epoch(p.at)):.1f},{y(p.value):.1f}" for p in segment)
            parts.append(
                f'<polyline fill="none" stroke="{line.color}" stroke-width="2"{dash} points="{coordinates}">'
                f"<title>{escape(line.name)}</title></polyline>"
            )
        for point in line.points:
            parts.append(
                f'<circle cx="{x(epoch(point.at)):.1f}" cy="{y(point.value):.1f}" r="{POINT_RADIUS}" '
                f'fill="{line.color}"><title>{escape(point.tooltip)}</title></circle>'
            )
    parts.append("</svg>")
    return "\n".join(parts)


def segments(points: list[Point], gap_factor: float = GAP_FACTOR) -> list[list[Point]]:
    """The points split where time jumps: a step over ``gap_factor`` times the median step is an idle gap,
    drawn as a gap rather than as a straight line that suggests runs where there were none."""
    if len(points) < 3:
        return [points] if points else []
    steps = sorted(epoch(b.at) - epoch(a.at) for a, b in zip(points, points[1:], strict=False))
    limit = gap_factor * max(steps[len(steps) // 2], MIN_SPAN_SECONDS)
    parts = [[points[0]]]
    for before, point in zip(points, points[1:], strict=False):
        if epoch(point.at) - epoch(before.at) > limit:
            parts.append([])
        parts[-1].append(point)
    return parts


def interval_chart(title: str, rows: list[IntervalRow]) -> str:
    """An SVG of estimates with their intervals on a 0..1 axis, one row each (without an estimate: label
    and note only)."""
    height = MARGIN_TOP + len(rows) * INTERVAL_ROW_HEIGHT + MARGIN_BOTTOM
    left, right = MARGIN_LEFT + INTERVAL_LABEL_WIDTH, WIDTH - MARGIN_RIGHT

    def x(value: float) -> float:
        return left + max(0.0, min(1.0, value)) * (right - left)

    bottom = height - MARGIN_BOTTOM
    parts = [_svg_open(WIDTH, height, title)]
    for tick in Y_TICKS:
        parts.append(_line(x(tick), MARGIN_TOP, x(tick), bottom, GRID_COLOR))
        parts.append(_text(x(tick), bottom + 16, f"{tick:.0%}", anchor="middle"))
    for index, row in enumerate(rows):
        middle = MARGIN_TOP + (index + 0.5) * INTERVAL_ROW_HEIGHT
        parts.append(_text(MARGIN_LEFT, middle + 4, row.label))
        if row.estimate is None:
            parts.append(_text(left + 4, middle + 4, row.note or "no trials yet"))
            continue
        parts.append(
            f"<g><title>{escape(row.note)}</title>"
            + _line(x(row.low), middle, x(row.high), middle, row.color, width=4)
            + _line(x(row.low), middle - 7, x(row.low), middle + 7, row.color, width=2)
            + _line(x(row.high), middle - 7, x(row.high), middle + 7, row.color, width=2)
            + f'<circle cx="{x(row.estimate):.1f}" cy="{middle:.1f}" r="5" fill="#ffffff" '
            f'stroke="{row.color}" stroke-width="2.5"/></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_open(width: int, height: int, title: str) -> str:
    return (
        # No xmlns: HTML5 puts inline <svg> in the SVG namespace itself, and the report names no URL at all.
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">'
        f"<title>{escape(title)}</title>"
    )


def _line(x1: float, y1: float, x2: float, y2: float, color: str, dashed: bool = False, width: float = 1.0) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{color}" stroke-width="{width}"{dash}/>'


def _text(x: float, y: float, content: str, anchor: str = "start", color: str = TEXT_COLOR) -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" fill="{color}" font-size="11">{escape(content)}</text>'
