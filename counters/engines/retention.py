"""Retention: raw-log partitions and minute rollups age out; hour and day rollups are kept
forever (counts and HLL registers only, no personal data)."""

from __future__ import annotations

import msgspec

from counters.core.buckets import DAY_MS, Grain, bucket_start
from persist.db import Conn
from persist.locks import try_lock
from persist.rawlog import drop_partition, partitions
from persist.rollups import delete_minutes_before
from persist.schema import RETENTION_LOCK, partition_end


class RetentionReport(msgspec.Struct):
    """What one retention pass removed."""

    dropped_partitions: list[str]
    minute_rows_deleted: int


def raw_edge(now_ms: int, raw_days: int) -> int:
    """Oldest instant the raw log still holds (a UTC day boundary)."""
    return bucket_start(now_ms, Grain.day) - raw_days * DAY_MS


def minute_edge(now_ms: int, minute_days: int) -> int:
    """Oldest minute bucket still stored."""
    return bucket_start(now_ms, Grain.minute) - minute_days * DAY_MS


async def apply_retention(
    conn: Conn, now_ms: int, *, raw_days: int, minute_days: int
) -> RetentionReport | None:
    """Drops raw partitions wholly older than raw_days and deletes minute rollups older than
    minute_days. Returns None when another process is doing it right now."""
    async with try_lock(conn, RETENTION_LOCK) as held:
        if not held:
            return None
        edge = raw_edge(now_ms, raw_days)
        dropped = [
            await drop_partition(conn, day)
            for day in sorted((await partitions(conn)).values())
            if partition_end(day) <= edge
        ]
        deleted = await delete_minutes_before(conn, minute_edge(now_ms, minute_days))
        return RetentionReport(sorted(dropped), deleted)
