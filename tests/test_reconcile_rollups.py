"""Reconcile checks sealed hour and day rows against the minute rows they are made of
(counts, sums, HLL registers), reports them like rebuild's diffs, repairs them and agrees
with rebuild afterwards; the issue's case (the hour in progress lost with Redis) included."""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, format_ts, to_datetime
from counters.engines.rebuild import Rebuilder
from counters.engines.reconcile import reconcile_projects
from counters.engines.retention import minute_edge
from counters.engines.rollcheck import RollupChecker, day_spans, parts_edge
from persist.hll import registers, union_registers
from persist.state import load_state
from tests.support import T0, Harness

DAY0 = T0 - T0 % DAY_MS


def ev(rng: random.Random, ts: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "click",
        "ts": ts,
        "dims": {"source": rng.choice("ab")},
        "uid": f"u{rng.randrange(300)}",
        "value": rng.randrange(1, 10_000) / 100,
    }
    base.update(kw)
    return base


async def test_union_registers_is_what_pfmerge_holds(harness: Harness) -> None:
    r = harness.redis
    rng = random.Random(2)
    names = [harness.keys.tmp(f"union-{i}") for i in range(6)]
    for i, name in enumerate(names):  # sparse ones, and one dense (5,000 uids)
        size = 5_000 if i == 3 else rng.randrange(1, 200)
        await r.pfadd(name, *[f"u{rng.randrange(50_000)}" for _ in range(size)])
    blobs = [await r.get(n) for n in names]
    assert {b[4] for b in blobs if b} == {0, 1}
    merged = harness.keys.tmp("union-all")
    await r.pfmerge(merged, *names)
    assert union_registers([*blobs, None]) == registers(await r.get(merged))
    assert union_registers([blobs[0]]) == registers(blobs[0])
    assert union_registers([]) == registers(None)
    await r.delete(merged, *names)


def rebuilder(h: Harness) -> Rebuilder:
    return Rebuilder(h.pool, h.redis, h.settings, h.persister)


async def populate(h: Harness, n: int = 400, seed: int = 5) -> list[dict[str, Any]]:
    """Events over three hours of DAY0, persisted at T0 + 4h (hours sealed, day not)."""
    rng = random.Random(seed)
    h.clock.set(T0 + 3 * HOUR_MS)
    events = [ev(rng, T0 + rng.randrange(3 * HOUR_MS)) for _ in range(n)]
    await h.ingest(*events)
    h.clock.set(T0 + 4 * HOUR_MS)
    await h.persist()
    return events


async def reconcile(h: Harness, *, write: bool, days: int = 1) -> tuple[int, list[str]]:
    lines: list[str] = []
    found = await reconcile_projects(
        rebuilder(h),
        [h.project],
        now_ms=h.clock.now_ms(),
        days=days,
        write=write,
        echo=lines.append,
    )
    return found, lines


async def execute(pool: asyncpg.Pool, sql: str, *args: Any) -> None:
    async with pool.acquire() as conn:
        await conn.execute(sql, *args)


async def test_a_missing_hour_row_is_reported_repaired_and_then_clean(harness: Harness) -> None:
    """The issue's `hour … count 0 -> 436`: minutes and raw log in Postgres, the sealed
    hour row of one field gone. Found once (on both bases), repaired, then 0 everywhere."""
    events = await populate(harness)
    hour = T0 + HOUR_MS
    await execute(
        harness.pool,
        "DELETE FROM rollups_hour WHERE project = $1 AND bucket = $2 AND rollup = ''",
        harness.project,
        to_datetime(hour),
    )
    truth = sum(1 for e in events if hour <= e["ts"] < hour + HOUR_MS)
    found, lines = await reconcile(harness, write=False)
    assert found == 1, lines
    assert any(f"hour {format_ts(hour)} click (total): count 0 -> {truth}" in x for x in lines)
    assert any("hour/day rows checked against their parts" in x for x in lines)
    assert await harness.total("click", hour, hour + HOUR_MS) == 0  # dry run changed nothing

    fixed, _ = await reconcile(harness, write=True)
    assert fixed == 1
    assert await harness.total("click", hour, hour + HOUR_MS) == truth
    assert (await reconcile(harness, write=True))[0] == 0
    rebuilt = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    assert rebuilt.discrepancies == 0


async def test_hour_and_day_rows_checked_against_minutes(harness: Harness) -> None:
    """The check alone: a zeroed count, a sum off by one micro and a day sketch short of
    its minutes' union are each found with the minutes' values, and the repair from the
    minutes is what a rebuild from the raw log writes."""
    events = await populate(harness)
    harness.clock.set(DAY0 + DAY_MS + HOUR_MS)  # the day seals too
    await harness.persist()
    hour = T0 + 2 * HOUR_MS
    async with harness.pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_hour SET count = 0 WHERE project = $1 AND bucket = $2"
            " AND rollup = 'source' AND dims = '{a}'",
            harness.project,
            to_datetime(hour),
        )
        await conn.execute(
            "UPDATE rollups_day SET sum_micros = sum_micros + 1 WHERE project = $1"
            " AND rollup = 'source' AND dims = '{b}'",
            harness.project,
        )
        one_minute: bytes = await conn.fetchval(
            "SELECT hll FROM rollups_minute WHERE project = $1 AND rollup = ''"
            " ORDER BY bucket LIMIT 1",
            harness.project,
        )
        await conn.execute(
            "UPDATE rollups_day SET hll = $2 WHERE project = $1 AND rollup = ''",
            harness.project,
            one_minute,
        )
        state = await load_state(conn, harness.project)
    sealed = {g: state.until(g) for g in (Grain.minute, Grain.hour, Grain.day)}
    oldest = minute_edge(harness.clock.now_ms(), harness.settings.minute_retention_days)
    spans = day_spans(DAY0, sealed, parts_edge(oldest))
    assert [(s.whole, s.part) for s in spans] == [
        (Grain.hour, Grain.minute),
        (Grain.day, Grain.minute),
    ]
    checker = RollupChecker(harness.redis)
    async with harness.pool.acquire() as conn:
        found = await checker.check(conn, harness.keys, spans)
    assert found.rows > 0
    by_row = {(d.grain, d.rollup, tuple(d.dims)): d for d in found.diffs}
    assert set(by_row) == {("hour", "source", ("a",)), ("day", "source", ("b",)), ("day", "", ())}
    assert all(d.basis == "minutes" for d in found.diffs)
    short = by_row[("hour", "source", ("a",))]
    in_hour = [e for e in events if hour <= e["ts"] < hour + HOUR_MS]
    assert (short.stored_count, short.rebuilt_count) == (
        0,
        sum(1 for e in in_hour if e["dims"]["source"] == "a"),
    )
    off = by_row[("day", "source", ("b",))]
    assert off.stored_sum == off.rebuilt_sum + 1 and off.stored_count == off.rebuilt_count
    total = by_row[("day", "", ())]
    assert total.uniques_differ and total.stored_count == total.rebuilt_count == len(events)

    async with harness.pool.acquire() as conn:
        await checker.repair(conn, harness.keys, found)
        again = await checker.check(conn, harness.keys, spans)
    assert again.diffs == [] and again.rows == found.rows
    rebuilt = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    assert rebuilt.discrepancies == 0, rebuilt.diffs[:5]


async def test_reconcile_after_redis_loses_the_hour_in_progress(harness: Harness) -> None:
    """The issue's sequence: minutes of the current hour sealed and persisted, all of the
    project's Redis keys lost, the hour seals later. Whatever the hour row holds then,
    reconcile reports exactly the rows that differ from their minutes, repairs them, and
    the rows equal the truth and what rebuild computes."""
    rng = random.Random(11)
    harness.clock.set(T0 + 40 * MINUTE_MS)
    before = [ev(rng, T0 + rng.randrange(30 * MINUTE_MS)) for _ in range(300)]
    await harness.ingest(*before)
    await harness.persist()  # minutes up to ~T0+39m sealed, copied; the hour only in Redis
    names = [k async for k in harness.redis.scan_iter(match=harness.keys.base + "*")]
    await harness.redis.delete(*names)
    after = [ev(rng, T0 + 45 * MINUTE_MS + rng.randrange(10 * MINUTE_MS)) for _ in range(50)]
    harness.clock.set(T0 + 56 * MINUTE_MS)
    await harness.ingest(*after)
    harness.clock.set(T0 + HOUR_MS + MINUTE_MS)
    await harness.persist()  # the hour seals and is copied
    async with harness.pool.acquire() as conn:
        short = await conn.fetchval(
            "SELECT count(*) FROM (SELECT name, rollup, dims, sum(count) AS c"
            " FROM rollups_minute WHERE project = $1 AND bucket >= $2 AND bucket < $3"
            " GROUP BY 1, 2, 3) m FULL JOIN (SELECT * FROM rollups_hour WHERE project = $1"
            " AND bucket = $2) h USING (name, rollup, dims)"
            " WHERE m.c IS DISTINCT FROM h.count",
            harness.project,
            to_datetime(T0),
            to_datetime(T0 + HOUR_MS),
        )
    found, lines = await reconcile(harness, write=False)
    assert found == short, lines
    assert (await reconcile(harness, write=True))[0] == short
    assert await harness.total("click", T0, T0 + HOUR_MS) == len(before) + len(after)
    assert (await reconcile(harness, write=False))[0] == 0
    rebuilt = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    assert rebuilt.discrepancies == 0
    async with harness.pool.acquire() as conn:
        runs = await conn.fetch(
            "SELECT discrepancies, fixed, details FROM reconcile_runs WHERE project = $1"
            " AND kind = 'reconcile' ORDER BY id",
            harness.project,
        )
    assert [(r["discrepancies"], r["fixed"]) for r in runs] == [
        (short, False),
        (short, short > 0),
        (0, False),
    ]


async def test_a_wrong_minute_is_fixed_from_the_raw_log_not_spread_to_its_hour(
    harness: Harness,
) -> None:
    """When a minute row is wrong, its (right) hour differs from its minutes too: both rows
    are reported (the hour on its own basis), each once, and the repair comes from the raw
    log, so the hour keeps its right value and the minute gets its right one back."""
    events = await populate(harness)
    minute = min(e["ts"] for e in events) // MINUTE_MS * MINUTE_MS
    hour = minute - minute % HOUR_MS
    await execute(
        harness.pool,
        "UPDATE rollups_minute SET count = count + 2 WHERE project = $1 AND bucket = $2"
        " AND rollup = ''",
        harness.project,
        to_datetime(minute),
    )
    truth = sum(1 for e in events if hour <= e["ts"] < hour + HOUR_MS)
    found, lines = await reconcile(harness, write=False)
    assert found == 2, lines
    assert any(x.startswith(f"  minute {format_ts(minute)}") and "(-2)" in x for x in lines)
    assert any(
        x.startswith(f"  hour {format_ts(hour)}") and x.endswith("[vs its minutes]") for x in lines
    )
    assert (await reconcile(harness, write=True))[0] == 2
    assert await harness.total("click", hour, hour + HOUR_MS) == truth
    assert await harness.total("click", minute, minute + MINUTE_MS) == sum(
        1 for e in events if minute <= e["ts"] < minute + MINUTE_MS
    )
    assert (await reconcile(harness, write=False))[0] == 0
