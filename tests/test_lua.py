"""The ingest script against a real Valkey/Redis: atomicity, dedupe, grouping, key layout,
late path, watermark restore and the backlog cap."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from counters.core.buckets import DAY_MS, GRAINS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.errors import BacklogFull, Unavailable
from counters.core.rollups import encode_field
from lua import PRELUDE
from lua.keys import count_field, sum_field
from tests.support import T0, Harness, wait_for


def ev(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "click", "ts": T0}
    base.update(kw)
    return base


async def test_batch_lands_in_hot_hash_grouped(harness: Harness) -> None:
    events = [
        ev(dims={"source": "g", "country": "DE"}, uid="u1", value=1.25),
        ev(dims={"source": "g", "country": "FR"}, uid="u2", value=2),
        ev(ts=T0 + MINUTE_MS, dims={"source": "b"}, uid="u1"),
    ]
    assert (await harness.ingest(*events)).accepted == 3
    keys = harness.keys
    minute = await harness.redis.hgetall(keys.hot(Grain.minute, T0))
    total = encode_field("click", (), ())
    google = encode_field("click", ("source",), ("g",))
    # one field per (rollup, dims tuple): total, source=g, country=DE, country=FR
    assert {k.decode() for k in minute} == {
        count_field(total),
        sum_field(total),
        count_field(google),
        sum_field(google),
        count_field(encode_field("click", ("country",), ("DE",))),
        sum_field(encode_field("click", ("country",), ("DE",))),
        count_field(encode_field("click", ("country",), ("FR",))),
        sum_field(encode_field("click", ("country",), ("FR",))),
    }
    assert int(minute[count_field(total).encode()]) == 2
    assert int(minute[sum_field(total).encode()]) == 3_250_000
    # ingest writes minutes only; seal merges them into the hour and day, reads add the
    # minutes not merged yet
    assert await harness.redis.hgetall(keys.hot(Grain.hour, bucket_start(T0, Grain.hour))) == {}
    hour = bucket_start(T0, Grain.hour)
    assert await harness.total("click", hour, hour + HOUR_MS) == 3
    assert await harness.redis.pfcount(keys.hll(Grain.minute, T0, total)) == 2
    assert await harness.redis.pfcount(keys.hll(Grain.day, bucket_start(T0, Grain.day), total)) == 0
    assert await harness.redis.zscore(keys.dirty(Grain.minute), str(T0)) == T0
    assert await harness.redis.xlen(keys.raw) == 1  # one stream entry per batch
    assert int(await harness.redis.hget(keys.watermarks, "rawn")) == 3


async def test_dedupe_across_and_within_batches(harness: Harness) -> None:
    first = await harness.ingest(ev(id="a"), ev(id="b"), ev(id="a"))
    assert (first.accepted, first.duplicates) == (2, 1)
    again = await harness.ingest(ev(id="a"), ev(id="c"), ev())
    assert (again.accepted, again.duplicates) == (2, 1)
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 4
    raw_events = await harness.redis.hget(harness.keys.watermarks, "rawn")
    assert int(raw_events) == 4


async def test_dedupe_window_expires(harness: Harness, redis: Any) -> None:
    short = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        dedupe_window_seconds=1,
    )
    assert (await short.ingest(ev(id="x"))).accepted == 1
    assert (await short.ingest(ev(id="x"))).duplicates == 1
    await wait_for(
        lambda: redis.exists(short.keys.event_id("click", "x")),
        lambda n: n == 0,
        what="id to expire",
    )
    assert (await short.ingest(ev(id="x"))).accepted == 1


async def test_batch_is_atomic_for_concurrent_readers(harness: Harness) -> None:
    batch = [ev(uid=f"u{i}") for i in range(2000)]
    field = count_field(encode_field("click", (), ()))
    hot = harness.keys.hot(Grain.minute, T0)
    seen: list[int] = []
    done = asyncio.Event()

    async def reader() -> None:
        while not done.is_set():
            seen.append(int(await harness.redis.hget(hot, field) or 0))

    task = asyncio.create_task(reader())
    for _ in range(5):
        await harness.ingest(*batch)
    done.set()
    await task
    assert seen, "reader never ran"
    assert all(v % 2000 == 0 for v in seen), sorted(set(seen))
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 10_000


async def test_missing_watermarks_are_restored_from_postgres(harness: Harness) -> None:
    await harness.ingest(ev())
    harness.clock.advance(HOUR_MS)
    await harness.persist()
    state = await harness.redis.hgetall(harness.keys.watermarks)
    await harness.redis.delete(harness.keys.watermarks)  # Redis "lost" its state
    await harness.ingest(ev())  # an event for an already persisted bucket
    restored = await harness.redis.hgetall(harness.keys.watermarks)
    assert restored[b"m"] == state[b"m"]
    # went to the late area, not over the Postgres row
    assert not await harness.redis.exists(harness.keys.hot(Grain.minute, T0)) or (
        await harness.redis.ttl(harness.keys.hot(Grain.minute, T0)) > 0
    )
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 2
    await harness.persist()
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 2


async def test_the_backlog_count_never_goes_below_zero_after_a_restore(harness: Harness) -> None:
    """The watermarks lost while the raw-log stream kept its entries: the restore counts the
    backlog from 0 (the stream is not scanned), so trimming those entries later must stop
    at 0 rather than leave a negative backlog (the persister's gauge summed it to 0 for
    other projects, and the backlog cap would be loosened by as much)."""
    await harness.ingest(ev(), ev())
    await harness.redis.delete(harness.keys.watermarks)  # lost; the stream keeps 2 events
    await harness.ingest(ev())  # restored with rawn 0, then this event counted
    assert int(await harness.redis.hget(harness.keys.watermarks, "rawn") or 0) == 1
    harness.clock.advance(HOUR_MS)
    await harness.persist()
    await harness.persist()
    assert await harness.redis.xlen(harness.keys.raw) == 0
    assert int(await harness.redis.hget(harness.keys.watermarks, "rawn") or 0) == 0


async def test_late_event_goes_to_late_area_and_is_visible_at_once(harness: Harness) -> None:
    await harness.ingest(ev(value=1), ev(value=2, uid="a"))
    harness.clock.advance(HOUR_MS)
    await harness.persist()
    gen = int(await harness.redis.hget(harness.keys.watermarks, "gen"))
    await harness.ingest(ev(value=4, uid="b"))
    assert await harness.redis.exists(harness.keys.late(gen)) == 1
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 3
    assert await harness.total("click", T0, T0 + MINUTE_MS, "sum") == 7
    assert await harness.total("click", T0, T0 + MINUTE_MS, "uniques") == 2
    await harness.persist()
    await harness.persist()
    assert await harness.total("click", T0, T0 + MINUTE_MS) == 3
    assert await harness.total("click", T0, T0 + MINUTE_MS, "sum") == 7
    assert await harness.total("click", T0, T0 + MINUTE_MS, "uniques") == 2


async def test_backlog_cap_refuses_whole_batch(harness: Harness) -> None:
    capped = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        raw_backlog_cap=5,
    )
    await capped.ingest(*[ev() for _ in range(4)])
    with pytest.raises(BacklogFull):
        await capped.ingest(ev(), ev())
    assert await capped.total("click", T0, T0 + MINUTE_MS) == 4
    capped.clock.advance(HOUR_MS)
    await capped.persist()  # copies the raw log, which frees the backlog
    assert (await capped.ingest(ev(), ev())).accepted == 2


async def test_durable_ack_waits_for_the_aof(harness: Harness) -> None:
    durable = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        durable_ack=True,
    )
    info = await harness.redis.info("persistence")
    if not info.get("aof_enabled"):
        with pytest.raises(Unavailable, match="appendfsync always"):
            await durable.ingest(ev())
        return
    assert (await durable.ingest(ev())).accepted == 1
    assert durable.ingestor._waitaof is not None


async def test_dimension_cardinality_cap_folds_into_other(harness: Harness) -> None:
    folded: list[int] = []
    capped = Harness.build(
        harness.settings,
        harness.redis,
        harness.pool,
        harness.scripts,
        harness.project,
        dim_cardinality_cap=3,
    )
    capped.ingestor._on_fold = folded.append
    reply = await capped.ingest(*[ev(dims={"source": s, "country": "DE"}) for s in "abcde"])
    assert reply.accepted == 5 and sum(folded) == 2
    end = T0 + MINUTE_MS
    assert [await capped.total("click", T0, end, source=s) for s in "abcde"] == [1, 1, 1, 0, 0]
    assert await capped.total("click", T0, end, source="__other__") == 2
    assert await capped.total("click", T0, end, country="DE") == 5  # other dims untouched
    await capped.ingest(ev(dims={"source": "a"}), ev(dims={"source": "z"}))
    assert await capped.total("click", T0, end, source="a") == 2
    assert await capped.total("click", T0, end, source="__other__") == 3
    capped.clock.advance(DAY_MS)  # a new day starts with a fresh allowance
    await capped.ingest(ev(ts=T0 + DAY_MS, dims={"source": "z"}))
    assert await capped.total("click", T0 + DAY_MS, T0 + DAY_MS + MINUTE_MS, source="z") == 1


async def seal(harness: Harness, minute_until: int, budget: int = 20_000) -> list[int]:
    keys = harness.keys
    reply = await harness.scripts.seal(
        keys=[keys.watermarks, keys.dirty(Grain.minute)],
        args=[
            minute_until,
            bucket_start(minute_until, Grain.hour),
            bucket_start(minute_until, Grain.day),
            keys.base,
            budget,
        ],
    )
    return [int(v) for v in reply]


async def test_seal_merges_minutes_into_hour_and_day(harness: Harness) -> None:
    keys = harness.keys
    total = encode_field("click", (), ())
    hour, day = bucket_start(T0, Grain.hour), bucket_start(T0, Grain.day)
    hour_hash, day_hash = keys.hot(Grain.hour, hour), keys.hot(Grain.day, day)
    await harness.ingest(ev(uid="u1"), ev(uid="u2", value=1.5), ev(ts=T0 + MINUTE_MS, uid="u1"))
    await harness.ingest(ev(ts=T0 + MINUTE_MS, uid="u3"))

    async def reads() -> tuple[Any, ...]:
        return (
            await harness.total("click", hour, hour + HOUR_MS),
            await harness.total("click", day, day + DAY_MS, "sum"),
            await harness.total("click", hour, hour + HOUR_MS, "uniques"),
            await harness.series("click", Grain.hour, hour, hour + HOUR_MS),
        )

    before = await reads()
    assert before == (4, 1.5, 3, [4])
    assert await harness.redis.pfcount(keys.hll(Grain.hour, hour, total)) == 0
    assert await seal(harness, T0 + MINUTE_MS) == [T0 + MINUTE_MS, hour, day]
    # one minute merged, one not: reads unite them, counting each event once
    assert int(await harness.redis.hget(hour_hash, count_field(total))) == 2
    assert await reads() == before
    assert await seal(harness, T0 + 2 * MINUTE_MS) == [T0 + 2 * MINUTE_MS, hour, day]
    assert int(await harness.redis.hget(day_hash, count_field(total))) == 4
    assert int(await harness.redis.hget(day_hash, sum_field(total))) == 1_500_000
    assert await harness.redis.pfcount(keys.hll(Grain.hour, hour, total)) == 3
    assert await harness.redis.pfcount(keys.hll(Grain.day, day, total)) == 3
    assert await reads() == before
    # an event for a sealed minute goes straight to the (hot) hour and day
    await harness.ingest(ev(uid="u9"))
    assert await harness.redis.pfcount(keys.hll(Grain.hour, hour, total)) == 4
    assert int(await harness.redis.hget(hour_hash, count_field(total))) == 5
    assert await reads() == (5, 1.5, 4, [5])
    # a second seal over the same minutes merges nothing twice (and changes nothing)
    assert await seal(harness, T0 + 2 * MINUTE_MS) == [T0 + 2 * MINUTE_MS, hour, day]
    assert await reads() == (5, 1.5, 4, [5])


async def test_seal_budget_stops_between_minutes(harness: Harness) -> None:
    keys = harness.keys
    total = encode_field("click", (), ())
    start = bucket_start(T0, Grain.day) + DAY_MS - 3 * MINUTE_MS  # the day's last three minutes
    harness.clock.set(start + 3 * MINUTE_MS)
    await harness.ingest(
        *(ev(ts=start + i * MINUTE_MS, uid=f"u{i}", dims={"k": str(i)}) for i in range(3))
    )
    next_day = start + 3 * MINUTE_MS
    # budget 1: the first minute (2 sketches: total and k) is merged, then sealing stops
    m, h, d = await seal(harness, next_day, budget=1)
    assert m == start + MINUTE_MS
    assert h <= m and d <= m  # an hour or day never passes its unmerged minutes
    assert await harness.redis.pfcount(keys.hll(Grain.day, next_day - DAY_MS, total)) == 1
    assert await seal(harness, next_day) == [next_day, next_day, next_day]
    assert await harness.redis.pfcount(keys.hll(Grain.day, next_day - DAY_MS, total)) == 3


async def test_reads_survive_a_script_flush(harness: Harness) -> None:
    """Redis forgetting its scripts (a restart, SCRIPT FLUSH) costs a read one reload, not
    an error: read_hot.lua is queued as a bare EVALSHA inside the read's pipeline."""
    hour = bucket_start(T0, Grain.hour)
    await harness.ingest(ev(uid="u1"), ev(uid="u2"))
    assert await harness.total("click", hour, hour + HOUR_MS) == 2
    await harness.redis.script_flush()
    assert await harness.total("click", hour, hour + HOUR_MS) == 2
    assert await harness.total("click", hour, hour + HOUR_MS, "uniques") == 2


async def test_hot_minute_of_an_hour_restored_as_sealed(harness: Harness) -> None:
    """After Redis loses its state, watermarks come back from Postgres, where an hour can
    be copied while a minute of it is not (a persister stopped between the two). A new
    event for that minute must still reach the hour (through the late path), and seal must
    not merge the minute into the sealed hour as well."""
    hour, day = bucket_start(T0, Grain.hour), bucket_start(T0, Grain.day)
    async with harness.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO projects (project) VALUES ($1) ON CONFLICT DO NOTHING", harness.project
        )
        await conn.execute(
            "INSERT INTO persist_state (project, minute_until, hour_until, day_until)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (project) DO UPDATE SET"
            " minute_until = $2, hour_until = $3, day_until = $4",
            harness.project,
            T0,
            hour + HOUR_MS,
            day,
        )
    await harness.redis.delete(harness.keys.watermarks)  # Redis lost its state
    harness.clock.set(T0 + 10 * MINUTE_MS)
    await harness.ingest(ev(uid="u1"), ev(uid="u2"))
    await harness.persist()  # seals and copies the minute, applies the hour's late delta
    assert await harness.series("click", Grain.minute, T0, T0 + MINUTE_MS) == [2]
    assert await harness.series("click", Grain.hour, hour, hour + HOUR_MS) == [2]
    assert await harness.total("click", day, day + DAY_MS) == 2
    assert await harness.series("click", Grain.hour, hour, hour + HOUR_MS, "uniques") == [2]
    assert await harness.total("click", day, day + DAY_MS, "uniques") == 2


async def test_scripts_see_the_bucket_sizes_of_core_buckets(harness: Harness) -> None:
    """Every script runs after lua.PRELUDE, which defines the sizes from counters.core.buckets
    on the script's first line (so Redis's line numbers match the .lua files)."""
    assert "\n" not in PRELUDE
    reply = await harness.redis.eval(PRELUDE + "-- probe\nreturn {MINUTE_MS, HOUR_MS, DAY_MS}", 0)
    assert reply == [g.value for g in GRAINS]
