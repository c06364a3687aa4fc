"""Retention: raw-log partitions and minute rollups age out; hour and day rollups are kept
forever (counts and HLL registers only, no personal data)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import msgspec

from counters.core.buckets import DAY_MS, Grain, bucket_start, from_datetime, to_datetime
from persist.db import Conn

RETENTION_LOCK = 7_412_004
_PARTITION = re.compile(r"^raw_events_(\d{8})$")


class RetentionReport(msgspec.Struct):
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
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RETENTION_LOCK):
        return None
    try:
        edge = raw_edge(now_ms, raw_days)
        names = await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'raw_events'"
        )
        dropped: list[str] = []
        for row in names:
            m = _PARTITION.match(row["relname"])
            if m is None:
                continue
            day_ms = from_datetime(datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC))
            if day_ms + DAY_MS <= edge:
                await conn.execute(f"DROP TABLE IF EXISTS {row['relname']}")
                dropped.append(row["relname"])
        status = await conn.execute(
            "DELETE FROM rollups_minute WHERE bucket < $1",
            to_datetime(minute_edge(now_ms, minute_days)),
        )
        return RetentionReport(sorted(dropped), int(status.split()[-1]))
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", RETENTION_LOCK)
