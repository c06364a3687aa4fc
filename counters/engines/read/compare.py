"""The range a `compare` reads (pure): previous_period is the same number of periods just
before [start, end); previous_year starts at start moved back one calendar year in the
query's zone (Feb 29 -> Feb 28), rounded down to the precision, and has the same number
of periods too, so a comparison series has exactly as many points as the series."""

from __future__ import annotations

from datetime import timedelta
from zoneinfo import ZoneInfo

import msgspec

from counters.core.buckets import EPOCH, format_ts, from_datetime
from counters.core.errors import BadRequest
from counters.core.periods import floor, periods_back, periods_forward
from counters.engines.read.limits import period_count
from counters.engines.read.parse import MIN_TS, ReadQuery


def year_back(ts_ms: int, tz: ZoneInfo) -> int:
    """The same local wall-clock time one year earlier (Feb 29 -> Feb 28)."""
    local = (EPOCH + timedelta(milliseconds=ts_ms)).astimezone(tz)
    try:
        shifted = local.replace(year=local.year - 1)
    except ValueError:  # Feb 29
        shifted = local.replace(year=local.year - 1, day=28)
    return from_datetime(shifted)


def comparison_range(q: ReadQuery) -> tuple[int, int]:
    """[start, end) of the range q.compare names, as many periods as q's range; 400 when
    it would start before 1970."""
    n = period_count(q)
    tz = q.tz
    if q.compare == "previous_period":
        start, end = periods_back(q.start, n, q.precision, tz), q.start
    else:
        start = floor(year_back(q.start, tz), q.precision, tz)
        end = periods_forward(start, n, q.precision, tz)
    if start < MIN_TS:
        raise BadRequest(
            f"compare: the {q.compare} range of a read from {format_ts(q.start)} would start"
            " before 1970-01-01T00:00:00Z",
            code="bad_parameter",
        )
    return start, end


def comparison_query(q: ReadQuery) -> ReadQuery | None:
    """The same read over the range q.compare names (None when q compares nothing)."""
    if q.compare is None:
        return None
    start, end = comparison_range(q)
    return msgspec.structs.replace(q, start=start, end=end, compare=None)
