"""Bucket math: UTC grains, bucket starts, RFC 3339 and epoch-ms parsing and formatting."""

from __future__ import annotations

import enum
import functools
import re
import time
from datetime import UTC, datetime, timedelta

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
MINUTES_PER_HOUR = HOUR_MS // MINUTE_MS
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS = re.compile(r"-?[0-9]{1,16}\Z")


class Grain(enum.IntEnum):
    """A stored grain; the value is its bucket size in milliseconds (UTC has no leap seconds
    in epoch time, so every minute, hour and day has a fixed length)."""

    minute = MINUTE_MS
    hour = HOUR_MS
    day = DAY_MS

    @property
    def short(self) -> str:
        """One-letter tag used in Redis keys: m, h or d."""
        return self.name[0]


GRAINS: tuple[Grain, ...] = (Grain.minute, Grain.hour, Grain.day)
GRAIN_BY_NAME = {g.name: g for g in GRAINS}
GRAIN_BY_SHORT = {g.short: g for g in GRAINS}


def bucket_start(ts_ms: int, grain: Grain) -> int:
    """Start (epoch ms) of the bucket of this grain holding ts_ms."""
    return ts_ms - ts_ms % grain.value


def bucket_ceil(ts_ms: int, grain: Grain) -> int:
    """Smallest bucket boundary at or after ts_ms."""
    rem = ts_ms % grain.value
    return ts_ms if rem == 0 else ts_ms - rem + grain.value


@functools.lru_cache(maxsize=65_536)
def format_ts(ts_ms: int) -> str:
    """RFC 3339 UTC with a Z suffix; milliseconds only when not zero."""
    seconds, ms = divmod(ts_ms, 1000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    return f"{text}.{ms:03d}Z" if ms else text + "Z"


def to_datetime(ts_ms: int) -> datetime:
    """Aware UTC datetime for epoch ms (exact)."""
    return EPOCH + timedelta(milliseconds=ts_ms)


def from_datetime(dt: datetime) -> int:
    """Epoch ms of an aware datetime (exact, sub-millisecond part dropped)."""
    return (dt - EPOCH) // timedelta(milliseconds=1)


def parse_ts(value: str | int | float) -> int:
    """Epoch ms from an RFC 3339 string (offset required) or a number of epoch milliseconds.
    Raises ValueError with a reason."""
    if isinstance(value, bool):
        raise ValueError("expected RFC 3339 or epoch milliseconds")
    if isinstance(value, int | float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("not a finite number")
        return int(value)
    text = value.strip()
    if _EPOCH_MS.match(text):
        return int(text)
    if len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("expected RFC 3339 (e.g. 2026-11-23T10:00:00Z) or epoch milliseconds")
    try:
        dt = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1] in "Zz" else text)
    except ValueError as exc:
        raise ValueError(
            "expected RFC 3339 (e.g. 2026-11-23T10:00:00Z) or epoch milliseconds"
        ) from exc
    if dt.tzinfo is None:
        raise ValueError("RFC 3339 time needs an offset or Z")
    return from_datetime(dt)
