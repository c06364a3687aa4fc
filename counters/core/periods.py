"""Output buckets at any precision in any IANA time zone.

A precision is a fixed length, any whole number of minutes that divides the day (1m, 2m,
5m, 10m, 15m, 30m, 1h, 2h, 6h, 12h, ...; aligned to the zone's wall clock), or 1d,
1w (ISO, Monday) and 1mo (calendar) whose boundaries are local midnights, so a DST day
has 23 or 25 hours. Each output bucket is an interval [start, end) of UTC epoch ms; the
read path composes it from the stored UTC minute, hour and day buckets."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from counters.core.buckets import EPOCH, HOUR_MS, MINUTE_MS, format_ts, from_datetime

DAY_MINUTES = 24 * 60


def _fixed_name(minutes: int) -> str:
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


FIXED_MS = {_fixed_name(n): n * MINUTE_MS for n in range(1, DAY_MINUTES) if DAY_MINUTES % n == 0}
"""Every fixed precision by its canonical name: whole minutes dividing the day, spelled in
hours when whole hours (2h, not 120m)."""
CALENDAR = ("1d", "1w", "1mo")
PRECISIONS = (*FIXED_MS, *CALENDAR)
_SPELLED = re.compile(r"([0-9]{1,4})(m|h)")


def canonical_precision(text: str) -> str | None:
    """The canonical precision `text` names (120m -> 2h, 1440m and 24h -> 1d), None when it
    names none (a length that does not divide the day, or not a precision at all)."""
    if text in PRECISIONS:
        return text
    m = _SPELLED.fullmatch(text)
    if m is None:
        return None
    minutes = int(m.group(1)) * (60 if m.group(2) == "h" else 1)
    if minutes == DAY_MINUTES:
        return "1d"
    name = _fixed_name(minutes) if minutes else ""
    return name if name in FIXED_MS else None


def below_hour(precision: str) -> bool:
    """True for a fixed precision shorter than an hour (composed from minute buckets)."""
    return FIXED_MS.get(precision, HOUR_MS) < HOUR_MS


GRAIN_ALIASES = {"minute": "1m", "hour": "1h", "day": "1d"}
UTC_ZONE = ZoneInfo("UTC")


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone (UTC when None); ValueError naming a zone that does not exist."""
    if not name:
        return UTC_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name like Europe/Berlin)"
        ) from exc


def _local(ts_ms: int, tz: ZoneInfo) -> datetime:
    return (EPOCH + timedelta(milliseconds=ts_ms)).astimezone(tz)


def _midnight(d: date, tz: ZoneInfo) -> int:
    """First instant of local date d (epoch ms); a midnight skipped by DST maps forward."""
    return from_datetime(datetime(d.year, d.month, d.day, tzinfo=tz))


def _period_date(d: date, precision: str) -> date:
    if precision == "1w":
        return d - timedelta(days=d.weekday())
    if precision == "1mo":
        return d.replace(day=1)
    return d


def _next_date(d: date, precision: str) -> date:
    if precision == "1d":
        return d + timedelta(days=1)
    if precision == "1w":
        return d + timedelta(days=7)
    return date(d.year + d.month // 12, d.month % 12 + 1, 1)


def floor(ts_ms: int, precision: str, tz: ZoneInfo) -> int:
    """Start of the local period holding ts_ms."""
    size = FIXED_MS.get(precision)
    if size is not None:
        offset = _offset_ms(ts_ms, tz)
        local = ts_ms + offset
        return local - local % size - offset
    start = _midnight(_period_date(_local(ts_ms, tz).date(), precision), tz)
    if start > ts_ms:  # ts falls in a DST gap just after midnight: the period began earlier
        start = _midnight(_period_date(_local(ts_ms, tz).date() - timedelta(days=1), precision), tz)
    return start


def _offset_ms(ts_ms: int, tz: ZoneInfo) -> int:
    off = _local(ts_ms, tz).utcoffset()
    return 0 if off is None else off // timedelta(milliseconds=1)


def next_start(start_ms: int, precision: str, tz: ZoneInfo) -> int:
    """Start of the period after the one starting at start_ms."""
    size = FIXED_MS.get(precision)
    if size is not None:
        return start_ms + size
    d = _period_date(_local(start_ms, tz).date(), precision)
    return _midnight(_next_date(d, precision), tz)


def periods_back(end_ms: int, n: int, precision: str, tz: ZoneInfo) -> int:
    """Start of the n periods ending at the boundary end_ms."""
    size = FIXED_MS.get(precision)
    if size is not None:
        return end_ms - n * size
    start = end_ms
    for _ in range(n):
        start = floor(start - 1, precision, tz)
    return start


def periods_forward(start_ms: int, n: int, precision: str, tz: ZoneInfo) -> int:
    """End of the n periods starting at the boundary start_ms."""
    size = FIXED_MS.get(precision)
    if size is not None:
        return start_ms + n * size
    end = start_ms
    for _ in range(n):
        end = next_start(end, precision, tz)
    return end


def ceil(ts_ms: int, precision: str, tz: ZoneInfo) -> int:
    """Smallest period boundary at or after ts_ms."""
    start = floor(ts_ms, precision, tz)
    return start if start == ts_ms else next_start(start, precision, tz)


def periods(start_ms: int, end_ms: int, precision: str, tz: ZoneInfo) -> list[tuple[int, int]]:
    """The periods tiling [start_ms, end_ms), both boundaries of the precision."""
    out: list[tuple[int, int]] = []
    s = start_ms
    while s < end_ms:
        e = next_start(s, precision, tz)
        out.append((s, e))
        s = e
    return out


def label(ts_ms: int, tz: ZoneInfo) -> str:
    """RFC 3339 in the zone: Z for UTC, else the offset (2026-11-23T10:00:00+05:30)."""
    if tz.key == "UTC":
        return format_ts(ts_ms)
    return _local(ts_ms, tz).isoformat(timespec="seconds")


_SHORTEST_CALENDAR_HOURS = {"1d": 23, "1w": 7 * 24 - 1, "1mo": 28 * 24 - 1}
"""Hours of the shortest calendar period (a DST day loses an hour)."""


def shortest_period_ms(precision: str) -> int:
    """A lower bound on the length of any one period of this precision in any zone."""
    size = FIXED_MS.get(precision)
    return size if size is not None else _SHORTEST_CALENDAR_HOURS[precision] * HOUR_MS
