"""Retention of the raw log and minute rollups; reads and rebuilds past it; the nightly
reconcile's schedule."""

from __future__ import annotations

import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, format_ts, parse_ts
from counters.core.errors import BadRequest
from counters.engines.read.parse import parse_read
from counters.engines.rebuild import Rebuilder
from counters.engines.retention import apply_retention, minute_edge, raw_edge
from counters.engines.schedule import next_run
from tests.support import T0, Harness


async def count(h: Harness, table: str) -> int:
    async with h.pool.acquire() as conn:
        n: int = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE project = $1", h.project)
    return n


async def test_raw_partitions_and_minute_rows_age_out(harness: Harness) -> None:
    harness.clock.set(T0 + HOUR_MS)
    await harness.ingest({"name": "click", "ts": T0, "uid": "a"})
    harness.clock.set(T0 + 2 * HOUR_MS)
    await harness.persist()
    assert await count(harness, "raw_events") == 1
    minute_rows = await count(harness, "rollups_minute")
    assert minute_rows > 0
    hour_rows, day_rows = await count(harness, "rollups_hour"), await count(harness, "rollups_day")

    async with harness.pool.acquire() as conn:
        soon = await apply_retention(conn, T0 + 10 * DAY_MS, raw_days=90, minute_days=14)
        assert soon is not None  # (other tests' older rows may go; this project's stay)
        assert await count(harness, "rollups_minute") == minute_rows
        later = await apply_retention(conn, T0 + 15 * DAY_MS, raw_days=90, minute_days=14)
        assert later is not None and later.minute_rows_deleted >= minute_rows
        assert await count(harness, "rollups_minute") == 0
        assert await count(harness, "raw_events") == 1
        last = await apply_retention(conn, T0 + 92 * DAY_MS, raw_days=90, minute_days=14)
        assert last is not None and "raw_events_20260301" in last.dropped_partitions
    assert await count(harness, "raw_events") == 0
    assert await count(harness, "rollups_minute") == 0
    assert (await count(harness, "rollups_hour"), await count(harness, "rollups_day")) == (
        hour_rows,
        day_rows,
    )


def test_minute_reads_past_retention_name_the_oldest_minute() -> None:
    now = parse_ts("2026-11-23T10:17:30Z")
    oldest = minute_edge(now, 14)
    assert format_ts(oldest) == "2026-11-09T10:17:00Z"
    params = {"name": "click", "grain": "minute", "from": "2026-11-01T00:00:00Z"}
    with pytest.raises(BadRequest, match="2026-11-09T10:17:00Z") as info:
        parse_read(params, now, (), oldest_minute=oldest)
    assert info.value.code == "past_retention"
    assert parse_read({**params, "grain": "hour"}, now, (), oldest_minute=oldest).start == parse_ts(
        "2026-11-01T00:00:00Z"
    )


async def test_rebuild_refuses_what_the_raw_log_no_longer_holds(harness: Harness) -> None:
    harness.clock.set(T0 + 100 * DAY_MS)
    rb = Rebuilder(harness.pool, harness.redis, harness.settings, harness.persister)
    edge = raw_edge(harness.clock.now_ms(), harness.settings.raw_retention_days)
    with pytest.raises(ValueError, match="kept for 90 days"):
        await rb.run(harness.project, T0, T0 + DAY_MS)
    report = await rb.run(harness.project, edge, edge + MINUTE_MS, write=False)
    assert report.events == 0


@pytest.mark.parametrize(
    ("now", "at", "expected"),
    [
        ("2026-11-23T01:00:00Z", "03:30", "2026-11-23T03:30:00Z"),
        ("2026-11-23T03:30:00Z", "03:30", "2026-11-24T03:30:00Z"),
        ("2026-12-31T23:59:00Z", "00:00", "2027-01-01T00:00:00Z"),
    ],
)
def test_next_nightly_run(now: str, at: str, expected: str) -> None:
    assert format_ts(next_run(parse_ts(now), at)) == expected
