"""Each benchmark at a tiny size: it runs end to end and prints sane figures (the bars need full size)."""

from __future__ import annotations

import re

import pytest

from bench import (
    evaluate_scale,
    io_concurrency,
    latency,
    memory,
    promotion_mechanisms,
    promotion_quality,
    self_improvement,
    srm,
    throughput,
)

pytestmark = pytest.mark.integration


def _numbers(pattern: str, text: str) -> list[float]:
    found = re.search(pattern, text)
    assert found, f"{pattern!r} not in:\n{text}"
    return [float(group) for group in found.groups()]


def _bars(text: str, expected: int) -> None:
    bars = re.findall(r"^BAR .*: .* (PASS|FAIL)", text, re.MULTILINE)
    assert len(bars) == expected, text
    assert re.search(rf"== \d+/{expected} bars pass; took \d+ s", text), text


def test_throughput(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    throughput.main(
        [
            "--broker-url",
            broker_url,
            "--runs",
            "40",
            "--rounds",
            "2",
            "--count-runs",
            "20",
            "--settle-seconds",
            "0",
        ]
    )
    out = capsys.readouterr().out
    rates = {key: _numbers(rf"\({key}\) .* (\d+) runs in +([\d.]+) s: +(\d+) runs/s", out) for key in "abc"}
    for runs, seconds, rate in rates.values():
        assert runs == 40 and seconds > 0 and rate > 0
    ratio_b, ratio_c, _ = _numbers(r"b/a = ([\d.]+) +c/a = ([\d.]+) +b/c = ([\d.]+)", out)
    assert 0 < ratio_b < 5 and 0 < ratio_c < 5
    # Counted in the worker: at most one writing transaction per attempt (attempts recorded at the same moment
    # share one: group commit); over so few runs the cache's first reads are a large share, each its own.
    pattern = r"counting worker: ([\d.]+) transactions .*statements \(([\d.]+) writes, ([\d.]+) reads"
    transactions, writes, reads = _numbers(pattern, out)
    assert writes > 0 and 0 < transactions <= 1.0 + reads
    _bars(out, 2)


def test_io_concurrency(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    io_concurrency.main(
        ["--broker-url", broker_url, "--threads", "8", "--seconds", "0.3", "--alternations", "1"]
    )
    out = capsys.readouterr().out
    for workers in (1, 2):
        wre, share, ideal, bare, _, ratio = _numbers(
            rf"{workers} worker\(s\): wre +(\d+) runs/s = ([\d.]+)% of the ideal (\d+); "
            rf"bare Celery +(\d+) runs/s = ([\d.]+)%; wre/bare = ([\d.]+)",
            out,
        )
        assert ideal == 80 * workers and 0 < wre <= ideal and 0 < bare <= ideal and 0 < share <= 100
    _bars(out, 2)


def test_latency(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    latency.main(
        ["--broker-url", broker_url, "--runs", "20", "--alternations", "1", "--capacity-runs", "20", "--warmup", "5"]
    )
    out = capsys.readouterr().out
    for label in ("bare Celery no-op", "wre.execute_skill", "insert \\+ count \\(ref.\\)"):
        runs, p50, p99 = _numbers(rf"{label} +(\d+) runs: p50 ([\d.]+) ms, p99 ([\d.]+) ms", out)
        assert runs == 20 and 0 < p50 <= p99
    _bars(out, 2)


def test_memory(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    memory.main(["--broker-url", broker_url, "--runs", "40", "--chunk", "20", "--warmup", "10"])
    out = capsys.readouterr().out
    warm, end = _numbers(r"flat \(±5%\) over 40 runs: ([\d.]+) → ([\d.]+) MiB", out)
    assert warm > 0 and end > 0
    _bars(out, 1)


def test_self_improvement(broker_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    self_improvement.main(
        ["--broker-url", broker_url, "--skills", "2", "--runs", "60", "--seeds", "1", "--max-trials-per-arm", "20"]
    )
    out = capsys.readouterr().out
    assert _numbers(r"(\d+) runs \((\d+) attempts\)", out)[0] == 60
    rows = re.findall(r"^sim_\d\d +([\d.]+) +([\d.]+) +(\d+) \|", out, re.MULTILINE)
    assert [float(p0) for p0, _, _ in rows] == [0.35, 0.75]
    assert sum(int(runs) for _, _, runs in rows) == 60
    tested, promoted, archived, inconclusive = _numbers(
        r"variations tested (\d+): promoted (\d+), archived (\d+), inconclusive (\d+)", out
    )
    assert promoted + archived + inconclusive <= tested
    calls, live = _numbers(r"screenings, (\d+) agent calls next to (\d+) live runs", out)
    assert live == 60 and calls <= 0.2 * live  # the screening budget holds
    _bars(out, 5)


def test_evaluate_scale(capsys: pytest.CaptureFixture[str]) -> None:
    evaluate_scale.main(
        ["--tests", "200", "--small", "40", "--outcomes-per-test", "4", "--alternations", "1"]
    )
    out = capsys.readouterr().out
    assert "loaded 200 skills, 400 variations, 200 running tests" in out
    # One in 20 tests has a verdict: 2 of 40, 10 of 200; a second round finds none left.
    verdicts = [int(v) for v in re.findall(r"^ +\d+ with verdicts +(\d+)", out, re.MULTILINE)]
    assert verdicts == [2, 10]
    # A round without verdicts: the running tests, then their ledgers (pending trials, complete prefix).
    assert re.findall(r"^ +\d+ none left +0 +3 ", out, re.MULTILINE), out
    _bars(out, 2)


def test_srm(capsys: pytest.CaptureFixture[str]) -> None:
    srm.main(["--replicates", "40", "--units", "4000"])
    text = capsys.readouterr().out
    assert "the same mismatch at every look" in text
    [chi_square, e_value] = _numbers(r"healthy 50/50 test\s+([\d.]+)%\s+([\d.]+)%", text)
    assert 0.0 <= e_value <= chi_square <= 100.0
    [lost_chi, lost_e] = _numbers(r"guard, 20% of holdout units lost\s+([\d.]+)%\s+([\d.]+)%", text)
    assert lost_e > e_value and lost_chi > chi_square  # a real mismatch is paused more often than a healthy split
    _bars(text, 2)


def test_promotion_quality(capsys: pytest.CaptureFixture[str]) -> None:
    assert promotion_quality.main(["--replicates", "40", "--replay", "1", "--bars-only"]) in (0, 1)
    text = capsys.readouterr().out
    # The twin agreed with the policy (it raises otherwise), and every row with a bar printed its verdict.
    assert re.search(r"drift check: twin = policy on \d+ states", text), text
    assert len(re.findall(r"^(equal|worse|better) .*(PASS|FAIL) \|", text, re.MULTILINE)) == 4, text
    assert "seed rule at one look" in text


def test_promotion_mechanisms(capsys: pytest.CaptureFixture[str]) -> None:
    # Pure: no services. The twins are checked against scheduler/ first (a replay through bench.cohorts walks
    # every look in pure Python: too slow for a smoke run; tests/bench/test_cohorts.py covers the rule).
    assert promotion_mechanisms.main(["--replicates", "8", "--replay", "0"]) in (0, 1)
    text = capsys.readouterr().out
    for row in ("delay: equal", "clustered: 200 users", "novelty:", "drift:", "guard: holdout 0.70", "futility:"):
        assert row in text, text
    promoted = _numbers(r"delay: equal .*\| promoted ([\d.]+)%", text)
    assert 0.0 <= promoted[0] <= 100.0
    assert re.search(r"mechanisms at wre's defaults: (PASS|FAIL)", text), text
