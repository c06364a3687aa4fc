"""Progress of a rebuild or reconcile that tells the truth while ingest adds events.

The total is planned per UTC day before the run (one GROUP BY over the raw log) and each
day's planned count is replaced by its real count when the day is done, so the total may
move but the events shown done never exceed it: within a day not done yet, progress is
capped at the day's plan. Events/s and ETA come from the real rate (events processed over
elapsed time, on an injected clock). How it is shown (a bar, plain lines) is a Display."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

import asyncpg

from counters.core.buckets import Grain, bucket_ceil, bucket_start
from counters.core.clock import Clock
from persist import rawlog


class Progress(Protocol):
    """What the rebuild engine reports while it runs (days: epoch ms of their UTC start)."""

    def advance(self, day: int, events: int) -> None:
        """`events` more raw events of UTC day `day` were just processed."""
        ...

    def day_done(self, day: int, events: int) -> None:
        """Day `day` is finished; `events` is the real number of its events processed."""
        ...


@dataclass(frozen=True)
class Snapshot:
    """Progress at one moment: done never exceeds total."""

    done: int
    """Events shown done (per day capped at its plan until the day is done)."""
    total: int
    """Planned events of the days not done plus the real events of the days done."""
    processed: int
    """Raw events really processed so far (uncapped: the rate counts them)."""
    elapsed_ms: int
    finished: bool = False

    @property
    def rate(self) -> float:
        """Events processed per second so far (0 before any time passed)."""
        return self.processed * 1000 / self.elapsed_ms if self.elapsed_ms > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the real rate (0 when nothing is left, None while unknown)."""
        left = self.total - self.done
        if left <= 0:
            return 0.0
        rate = self.rate
        return left / rate if rate > 0 else None

    @property
    def percent(self) -> int:
        """Whole percent done, rounded down (100 only when done == total), never above 100."""
        return 100 * self.done // self.total if self.total > 0 else 100


class Display(Protocol):
    """Shows snapshots (a terminal bar, plain lines); decides itself how often."""

    def show(self, snap: Snapshot) -> None:
        """Called on every change, and once with finished=True at the end of a run."""
        ...

    def close(self) -> None:
        """The run is over (finished or failed): release the terminal."""
        ...


class DayProgress:
    """The tracker the rebuild engine drives (Progress), from a plan of raw events per UTC
    day. Use as a context manager: leaving
    the block normally settles every day and shows the final snapshot (100 %)."""

    def __init__(
        self, plan: Mapping[int, int], clock: Clock, display: Display | None = None
    ) -> None:
        self._plan = dict(plan)
        self._clock = clock
        self._display = display
        self._started_ms = clock.now_ms()
        self._done: dict[int, int] = {}
        self._real: dict[int, int] = {}
        self._total = sum(self._plan.values())
        self._shown = 0
        self._processed = 0
        self._closed = False

    def advance(self, day: int, events: int) -> None:
        """Counts events just processed in `day`; shown at most up to the day's plan until
        day_done."""
        self._processed += events
        if day not in self._real:
            plan = self._plan.get(day, 0)
            before = self._done.get(day, 0)
            self._done[day] = before + events
            self._shown += min(before + events, plan) - min(before, plan)
        self._show()

    def day_done(self, day: int, events: int) -> None:
        """Replaces the day's plan by its real count `events` (in total and done)."""
        if day in self._real:
            was_total = was_shown = self._real[day]
        else:
            was_total = self._plan.get(day, 0)
            was_shown = min(self._done.get(day, 0), was_total)
        self._real[day] = events
        self._total += events - was_total
        self._shown += events - was_shown
        self._show()

    def snapshot(self, *, finished: bool = False) -> Snapshot:
        """Progress now."""
        elapsed = max(self._clock.now_ms() - self._started_ms, 0)
        return Snapshot(self._shown, self._total, self._processed, elapsed, finished)

    def finish(self) -> None:
        """The run completed: every day not reported done is settled at the events processed
        for it (so done == total), the final snapshot is shown and the display closed."""
        if self._closed:
            return
        for day, done in list(self._done.items()):
            if day not in self._real:
                self.day_done(day, done)
        for day in self._plan:
            if day not in self._real:
                self.day_done(day, 0)  # the run processed nothing of it
        if self._display is not None:
            self._display.show(self.snapshot(finished=True))
        self.close()

    def close(self) -> None:
        """Closes the display without a final snapshot (the run failed)."""
        if not self._closed and self._display is not None:
            self._display.close()
        self._closed = True

    def __enter__(self) -> DayProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()

    def _show(self) -> None:
        if self._display is not None and not self._closed:
            self._display.show(self.snapshot())


async def planned_days(
    pool: asyncpg.Pool, project: str, start: int, end: int, name: str | None
) -> dict[int, int]:
    """Raw events per UTC day of the whole days a rebuild of [start, end) covers (the plan
    of a DayProgress)."""
    first, last = bucket_start(start, Grain.day), bucket_ceil(end, Grain.day)
    async with pool.acquire() as conn:
        return await rawlog.count_raw_days(conn, project, first, last, name)
