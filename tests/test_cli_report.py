"""Terminal output of rebuild and reconcile: progress lines and one line per differing row."""

from __future__ import annotations

from counters.cli.report import Ticker
from counters.engines.rebuild import BucketDiff
from counters.engines.reconcile import describe


def test_ticker_reports_at_most_every_interval_and_at_the_end() -> None:
    lines: list[str] = []
    tick = Ticker("rebuild p", 10, lines.append, every=1e12)
    tick(4)  # within the interval: silent
    tick(4)
    tick(2)  # done: always a line
    assert len(lines) == 1
    assert lines[0].startswith("rebuild p: 10/10 events (100%)") and lines[0].endswith("ETA 0s")
    every: list[str] = []
    tick = Ticker("x", 4, every.append, every=0.0)
    tick(1)
    tick(1)
    assert [line.split(",")[0] for line in every] == ["x: 1/4 events (25%)", "x: 2/4 events (50%)"]


def test_describe_names_what_differs() -> None:
    diff = BucketDiff(
        "hour", "2026-03-01T10:00:00Z", "click", "country,source", ["DE", "a"], 5, 7, 0, 0, True
    )
    assert describe(diff) == (
        "hour 2026-03-01T10:00:00Z click country=DE,source=a:"
        " count 5 -> 7 (+2), uniques sketch differs"
    )
    total = BucketDiff("day", "2026-03-01T00:00:00Z", "buy", "", [], 3, 3, 1_500_000, 0, False)
    assert describe(total) == "day 2026-03-01T00:00:00Z buy (total): sum 1.5 -> 0"
