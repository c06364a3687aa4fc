"""Backfill: a batch spread over weeks of sealed buckets (the late path, rolled up per
(grain, bucket, field) before the script) gives exactly the rows live ingest would: counts,
sums and sketch registers of every grain equal counters.core.grouping.roll_up of the
events, both while the late generation is pending (reads) and once it is applied
(Postgres), for buckets Postgres already had and for new ones."""

from __future__ import annotations

import random
import uuid
from typing import Any

import msgspec
from redis.asyncio import Redis

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain
from counters.core.grouping import Sealed, Totals, group_minutes, roll_up
from counters.core.models import EventIn, RawEvent
from counters.core.rollups import encode_field, parse_rollup_id
from counters.engines.retention import minute_edge
from persist.hll import registers
from persist.schema import ROLLUP_TABLE
from persist.state import load_state
from tests.support import Harness

CROSSTABS = (("country", "source"),)


def _events(h: Harness, n: int, days: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    now = h.clock.now_ms()
    evs: list[dict[str, Any]] = []
    for _ in range(n):
        ev: dict[str, Any] = {
            "name": rng.choice(["click", "view"]),
            "ts": now - HOUR_MS - rng.randrange(days * DAY_MS),
            "dims": {"source": rng.choice("abc"), "country": rng.choice(["DE", "FR"])},
        }
        if rng.random() < 0.8:
            ev["uid"] = f"u{rng.randrange(30)}"
        if rng.random() < 0.3:
            ev["value"] = rng.randrange(1, 1000) / 10
        evs.append(ev)
    evs.append({"name": "click", "ts": now - 2 * MINUTE_MS, "uid": "recent"})  # sealed minute
    evs.append({"name": "click", "uid": "now"})  # a hot minute
    return evs


async def _apply(h: Harness, evs: list[dict[str, Any]]) -> list[RawEvent]:
    """Validates (on the manual clock) and applies one batch; returns its raw events."""
    decoded = [msgspec.convert(e, EventIn) for e in evs]
    raw = h.services.validate(decoded, now_ms=h.clock.now_ms())
    assert (await h.ingestor.apply(h.project, raw)).accepted == len(raw)
    return raw


async def _sketch(redis: Redis, h: Harness, uids: set[str]) -> bytes:
    scratch = h.keys.tmp(uuid.uuid4().hex)
    await redis.pfadd(scratch, *uids)
    try:
        blob: bytes = await redis.get(scratch)
    finally:
        await redis.delete(scratch)
    return registers(blob)


async def _rows(h: Harness, grain: Grain) -> dict[tuple[int, str], tuple[int, int, Any]]:
    async with h.pool.acquire() as conn:
        rows = await conn.fetch(
            f"SELECT name, rollup, dims, bucket, count, sum_micros, hll FROM {ROLLUP_TABLE[grain]}"
            " WHERE project = $1",
            h.project,
        )
    out = {}
    for r in rows:
        field = encode_field(r["name"], parse_rollup_id(r["rollup"]), tuple(r["dims"]))
        bucket = int(r["bucket"].timestamp() * 1000)
        out[(bucket, field)] = (r["count"], r["sum_micros"], r["hll"])
    return out


async def _check_postgres(h: Harness, everything: list[RawEvent]) -> None:
    rolled = roll_up(group_minutes(everything, CROSSTABS))
    oldest_minute = minute_edge(h.clock.now_ms(), h.settings.minute_retention_days)
    async with h.pool.acquire() as conn:
        state = await load_state(conn, h.project)
    for grain in (Grain.minute, Grain.hour, Grain.day):
        rows = await _rows(h, grain)
        want: dict[tuple[int, str], Totals] = {}
        for bucket, totals in rolled.buckets(grain).items():
            if grain is Grain.minute and bucket < oldest_minute:
                continue  # minute rows are not kept that long: a backfill does not write them
            if bucket >= state.until(grain):
                continue  # the current hour and day are still hot in Redis
            want.update({(bucket, f): totals for f in totals.counts})
        assert set(rows) == set(want), grain
        for (bucket, field), totals in want.items():
            count, total, hll = rows[(bucket, field)]
            assert (count, total) == (totals.counts[field], totals.sums.get(field, 0))
            uids = totals.uids.get(field)
            if uids:
                assert registers(hll) == await _sketch(h.redis, h, uids), (grain, bucket, field)
            else:
                assert hll is None


async def test_backfill_over_three_weeks_equals_roll_up(harness: Harness) -> None:
    h = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        crosstabs=CROSSTABS,
        max_batch_groups=0,
    )
    everything = await _apply(h, [{"name": "click"}])  # the project, its minutes sealed
    h.clock.advance(MINUTE_MS)
    await h.persist()
    first = await _apply(h, _events(h, 400, 21, seed=1))
    everything += first
    # a late generation is pending: reads already see every event
    truth = roll_up(group_minutes(first, CROSSTABS))
    total = encode_field("click", (), ())
    for day, totals in list(truth.buckets(Grain.day).items())[:5]:
        assert await h.total("click", day, day + DAY_MS) == totals.counts[total]
    oldest_minute = minute_edge(h.clock.now_ms(), h.settings.minute_retention_days)
    gen = int(await h.redis.hget(h.keys.watermarks, "gen"))
    fields = await h.redis.hkeys(h.keys.late(gen))
    assert fields
    assert not [
        f for f in fields if f.startswith(b"m:") and int(f.split(b":")[1]) < oldest_minute
    ], "a minute older than minute_retention_days got a late delta"
    h.clock.advance(MINUTE_MS)
    await h.persist()
    # the same buckets again: Postgres has rows and sketches, the deltas add and unite
    everything += await _apply(h, _events(h, 400, 21, seed=2))
    h.clock.advance(MINUTE_MS)
    await h.persist()
    h.clock.advance(MINUTE_MS)
    await h.persist()
    await _check_postgres(h, everything)


async def test_a_stale_edge_is_refused_and_planned_again(harness: Harness) -> None:
    h = harness
    await _apply(h, [{"name": "click"}])
    ingestor = h.ingestor
    # as if this process had seen a higher watermark than Redis now holds (a restore)
    high = h.clock.now_ms() + DAY_MS
    ingestor._sealed[h.project] = Sealed(high, high, high)
    minute = h.clock.now_ms() - h.clock.now_ms() % MINUTE_MS
    await _apply(h, [{"name": "click", "uid": "a"}])
    assert ingestor._sealed[h.project].minute < minute + MINUTE_MS
    assert await h.redis.hget(h.keys.hot(Grain.minute, minute), "c\x1fclick\x1f") == b"2"
    assert not await h.redis.exists(h.keys.late(1))
    assert await h.total("click", minute, minute + MINUTE_MS) == 2
