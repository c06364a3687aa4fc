"""The columnar rebuild against live ingest on random batches of every shape: events lacking
some or all dims, without uid or value, cross-tabs, names and values in any script, several
days with minute retention cutting one, late events after their bucket was persisted. The
rebuild must find nothing to change (counts, sums and registers all equal what live ingest
built), and after the stored rows are damaged in every way it must put back exactly that."""

from __future__ import annotations

import random
from typing import Any

import asyncpg
import pytest

from counters.core.buckets import DAY_MS, GRAINS, HOUR_MS, MINUTE_MS, Grain
from counters.core.config import Settings
from counters.engines import rebuild
from counters.engines.rebuild import Rebuilder
from lua import Scripts
from lua.client import RedisClient
from tests.support import T0, Harness

DAY0 = T0 - T0 % DAY_MS
VALUES = ["a", "b", "ü", "日本", "x y", "q,r", 'q"s', "long-" + "z" * 60]


def _event(rng: random.Random, ts: int) -> dict[str, Any]:
    ev: dict[str, Any] = {"name": rng.choice(["click", "view", "buy.v2"]), "ts": ts}
    dims = {d: rng.choice(VALUES) for d in ("source", "country", "device") if rng.random() < 0.7}
    if dims:
        ev["dims"] = dims
    if rng.random() < 0.8:
        ev["uid"] = rng.choice([f"u{rng.randrange(300)}", f"ü{rng.randrange(50)}", "x" * 40])
    if rng.random() < 0.5:
        ev["value"] = rng.randrange(-5_000, 50_000) / 100
    return ev


async def _populate(h: Harness, rng: random.Random) -> None:
    """Three days of events; the clock moves on so all of them seal, and some arrive late."""
    span = 3 * DAY_MS
    h.clock.set(DAY0 + span)
    for _ in range(4):
        await h.ingest(*[_event(rng, DAY0 + rng.randrange(span)) for _ in range(150)])
    h.clock.set(DAY0 + span + 2 * HOUR_MS)
    await h.persist()
    await h.ingest(*[_event(rng, DAY0 + rng.randrange(span)) for _ in range(200)])  # late
    h.clock.set(DAY0 + span + 4 * HOUR_MS)
    await h.persist()


@pytest.mark.parametrize(
    ("seed", "budget"),
    # budget: raw events per window; 3 or 4 cut every hour (~11 events) into parts
    [(1, None), (2, None), (3, None), (1, 4), (2, 3)],
)
async def test_rebuild_equals_live_ingest_on_random_batches(
    settings: Settings,
    redis: RedisClient,
    pool: asyncpg.Pool,
    scripts: Scripts,
    project: str,
    seed: int,
    budget: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if budget is not None:
        monkeypatch.setattr(rebuild, "SLICE_EVENTS", budget)
    h = Harness.build(
        settings,
        redis,
        pool,
        scripts,
        project,
        crosstabs=(("country", "source"), ("country", "device", "source")),
        minute_retention_days=2,
    )
    await _populate(h, random.Random(seed))
    rb = Rebuilder(h.pool, h.redis, h.settings, h.persister)
    report = await rb.run(h.project, DAY0, DAY0 + 3 * DAY_MS, write=False)
    assert report.events == 800
    assert report.discrepancies == 0, report.diffs[:5]
    before = await _rows(h)
    # damage: a count, a sum, a sketch, a row deleted, a row that should not exist
    async with h.pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_minute SET count = count + 1 WHERE project = $1"
            " AND bucket = (SELECT max(bucket) FROM rollups_minute WHERE project = $1)",
            h.project,
        )
        await conn.execute(
            "UPDATE rollups_hour SET sum_micros = sum_micros + 7 WHERE project = $1"
            " AND rollup = 'country'",
            h.project,
        )
        await conn.execute(
            "UPDATE rollups_day SET hll = NULL WHERE project = $1 AND rollup = 'source'",
            h.project,
        )
        await conn.execute(
            "DELETE FROM rollups_hour WHERE project = $1 AND rollup = 'country,source'",
            h.project,
        )
        await conn.execute(
            "INSERT INTO rollups_day SELECT DISTINCT ON (name, bucket) project, name, rollup,"
            " ARRAY['nobody'], bucket,"
            " count, sum_micros, hll FROM rollups_day WHERE project = $1 AND rollup = 'device'",
            h.project,
        )
    assert await _rows(h) != before
    found = await rb.run(h.project, DAY0, DAY0 + 3 * DAY_MS, write=False)
    assert found.discrepancies > 0
    fixed = await rb.run(h.project, DAY0, DAY0 + 3 * DAY_MS, write=True)
    assert fixed.discrepancies == found.discrepancies
    assert await _rows(h) == _sans_header(before)
    again = await rb.run(h.project, DAY0, DAY0 + 3 * DAY_MS, write=True)
    assert again.discrepancies == 0 and again.written_days == 0


async def _rows(h: Harness) -> dict[tuple[Any, ...], tuple[int, int, bytes | None]]:
    """Every stored rollup row of the project (sketch without its cached cardinality)."""
    out: dict[tuple[Any, ...], tuple[int, int, bytes | None]] = {}
    async with h.pool.acquire() as conn:
        for table in ("rollups_minute", "rollups_hour", "rollups_day"):
            for r in await conn.fetch(
                f"SELECT name, rollup, dims, bucket, count, sum_micros, hll FROM {table}"
                " WHERE project = $1",
                h.project,
            ):
                hll = r["hll"]
                out[(table, r["name"], r["rollup"], tuple(r["dims"]), r["bucket"])] = (
                    r["count"],
                    r["sum_micros"],
                    None if hll is None else hll[:8] + hll[16:],
                )
    return out


def _sans_header(
    rows: dict[tuple[Any, ...], tuple[int, int, bytes | None]],
) -> dict[tuple[Any, ...], tuple[int, int, bytes | None]]:
    return rows


async def test_minutes_older_than_retention_are_not_rebuilt(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts, project: str
) -> None:
    h = Harness.build(settings, redis, pool, scripts, project, minute_retention_days=1)
    rng = random.Random(5)
    h.clock.set(DAY0 + 3 * DAY_MS)
    await h.ingest(*[_event(rng, DAY0 + rng.randrange(3 * DAY_MS)) for _ in range(300)])
    h.clock.set(DAY0 + 3 * DAY_MS + HOUR_MS)
    await h.persist()
    async with h.pool.acquire() as conn:
        await conn.execute("DELETE FROM rollups_minute WHERE project = $1", h.project)
    rb = Rebuilder(h.pool, h.redis, h.settings, h.persister)
    await rb.run(h.project, DAY0, DAY0 + 3 * DAY_MS, write=True)
    async with h.pool.acquire() as conn:
        oldest = await conn.fetchval(
            "SELECT min(bucket) FROM rollups_minute WHERE project = $1", h.project
        )
    edge = DAY0 + 2 * DAY_MS + HOUR_MS - (DAY0 + 2 * DAY_MS + HOUR_MS) % MINUTE_MS
    assert oldest is not None and oldest.timestamp() * 1000 >= edge - DAY_MS


def test_windows_hold_whole_hours_up_to_the_budget() -> None:
    from counters.engines.rebuild import Window, plan_windows

    per_hour = {DAY0 + h * HOUR_MS: n for h, n in {0: 10, 1: 10, 2: 25, 5: 5, 23: 70}.items()}
    windows = plan_windows(DAY0, per_hour, 20)
    hour23 = DAY0 + 23 * HOUR_MS
    assert windows == [
        Window(DAY0, DAY0 + 2 * HOUR_MS),  # 20 events
        Window(DAY0 + 2 * HOUR_MS, DAY0 + 2 * HOUR_MS + 30 * MINUTE_MS),  # 25: two parts
        Window(DAY0 + 2 * HOUR_MS + 30 * MINUTE_MS, DAY0 + 3 * HOUR_MS),
        Window(DAY0 + 3 * HOUR_MS, hour23),  # quiet hours together
        Window(hour23, hour23 + 15 * MINUTE_MS),  # 70: four parts of whole minutes
        Window(hour23 + 15 * MINUTE_MS, hour23 + 30 * MINUTE_MS),
        Window(hour23 + 30 * MINUTE_MS, hour23 + 45 * MINUTE_MS),
        Window(hour23 + 45 * MINUTE_MS, DAY0 + DAY_MS),
    ]
    assert [w.part_of_hour for w in windows] == [False, True, True, False, True, True, True, True]
    # a window finishes the hours that end inside it: a split hour with its last part
    from counters.engines.rebuild import DayPart

    whole = DayPart("p", None, dict.fromkeys(GRAINS, DAY0), dict.fromkeys(GRAINS, DAY0 + DAY_MS))
    assert windows[1].span(whole, Grain.hour)[1] == windows[1].span(whole, Grain.hour)[0]
    assert windows[2].span(whole, Grain.hour) == (DAY0 + 2 * HOUR_MS, DAY0 + 3 * HOUR_MS)
    assert windows[1].span(whole, Grain.minute) == (DAY0 + 2 * HOUR_MS, windows[1].end)
    minutely = plan_windows(DAY0, {DAY0: 10**6}, 1)  # never finer than a minute
    assert len(minutely) == 61 and minutely[59] == Window(DAY0 + 59 * MINUTE_MS, DAY0 + HOUR_MS)
    assert plan_windows(DAY0, {}, 20) == [Window(DAY0, DAY0 + DAY_MS)]


def test_a_day_is_read_in_two_windows_at_least() -> None:
    """So that reading one window overlaps computing the other (a quiet day in one window
    would leave Postgres and numpy taking turns)."""
    from counters.engines.rebuild import MIN_SLICE_EVENTS, SLICE_EVENTS, window_budget

    assert window_budget(1_000_000) == SLICE_EVENTS
    assert window_budget(33_001) == 16_501
    assert window_budget(100) == MIN_SLICE_EVENTS
