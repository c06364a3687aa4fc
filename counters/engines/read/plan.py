"""Planning a read: which stored (grain, bucket) cells compose each output period, bounded
in size and refused (400) when they reach past minute retention."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

from counters.core.buckets import MINUTE_MS, Grain, bucket_ceil, bucket_start, format_ts
from counters.core.errors import BadRequest
from counters.core.periods import below_hour, periods, shortest_period_ms, zone

if TYPE_CHECKING:
    from counters.engines.read.parse import ReadQuery

Cell = tuple[Grain, int]
Piece = tuple[Grain, Sequence[int]]
Need = dict[Grain, list[int]]
MAX_SERIES_BUCKETS = 10_000
_STORED = {g.value: g for g in Grain}
_ONE_CELL = {"1m": Grain.minute, "1h": Grain.hour, "1d": Grain.day}
_LEVELS = (Grain.day, Grain.hour, Grain.minute)


def decompose(start: int, end: int) -> list[Piece]:
    """Splits a minute-aligned [start, end) into the fewest day, hour and minute buckets."""
    pieces: list[Piece] = []

    def split(lo: int, hi: int, level: int) -> None:
        if lo >= hi:
            return
        grain = _LEVELS[level]
        if grain is Grain.minute:
            pieces.append((grain, list(range(lo, hi, MINUTE_MS))))
            return
        first = bucket_ceil(lo, grain)
        last = bucket_start(hi, grain)
        if first >= last:
            split(lo, hi, level + 1)
            return
        split(lo, first, level + 1)
        pieces.append((grain, list(range(first, last, grain.value))))
        split(last, hi, level + 1)

    split(start, end, 0)
    return pieces


def span_cells(start: int, end: int) -> list[Cell]:
    """The fewest stored buckets tiling [start, end) (both rounded down to a minute)."""
    lo, hi = bucket_start(start, Grain.minute), bucket_start(end, Grain.minute)
    return [(g, b) for g, bs in decompose(lo, hi) for b in bs]


def whole(q: ReadQuery) -> list[Cell]:
    """The fewest stored buckets tiling the query's whole range (memoized per range: the
    same list for every read of it, never changed)."""
    return _whole(q.start, q.end)


@functools.lru_cache(maxsize=1024)
def _whole(start: int, end: int) -> list[Cell]:
    return span_cells(start, end)


def raise_past_retention(oldest_minute: int) -> NoReturn:
    """400 naming the oldest minute bucket still kept."""
    raise BadRequest(
        f"minute buckets past retention: the oldest available minute is"
        f" {format_ts(oldest_minute)} (use a coarser precision, or a whole-hour time zone,"
        " further back)",
        code="past_retention",
    )


def check_retention(cells: Sequence[Sequence[Cell]], oldest_minute: int) -> None:
    """400 when any minute cell is older than the oldest minute still kept."""
    if isinstance(cells, Planned):
        first = cells.first_minute
        if first is not None and first < oldest_minute:
            raise_past_retention(oldest_minute)
        return
    if cells and cells[0] and cells[0][0][0] is not Grain.minute and len(cells[0]) == 1:
        if all(len(p) == 1 for p in cells):
            return  # one non-minute bucket per period: nothing to check
    for period in cells:
        for grain, b in period:
            if grain is Grain.minute and b < oldest_minute:
                raise_past_retention(oldest_minute)


def check_range_retention(q: ReadQuery, oldest_minute: int) -> None:
    """400 when a minute precision starts, or the whole range needs minutes, past retention."""
    if below_hour(q.precision) and q.start < oldest_minute:
        raise_past_retention(oldest_minute)
    check_retention([whole(q)], oldest_minute)


class Planned(list[list[Cell]]):
    """The cells of each output period (a list of lists, as plan() always returned), with
    what every read of the plan derives from them computed once: the distinct stored
    buckets per grain (needed), each bucket's (piece, index) among them (at), and, when
    every period is one stored bucket, each period's (piece, index) (single). A plan is
    shared by every read of the same range and precision (plan() memoizes it): never
    changed after it is built."""

    __slots__ = ("_at", "_first_minute", "_needed", "_single")

    def __init__(self, cells: Iterable[list[Cell]]) -> None:
        super().__init__(cells)
        self._needed: Need | None = None
        self._at: dict[Cell, tuple[int, int]] | None = None
        self._single: list[tuple[int, int]] | None = None
        self._first_minute: int | None = None

    @property
    def needed(self) -> Need:
        if self._needed is None:
            self._needed = _need(self)
        return self._needed

    @property
    def at(self) -> dict[Cell, tuple[int, int]]:
        if self._at is None:
            self._at = positions(self.needed)
        return self._at

    @property
    def single(self) -> list[tuple[int, int]] | None:
        """Each period's (piece, index) when every period is one stored bucket, else None."""
        if self._single is None and all(len(p) == 1 for p in self):
            at = self.at
            self._single = [at[p[0]] for p in self]
        return self._single

    @property
    def first_minute(self) -> int | None:
        """The oldest minute bucket any period needs (None: no minute bucket)."""
        if self._first_minute is None:
            minutes = self.needed.get(Grain.minute)
            self._first_minute = minutes[0] if minutes else -1
        return None if self._first_minute == -1 else self._first_minute


def positions(needed: Need) -> dict[Cell, tuple[int, int]]:
    """(piece index, bucket index) of every cell in need()'s pieces."""
    at: dict[Cell, tuple[int, int]] = {}
    for p, (grain, buckets) in enumerate(needed.items()):
        for i, b in enumerate(buckets):
            at[(grain, b)] = (p, i)
    return at


def plan(q: ReadQuery) -> list[list[Cell]]:
    """The stored buckets composing each output period (memoized per range, precision and
    zone: the same Planned for every read that asks it)."""
    return _plan(q.start, q.end, q.precision, q.tz_name)


@functools.lru_cache(maxsize=1024)
def _plan(start: int, end: int, precision: str, tz_name: str) -> Planned:
    grain = _ONE_CELL.get(precision)
    if grain is not None and (grain is not Grain.day or tz_name == "UTC"):
        if start % grain.value == 0:  # every period is one stored bucket
            return Planned([(grain, b)] for b in range(start, end, grain.value))
    out: list[list[Cell]] = []
    for s, e in periods(start, end, precision, zone(tz_name)):
        grain = _STORED.get(e - s)
        if grain is not None and s % grain.value == 0:  # the period is one stored bucket
            out.append([(grain, s)])
        else:
            out.append(span_cells(s, e))
    return Planned(out)


def _too_many(message: str) -> BadRequest:
    return BadRequest(message, code="too_many_buckets")


def series_plan(q: ReadQuery, oldest_minute: int) -> list[list[Cell]]:
    """plan(q), refused (400) when it has too many periods or needs minute buckets past
    retention; the period count is bounded before any period is built."""
    if (q.end - q.start) // shortest_period_ms(q.precision) > MAX_SERIES_BUCKETS:
        raise _too_many(
            f"too many buckets asked for: at most {MAX_SERIES_BUCKETS} per series (use a coarser"
            " precision or a shorter range)"
        )
    cells = plan(q)
    if len(cells) > MAX_SERIES_BUCKETS:
        raise _too_many(f"{len(cells)} buckets asked for; at most {MAX_SERIES_BUCKETS} per series")
    if q.source == "rollups":
        check_retention(cells, oldest_minute)
    return cells


def need(cells: Sequence[Sequence[Cell]]) -> Need:
    """Every stored bucket the cells name, per grain, sorted and distinct (a Planned's
    own, computed once)."""
    if isinstance(cells, Planned):
        return cells.needed
    return _need(cells)


def _need(cells: Sequence[Sequence[Cell]]) -> Need:
    out: dict[Grain, set[int]] = {}
    for period in cells:
        for g, b in period:
            out.setdefault(g, set()).add(b)
    return {g: sorted(bs) for g, bs in out.items()}


def flatten(cells: Sequence[Sequence[Cell]]) -> list[Cell]:
    """Every cell of every period, in order."""
    return [cell for p in cells for cell in p]
