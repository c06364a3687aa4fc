"""The persister against real Postgres: drain, re-drain, crashes between steps, raw log,
two persisters at once, and reads that do not change when Redis forgets drained buckets."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, from_datetime
from counters.core.errors import Unavailable
from counters.core.rollups import encode_field
from counters.engines.persister import Persister
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, open_redis
from tests.service import free_port
from tests.support import T0, Harness, wait_for


def ev(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"name": "click", "ts": T0}
    base.update(kw)
    return base


async def rows(pool: asyncpg.Pool, table: str, project: str) -> list[tuple[Any, ...]]:
    async with pool.acquire() as conn:
        records = await conn.fetch(
            f"SELECT name, rollup, dims, bucket, count, sum_micros, hll FROM {table}"
            " WHERE project = $1 ORDER BY 1, 2, 3, 4",
            project,
        )
    return [tuple(r) for r in records]


async def spread(h: Harness, n: int = 300, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    h.clock.set(T0 + 3 * HOUR_MS)
    events = [
        ev(
            ts=T0 + rng.randrange(0, 3 * HOUR_MS),
            dims={"source": rng.choice("abc"), "country": rng.choice(["DE", "FR"])},
            uid=f"u{rng.randrange(50)}",
            value=rng.randrange(0, 1000) / 100,
        )
        for _ in range(n)
    ]
    await h.ingest(*events)
    return events


async def test_drain_copies_closed_buckets_exactly(harness: Harness) -> None:
    events = await spread(harness)
    harness.clock.set(T0 + 4 * HOUR_MS)
    report = await harness.persist()
    assert report.buckets_copied > 0
    assert report.raw_events == len(events)
    hour_rows = await rows(harness.pool, "rollups_hour", harness.project)
    totals = {r[3]: r[4] for r in hour_rows if r[1] == ""}
    for hour in range(3):
        start = T0 + hour * HOUR_MS
        expected = sum(1 for e in events if start <= e["ts"] < start + HOUR_MS)
        assert totals[next(b for b in totals if from_datetime(b) == start)] == expected
    # the stored sketch is byte-for-byte what Redis held
    name, rollup, dims, bucket, *_rest, hll = hour_rows[0]
    field = encode_field(name, tuple(rollup.split(",")) if rollup else (), dims)
    assert hll == await harness.redis.get(
        harness.keys.hll(Grain.hour, from_datetime(bucket), field)
    )


async def test_redrain_is_harmless(harness: Harness) -> None:
    await spread(harness)
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persist()
    before = await rows(harness.pool, "rollups_minute", harness.project)
    again = await harness.persist()
    assert (again.buckets_copied, again.raw_events, again.late_generations) == (0, 0, 0)
    assert await rows(harness.pool, "rollups_minute", harness.project) == before


async def test_crash_after_commit_before_release_keeps_rows(harness: Harness) -> None:
    await spread(harness)
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persist()
    before = await rows(harness.pool, "rollups_minute", harness.project)
    # as if the persister died after its commit but before leaving the dirty index, and the
    # bucket keys have since expired: a re-run must not copy zeros over the rows
    minutes = sorted({from_datetime(r[3]) for r in before})
    await harness.redis.zadd(harness.keys.dirty(Grain.minute), {str(b): b for b in minutes})
    for b in minutes:
        await harness.redis.delete(harness.keys.hot(Grain.minute, b))
    await harness.persist()
    assert await rows(harness.pool, "rollups_minute", harness.project) == before
    assert await harness.redis.zcard(harness.keys.dirty(Grain.minute)) == 0


async def test_crash_between_seal_and_copy(harness: Harness) -> None:
    events = await spread(harness)
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persister.sealer.seal(
        harness.keys, harness.clock.now_ms()
    )  # sealed in Redis, nothing copied yet
    assert await harness.total("click", T0, T0 + 3 * HOUR_MS) == len(events)
    await harness.ingest(ev(ts=T0 + 5))  # late now: must not be lost or copied twice
    await harness.persist()
    await harness.persist()
    assert await harness.total("click", T0, T0 + 3 * HOUR_MS) == len(events) + 1
    hour_total = await rows(harness.pool, "rollups_hour", harness.project)
    assert sum(r[4] for r in hour_total if r[1] == "") == len(events) + 1


async def test_raw_log_copied_once_and_trimmed(harness: Harness) -> None:
    events = await spread(harness, 120)
    await harness.ingest(ev(id="only-once"), ev(id="only-once"))
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persist()
    await harness.persist()
    async with harness.pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM raw_events WHERE project = $1", harness.project
        )
        ids = await conn.fetchval(
            "SELECT count(*) FROM raw_events WHERE project = $1 AND event_id = 'only-once'",
            harness.project,
        )
    assert (n, ids) == (len(events) + 1, 1)
    assert await harness.redis.xlen(harness.keys.raw) == 0
    assert int(await harness.redis.hget(harness.keys.watermarks, "rawn")) == 0


async def test_answers_unchanged_when_redis_forgets_drained_buckets(harness: Harness) -> None:
    events = await spread(harness)
    end = T0 + 3 * HOUR_MS
    harness.clock.set(T0 + 4 * HOUR_MS)
    queries = [
        ("series", Grain.minute, "count", {}),
        ("series", Grain.hour, "sum", {"source": "a"}),
        ("series", Grain.hour, "uniques", {"country": "DE"}),
        ("total", None, "uniques", {}),
        ("total", None, "sum", {"country": "FR"}),
    ]

    async def answers() -> list[Any]:
        out = []
        for kind, grain, measure, dims in queries:
            if kind == "series":
                assert grain is not None
                out.append(await harness.series("click", grain, T0, end, measure, **dims))
            else:
                out.append(await harness.total("click", T0, end, measure, **dims))
        return out

    before = await answers()
    assert sum(before[0]) == len(events)
    await harness.persist()
    keys = [k async for k in harness.redis.scan_iter(match=harness.keys.base + "[hu]:*")]
    assert keys
    await harness.redis.delete(*keys)
    assert await answers() == before


async def test_two_persisters_never_double_apply(harness: Harness) -> None:
    events = await spread(harness, 400)
    other = Persister(
        harness.pool, harness.redis, harness.scripts, harness.settings, harness.clock, Metrics()
    )
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persister.sealer.seal(harness.keys, harness.clock.now_ms())
    await harness.ingest(ev(ts=T0 + 10, value=1))  # a late delta for both to race on
    results = await asyncio.gather(
        *[p.persist_project(harness.project) for p in (harness.persister, other) for _ in range(3)]
    )
    assert any(r is not None for r in results)
    await harness.persist()
    assert await harness.total("click", T0, T0 + DAY_MS - T0 % DAY_MS) == len(events) + 1
    hours = await rows(harness.pool, "rollups_hour", harness.project)
    assert sum(r[4] for r in hours if r[1] == "") == len(events) + 1
    async with harness.pool.acquire() as conn:
        n = await conn.fetchval(
            "SELECT count(*) FROM raw_events WHERE project = $1", harness.project
        )
    assert n == len(events) + 1


async def test_restart_after_redis_loses_everything(harness: Harness, redis: RedisClient) -> None:
    events = await spread(harness)
    harness.clock.set(T0 + 4 * HOUR_MS)
    await harness.persist()
    before = await rows(harness.pool, "rollups_hour", harness.project)
    keys = [k async for k in redis.scan_iter(match=harness.keys.base + "*")]
    await redis.delete(*keys)
    await harness.ingest(ev(ts=T0 + MINUTE_MS, value=3))  # late, for a persisted bucket
    await harness.persist()
    after = await rows(harness.pool, "rollups_hour", harness.project)
    assert sum(r[4] for r in after if r[1] == "") == len(events) + 1
    assert len(after) >= len(before)


def _errors(metrics: Metrics) -> dict[str, float]:
    return {
        s.labels["backend"]: s.value
        for m in metrics.registry.collect()
        if m.name == "counters_persister_errors"
        for s in m.samples
        if s.name.endswith("_total") and s.value > 0  # every backend's series starts at 0
    }


async def _failed_passes(persister: Persister, backend: str) -> dict[str, float]:
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))
    try:
        await wait_for(
            lambda: _probe(persister.metrics),
            lambda errors: errors.get(backend, 0) >= 2,
            timeout=20,
            what=f"two passes failed on {backend}",
        )
    finally:
        stop.set()
        await task
    return _errors(persister.metrics)


async def _probe(metrics: Metrics) -> dict[str, float]:
    return _errors(metrics)


async def test_a_dead_postgres_is_charged_to_postgres(harness: Harness) -> None:
    """Connection refused (an OSError) on the Postgres side is a postgres failure, in the
    exception a pass raises and in the loop's error counter; the loop keeps running."""
    dead = await asyncpg.create_pool(
        f"postgresql://nobody@127.0.0.1:{free_port()}/none", min_size=0, max_size=1
    )
    try:
        persister = Persister(
            dead, harness.redis, harness.scripts, harness.settings, harness.clock, Metrics()
        )
        with pytest.raises(Unavailable) as failure:
            await persister.tick()
        assert failure.value.backend == "postgres"
        errors = await _failed_passes(persister, "postgres")
        assert set(errors) == {"postgres"}
    finally:
        await dead.close()


async def test_a_dead_redis_is_charged_to_redis(harness: Harness) -> None:
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0")
    try:
        persister = Persister(
            harness.pool, dead, Scripts(dead), harness.settings, harness.clock, Metrics()
        )
        with pytest.raises(Unavailable) as failure:
            await persister.persist_project(harness.project)
        assert failure.value.backend == "redis"
        errors = await _failed_passes(persister, "redis")
        assert errors.get("other", 0) == 0 and errors.get("postgres", 0) == 0
    finally:
        await dead.aclose()
