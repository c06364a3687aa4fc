"""Rebuild and reconcile from the raw log: exact reproduction (counts, sums, HLL registers),
dry runs that change nothing, idempotence, and events arriving during a rebuild."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS
from counters.engines.rebuild import Rebuilder
from counters.engines.reconcile import reconcile_projects
from persist.hll import REGISTERS, registers, same_registers
from tests.support import T0, Harness

DAY0 = T0 - T0 % DAY_MS


def ev(rng: random.Random, ts: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": rng.choice(["click", "view"]),
        "ts": ts,
        "dims": {"source": rng.choice("abc"), "country": rng.choice(["DE", "FR", "US"])},
        "uid": f"u{rng.randrange(400)}",
        "value": rng.randrange(0, 10_000) / 100,
    }
    base.update(kw)
    return base


async def populate(h: Harness, n: int = 600, seed: int = 3) -> int:
    """Events over 3 hours, some arriving late (after their bucket was persisted)."""
    rng = random.Random(seed)
    h.clock.set(T0 + 3 * HOUR_MS)
    await h.ingest(*[ev(rng, T0 + rng.randrange(3 * HOUR_MS)) for _ in range(n // 2)])
    h.clock.set(T0 + 4 * HOUR_MS)
    await h.persist()
    await h.ingest(*[ev(rng, T0 + rng.randrange(4 * HOUR_MS)) for _ in range(n // 2)])
    await h.persist()
    return n


def rebuilder(h: Harness) -> Rebuilder:
    return Rebuilder(h.pool, h.redis, h.settings, h.persister)


async def test_registers_decode_sparse_and_dense(harness: Harness) -> None:
    r = harness.redis
    a, b = harness.keys.tmp("hll-a"), harness.keys.tmp("hll-b")
    await r.pfadd(a, *[f"x{i}" for i in range(100)])
    await r.pfadd(b, *[f"x{i}" for i in reversed(range(100))])
    sparse_a, sparse_b = await r.get(a), await r.get(b)
    assert sparse_a is not None and sparse_a[4] == 1  # sparse encoding
    assert same_registers(sparse_a, sparse_b)
    assert sum(1 for v in registers(sparse_a) if v) <= 100
    await r.pfadd(a, *[f"y{i}" for i in range(5000)])  # promotes to dense
    dense = await r.get(a)
    assert dense is not None and dense[4] == 0 and len(registers(dense)) == REGISTERS
    await r.pfadd(b, *[f"y{i}" for i in reversed(range(5000))])
    assert same_registers(dense, await r.get(b))
    assert not same_registers(dense, sparse_a)
    await r.delete(a, b)


async def test_rebuild_reproduces_live_rollups_exactly(harness: Harness) -> None:
    n = await populate(harness)
    report = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    assert report.events == n
    assert report.rows > 0
    assert report.discrepancies == 0, report.diffs[:5]


async def corrupt(pool: asyncpg.Pool, project: str) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_hour SET count = count + 5, sum_micros = sum_micros - 1"
            " WHERE project = $1 AND rollup = '' AND name = 'click'",
            project,
        )
        await conn.execute(
            "UPDATE rollups_minute SET hll = NULL WHERE project = $1 AND rollup = 'source'"
            " AND dims = '{a}' AND name = 'view'",
            project,
        )
        await conn.execute(
            "INSERT INTO rollups_minute VALUES ($1, 'ghost', '', '{}', $2, 7, 0, NULL)",
            project,
            __import__("counters.core.buckets", fromlist=["to_datetime"]).to_datetime(T0),
        )


async def snapshot(pool: asyncpg.Pool, project: str) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    async with pool.acquire() as conn:
        for table in ("rollups_minute", "rollups_hour", "rollups_day"):
            rows = await conn.fetch(
                f"SELECT name, rollup, dims, bucket, count, sum_micros, hll FROM {table}"
                " WHERE project = $1 ORDER BY 1, 2, 3, 4",
                project,
            )
            out.extend((table, *r) for r in rows)
    return out


async def test_dry_run_reports_and_changes_nothing_then_rebuild_fixes(harness: Harness) -> None:
    await populate(harness)
    await corrupt(harness.pool, harness.project)
    corrupted = await snapshot(harness.pool, harness.project)
    rb = rebuilder(harness)
    dry = await rb.run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    hours = [d for d in dry.diffs if d.grain == "hour" and d.name == "click" and d.rollup == ""]
    assert hours and all(d.stored_count - d.rebuilt_count == 5 for d in hours)
    assert all(d.stored_sum - d.rebuilt_sum == -1 for d in hours)
    assert any(d.uniques_differ and d.name == "view" for d in dry.diffs)
    assert any(d.name == "ghost" and d.rebuilt_count == 0 for d in dry.diffs)
    assert await snapshot(harness.pool, harness.project) == corrupted

    fixed = await rb.run(harness.project, DAY0, DAY0 + DAY_MS)
    assert fixed.discrepancies == dry.discrepancies and fixed.written_days == 1
    after = await snapshot(harness.pool, harness.project)
    again = await rb.run(harness.project, DAY0, DAY0 + DAY_MS)
    assert (again.discrepancies, again.written_days) == (0, 0)
    assert await snapshot(harness.pool, harness.project) == after
    assert not any(r[1] == "ghost" for r in after)


async def test_rebuild_while_ingest_keeps_running(harness: Harness) -> None:
    n = await populate(harness, 400)
    await corrupt(harness.pool, harness.project)
    rng = random.Random(9)
    extra = 0
    stop = asyncio.Event()

    async def writer() -> None:
        nonlocal extra
        while not stop.is_set():  # late and current events for the day being rebuilt
            batch = [ev(rng, T0 + rng.randrange(4 * HOUR_MS), name="click") for _ in range(20)]
            await harness.ingest(*batch)
            extra += len(batch)
            await asyncio.sleep(0)

    task = asyncio.create_task(writer())
    try:
        report = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS)
        assert report.discrepancies > 0
    finally:
        stop.set()
        await task
    assert extra > 0
    await harness.persist()
    total = await harness.total("click", DAY0, DAY0 + DAY_MS) + await harness.total(
        "view", DAY0, DAY0 + DAY_MS
    )
    assert total == n + extra
    assert (
        await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    ).discrepancies == 0


async def test_rebuild_of_one_name_leaves_others(harness: Harness) -> None:
    await populate(harness)
    await corrupt(harness.pool, harness.project)
    report = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, name="view")
    assert report.discrepancies > 0 and all(d.name == "view" for d in report.diffs)
    left = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS, write=False)
    assert left.discrepancies > 0 and all(d.name != "view" for d in left.diffs)


async def test_reconcile_reports_and_fixes(harness: Harness) -> None:
    await populate(harness)
    await corrupt(harness.pool, harness.project)
    lines: list[str] = []
    rb = rebuilder(harness)
    now = harness.clock.now_ms()
    found = await reconcile_projects(
        rb, [harness.project], now_ms=now, days=2, write=False, echo=lines.append
    )
    assert found > 0 and lines[-1] == f"discrepancies: {found}"
    assert any("count" in line and "(+" in line or "(-" in line for line in lines)
    assert (
        await reconcile_projects(
            rb, [harness.project], now_ms=now, days=2, write=True, echo=lines.append
        )
        == found
    )
    assert (
        await reconcile_projects(
            rb, [harness.project], now_ms=now, days=2, write=True, echo=lines.append
        )
        == 0
    )
    async with harness.pool.acquire() as conn:
        runs = await conn.fetch(
            "SELECT discrepancies, fixed FROM reconcile_runs WHERE project = $1 ORDER BY id",
            harness.project,
        )
    assert [(r["discrepancies"], r["fixed"]) for r in runs] == [
        (found, False),
        (found, True),
        (0, False),
    ]


async def test_unsealed_buckets_are_left_alone(harness: Harness) -> None:
    rng = random.Random(1)
    harness.clock.set(T0 + 10 * MINUTE_MS)
    await harness.ingest(*[ev(rng, T0 + rng.randrange(10 * MINUTE_MS)) for _ in range(50)])
    report = await rebuilder(harness).run(harness.project, DAY0, DAY0 + DAY_MS)
    assert report.rows == 0 and report.discrepancies == 0  # nothing sealed yet
    assert (
        await harness.total("click", DAY0, DAY0 + DAY_MS)
        + await harness.total("view", DAY0, DAY0 + DAY_MS)
        == 50
    )


async def test_days_to_rewrite_are_counted_past_the_reported_rows(harness: Harness) -> None:
    """A dry run lists the first 1,000 differing rows but counts the days over all of them
    (the CLI's `would rewrite N day(s)` was counted off the listed rows: 1 day here)."""
    rng = random.Random(5)
    first = [ev(rng, DAY0 + i * MINUTE_MS, name="click") for i in range(1_200)]
    second = [ev(rng, DAY0 + DAY_MS + i * MINUTE_MS, name="click") for i in range(5)]
    harness.clock.set(DAY0 + 2 * DAY_MS + 4 * HOUR_MS)
    for i in range(0, len(first), 200):
        await harness.ingest(*first[i : i + 200])
    await harness.ingest(*second)
    await harness.persist()
    async with harness.pool.acquire() as conn:
        for table in ("rollups_minute", "rollups_hour", "rollups_day"):
            await conn.execute(f"DELETE FROM {table} WHERE project = $1", harness.project)
    dry = await rebuilder(harness).run(harness.project, DAY0, DAY0 + 2 * DAY_MS, write=False)
    assert dry.discrepancies > 1_000 == len(dry.diffs)
    assert {d.bucket[:10] for d in dry.diffs} == {dry.diffs[0].bucket[:10]}  # one day listed
    assert dry.days_differing == [DAY0, DAY0 + DAY_MS]
