"""Bounds on the work one read may ask for, checked from the parsed query before any
backend is touched: the bucket cap, the points limit (names x series x buckets), minute
retention on the rollup path and raw retention on the raw-log path."""

from __future__ import annotations

import functools

import msgspec

from counters.core.buckets import format_ts
from counters.core.errors import BadRequest
from counters.core.periods import FIXED_MS, periods, shortest_period_ms, zone
from counters.engines.read.parse import ReadQuery
from counters.engines.read.plan import MAX_SERIES_BUCKETS, check_range_retention

RAW_STATEMENT_TIMEOUT_SECONDS = 10.0
"""Longest one raw-log statement may run in Postgres (SET LOCAL statement_timeout)."""


class ReadLimits(msgspec.Struct, frozen=True):
    """The limits of one request (from the settings; the defaults are the settings')."""

    max_points: int = 100_000
    """Most points one reply may hold (settings.max_points)."""
    raw_row_budget: int = 5_000_000
    """Most raw-log rows one read may scan (settings.raw_row_budget)."""
    oldest_raw: int | None = None
    """Oldest instant the raw log still holds (raw_retention_days); None: not checked."""
    raw_timeout_seconds: float = RAW_STATEMENT_TIMEOUT_SECONDS


def period_count(q: ReadQuery) -> int:
    """The output periods of the query, refused (400 too_many_buckets) past
    MAX_SERIES_BUCKETS; bounded from the range before any period is built."""
    if (q.end - q.start) // shortest_period_ms(q.precision) > MAX_SERIES_BUCKETS:
        raise BadRequest(
            f"too many buckets asked for: at most {MAX_SERIES_BUCKETS} {q.precision} buckets per"
            " read (use a coarser precision or a shorter range)",
            code="too_many_buckets",
        )
    size = FIXED_MS.get(q.precision)
    if size is not None:
        return (q.end - q.start) // size
    return _count(q.start, q.end, q.precision, q.tz_name)


@functools.lru_cache(maxsize=1024)
def _count(start: int, end: int, precision: str, tz_name: str) -> int:
    """How many periods of a calendar precision tile [start, end) (memoized: polled
    dashboards ask the same range again and again)."""
    return len(periods(start, end, precision, zone(tz_name)))


def series_per_name(q: ReadQuery, projects: int = 0) -> int:
    """Series one name may answer with: a breakdown's top `limit` tuples plus __other__
    and __none__; across projects, one per project plus their union; else one."""
    if q.group_by:
        return q.limit + 2
    return projects + 1 if projects else 1


def check_points(q: ReadQuery, series: int, buckets: int, max_points: int) -> None:
    """400 too_many_points when names x series x buckets exceeds max_points (0 = no limit)."""
    asked = len(q.names) * series * buckets
    if max_points and asked > max_points:
        raise BadRequest(
            f"this read asks for up to {asked:,} points ({len(q.names)} names x {series} series"
            f" x {buckets} buckets); at most {max_points:,} per reply (max_points): ask fewer"
            " names, a smaller limit, a coarser precision or a shorter range",
            code="too_many_points",
        )


def reply_points(q: ReadQuery, *, total: bool) -> int:
    """The most points the reply of q may hold (a total: one per name), the compared
    range's included: what a batch adds up against max_points for its one reply."""
    per_name = 1 if total else series_per_name(q) * period_count(q)
    return len(q.names) * per_name * (2 if q.compare is not None else 1)


def raise_past_raw_retention(oldest_raw: int) -> None:
    """400 naming the oldest instant the raw log still holds."""
    raise BadRequest(
        f"the raw log (reads no rollup covers) is kept for raw_retention_days: the oldest"
        f" available time is {format_ts(oldest_raw)} (start later, or declare a cross-tab of"
        " these dims so rollups answer)",
        code="past_retention",
    )


def check_read(
    q: ReadQuery, limits: ReadLimits, oldest_minute: int, *, total: bool, projects: int = 0
) -> None:
    """Refuses (400) before any work a read over the bucket cap, over the points limit, or
    reaching past retention (minutes on the rollup path, the raw log on the raw path)."""
    buckets = period_count(q)
    if total:
        check_points(q, 1, 1, limits.max_points)
    else:
        check_points(q, series_per_name(q, projects), buckets, limits.max_points)
    if q.source == "raw":
        if limits.oldest_raw is not None and q.start < limits.oldest_raw:
            raise_past_raw_retention(limits.oldest_raw)
    else:
        check_range_retention(q, oldest_minute)
