"""`wre report`: the HTML file rendered from a seeded Postgres store is complete, escaped, offline and well formed."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.integration.store_seed import ALPHA, BETA, IDLE, TRICKY, Seeded, empty_store, seed
from tests.processes import service_env
from wre.report import build_report, wilson_interval

pytestmark = pytest.mark.integration

VOID_ELEMENTS = {"meta", "br", "hr", "img", "input", "link", "col", "area", "base", "embed", "source", "wbr"}
# Anything that would make a browser fetch something.
FETCHING = re.compile(r"<script|<link|<iframe|<img|<object|@import|url\(|https?:|//[a-z]", re.IGNORECASE)
REFERENCE = re.compile(r"""\b(?:src|href|xlink:href|action|srcset)\s*=\s*["']?([^"'\s>]*)""", re.IGNORECASE)


class TagBalance(HTMLParser):
    """Fails on a closing tag that does not close the innermost open element; records ids."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value]
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value]

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, f"</{tag}> closes {self.open[-1:]}"
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(html: str) -> TagBalance:
    parser = TagBalance()
    parser.feed(html)
    parser.close()
    assert parser.open == [], f"unclosed: {parser.open}"
    return parser


def section(html: str, element_id: str) -> str:
    start = html.index(f'id="{element_id}"')
    return html[start : html.index("</section>", start)]


@pytest.fixture
def seeded(database_url: str) -> Seeded:
    return seed(empty_store(database_url))


def test_report_covers_every_skill_and_test(seeded: Seeded) -> None:
    report = build_report(seeded.memory, buckets=2)
    parsed = parse(report.html)
    text = "".join(parsed.text)
    for skill in (ALPHA, BETA, IDLE, TRICKY):
        assert skill in text
    assert (report.skills, report.tests, report.runs) == (4, 3, 5)
    for test_id in (seeded.running_test, seeded.promoted_test, seeded.archived_test):
        assert f"test-{test_id}" in parsed.ids
        assert f"A/B test {test_id}: " in text
    # Every in-page link lands on an element of the page.
    for target in REFERENCE.findall(report.html):
        assert target.startswith("#") and target[1:] in parsed.ids, target


def test_report_is_offline_and_escaped(seeded: Seeded) -> None:
    html = build_report(seeded.memory).html
    assert FETCHING.search(html) is None, FETCHING.search(html)
    assert TRICKY not in html  # the raw name would be markup
    assert "a&lt;b&gt;&amp;&quot;c" in html


def test_fidelity_chart_buckets_consecutive_runs(seeded: Seeded) -> None:
    html = build_report(seeded.memory, buckets=2).html
    alpha = section(html, "skill-1")
    assert "<h3>alpha</h3>" in alpha
    # alpha's finished runs, oldest first: 1.0, 1.0, 0.0; two buckets of consecutive runs: (1.0, 1.0), (0.0).
    assert alpha.count("<circle") == 4  # two points on each of the two lines
    assert re.search(r"<title>2 runs, [^<]*: mean fidelity 1\.00, success rate 100%</title>", alpha)
    assert re.search(r"<title>1 runs, [^<]*: mean fidelity 0\.00, success rate 0%</title>", alpha)
    assert 'class="marker"' not in alpha
    beta = section(html, "skill-2")
    markers = re.findall(r'<g class="marker"><title>(\w+) ', beta)
    assert markers == ["promoted", "rollback", "archived"]
    assert "No finished runs yet." in section(html, "skill-3")  # idle


def test_each_arm_has_its_wilson_interval(seeded: Seeded) -> None:
    html = build_report(seeded.memory).html
    running = section(html, f"test-{seeded.running_test}")
    low, high = wilson_interval(2, 3)
    assert f"control {seeded.memory.get_ab_test(seeded.running_test).control_version}" in running  # type: ignore[union-attr]
    assert f"2/3 succeeded = 66.7%, 95% interval {low:.1%} to {high:.1%}" in running
    assert "2/2 succeeded = 100.0%" in running
    assert "undecided" in running and "figures" not in running  # a running test has no decision yet
    promoted = section(html, f"test-{seeded.promoted_test}")
    assert "winner: treatment" in promoted
    assert "<dt>lift_interval</dt><dd>[0.05, 0.4]</dd>" in promoted  # the decision's own figures
    # ... and in words: what promoted it, at which lift and evidence, after how many trials.
    assert "Promoted: the treatment won" in promoted and "trials, by the" in promoted
    assert '<span class="when">' in promoted and ".when { white-space: nowrap; }" in html  # one line
    archived = section(html, f"test-{seeded.archived_test}")
    assert "winner: control" in archived and "0/1 succeeded" in archived
    assert "no trials yet" in archived  # its control arm had none


def test_wre_report_command(database_url: str, broker_url: str, seeded: Seeded, tmp_path: Path) -> None:
    wre = str(Path(sys.executable).with_name("wre"))
    env = service_env(database_url, broker_url)
    output = tmp_path / "report.html"
    done = subprocess.run([wre, "report", "--output", str(output)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "4 skills, 3 A/B tests, 5 finished runs" in done.stdout
    assert "a&lt;b&gt;&amp;&quot;c" in output.read_text()
    missing = tmp_path / "no-such-dir" / "report.html"
    done = subprocess.run([wre, "report", "-o", str(missing)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "no-such-dir" in done.stderr


def test_idle_gaps_are_gaps() -> None:
    from datetime import UTC, datetime, timedelta

    from wre.charts import Point, Series, segments, time_series_chart

    start = datetime(2026, 1, 1, tzinfo=UTC)
    # Runs every minute for ten minutes, nothing for a day, then ten more minutes of runs.
    moments = [start + timedelta(minutes=m) for m in range(10)]
    moments += [start + timedelta(days=1, minutes=m) for m in range(10)]
    points = [Point(moment, 0.5) for moment in moments]
    assert [len(part) for part in segments(points)] == [10, 10]
    assert [len(part) for part in segments(points[:10])] == [10]  # steady traffic: one line
    chart = time_series_chart("gap", [Series("fidelity", "#000", points)], [])
    assert chart.count("<polyline") == 2
