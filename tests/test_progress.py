"""The progress tracker of rebuild and reconcile (engines/progress.py) on a manual clock:
never above 100 %, each day's plan replaced by its real count, rate and ETA from the real
rate; and its plain-line display."""

from __future__ import annotations

import io

import pytest

from counters.cli.report import BarDisplay, LineDisplay, progress_line
from counters.core.buckets import DAY_MS
from counters.core.clock import ManualClock
from counters.engines.progress import DayProgress, Snapshot
from tests.support import T0

D1 = T0 - T0 % DAY_MS
D2 = D1 + DAY_MS
D3 = D2 + DAY_MS


class Recorder:
    """A Display keeping every snapshot it is shown."""

    def __init__(self) -> None:
        self.snaps: list[Snapshot] = []
        self.closed = False

    def show(self, snap: Snapshot) -> None:
        self.snaps.append(snap)

    def close(self) -> None:
        self.closed = True


def test_total_starts_at_the_plan_and_days_are_capped_until_done() -> None:
    clock = ManualClock(T0)
    shown = Recorder()
    tracker = DayProgress({D1: 100, D2: 50}, clock, shown)
    assert tracker.snapshot().total == 150 and tracker.snapshot().done == 0
    tracker.advance(D1, 80)
    tracker.advance(D1, 40)  # ingest added events to D1: 120 > its plan of 100
    snap = tracker.snapshot()
    assert (snap.done, snap.total, snap.processed) == (100, 150, 120)
    tracker.day_done(D1, 120)  # the plan of D1 is replaced by its real count
    assert (tracker.snapshot().done, tracker.snapshot().total) == (120, 170)
    tracker.advance(D2, 30)
    tracker.day_done(D2, 30)  # fewer than planned (say, retention dropped some)
    snap = tracker.snapshot()
    assert (snap.done, snap.total, snap.percent) == (150, 150, 100)
    assert all(s.done <= s.total and s.percent <= 100 for s in shown.snaps)


def test_rate_and_eta_come_from_events_processed_over_elapsed_time() -> None:
    clock = ManualClock(T0)
    tracker = DayProgress({D1: 1_000, D2: 1_000}, clock)
    assert tracker.snapshot().rate == 0.0 and tracker.snapshot().eta_s is None
    clock.advance(2_000)
    tracker.advance(D1, 500)
    snap = tracker.snapshot()
    assert snap.rate == 250.0  # 500 events in 2 s
    assert snap.eta_s == 6.0  # 1,500 left at 250/s
    clock.advance(2_000)
    tracker.advance(D1, 700)  # 1,200 processed in D1, shown 1,000 until it is done
    snap = tracker.snapshot()
    assert snap.rate == 300.0 and snap.done == 1_000 and snap.eta_s == pytest.approx(1_000 / 300)


def test_finish_without_a_plan_and_days_never_processed() -> None:
    shown = Recorder()
    with DayProgress({}, ManualClock(T0), shown) as tracker:
        tracker.advance(D1, 12)  # a day the plan did not know (events arrived after it)
    assert (shown.snaps[-1].done, shown.snaps[-1].total) == (12, 12)
    tracker = DayProgress({D1: 5, D2: 9}, ManualClock(T0))
    tracker.advance(D1, 5)
    tracker.finish()  # D2 was never processed (nothing of it sealed): its plan goes
    assert (tracker.snapshot().done, tracker.snapshot().total) == (5, 5)


def test_a_failed_run_closes_the_display_without_a_final_line() -> None:
    shown = Recorder()
    with pytest.raises(RuntimeError), DayProgress({D1: 5}, ManualClock(T0), shown) as tracker:
        tracker.advance(D1, 2)
        raise RuntimeError("backend gone")
    assert shown.closed and not any(s.finished for s in shown.snaps)


def test_lines_at_most_every_interval_or_tenth_and_always_the_last() -> None:
    clock = ManualClock(T0)
    lines: list[str] = []
    with DayProgress({D1: 1_000}, clock, LineDisplay("rebuild p", lines.append)) as tracker:
        for _ in range(20):
            clock.advance(10)
            tracker.advance(D1, 5)  # 0.5 % each: a line at 10 %, none between
        assert len(lines) == 1 and lines[0].startswith("rebuild p: 100/1000 events (10%)")
        clock.advance(2_000)
        tracker.advance(D1, 1)  # the interval passed: a line although no new tenth
        assert len(lines) == 2
        tracker.advance(D1, 2_000)  # ingest added events: capped at the plan
        tracker.day_done(D1, 2_101)
    assert lines[-1].startswith("rebuild p: 2101/2101 events (100%)")
    assert lines[-1].endswith("ETA 0s")


def test_progress_line_names_rate_and_unknown_eta() -> None:
    snap = Snapshot(done=0, total=10, processed=0, elapsed_ms=0)
    assert progress_line("x", snap) == "x: 0/10 events (0%), 0 events/s, ETA ?"
    snap = Snapshot(done=999, total=1000, processed=999, elapsed_ms=1000)
    assert progress_line("x", snap) == "x: 999/1000 events (99%), 999 events/s, ETA 0s"


def test_the_bar_follows_the_moving_total() -> None:
    out = io.StringIO()
    clock = ManualClock(T0)
    bar = BarDisplay("rebuild p", file=out)
    with DayProgress({D1: 100}, clock, bar) as tracker:
        clock.advance(1_000)
        tracker.advance(D1, 150)
        assert (bar.bar.n, bar.bar.total) == (100, 100)
        tracker.day_done(D1, 150)
    assert (bar.bar.n, bar.bar.total) == (150, 150)
    assert "150 events/s" in out.getvalue()
