"""The read cache of Postgres parts (engines/read/history_cache.py): a hit answers exactly
what an uncached read answers, late events and rebuilds are visible in the next read, the
bounds evict, and no two projects (nor a multi-project union) share an entry."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import asyncpg
import msgspec
import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain
from counters.core.config import Settings, load_settings
from counters.engines.read.context import ReadContext
from counters.engines.read.engine import read_projects
from counters.engines.read.history_cache import (
    BUCKET_BYTES,
    ENTRY_OVERHEAD_BYTES,
    CachedHistory,
    HistoryCache,
    HistoryPart,
)
from counters.engines.read.parse import parse_read
from counters.engines.read.query import count_uniques, read_buckets
from counters.engines.rebuild import Rebuilder
from counters.services import read_cache
from persist.projects import ensure_project
from persist.state import EMPTY_STATE
from tests.support import T0, Harness

DAY0 = T0 - T0 % DAY_MS
HOURS = [(Grain.hour, list(range(T0 - 2 * HOUR_MS, T0 + 4 * HOUR_MS, HOUR_MS)))]
"""Six hours: four persisted (two of them before any event), one unsealed, one hot."""


def ev(rng: random.Random, ts: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "click",
        "ts": ts,
        "dims": {"source": rng.choice("ab")},
        "uid": f"u{rng.randrange(300)}",
        "value": rng.randrange(0, 1_000) / 100,
    }
    base.update(kw)
    return base


async def populate(h: Harness, n: int = 300, seed: int = 5) -> None:
    """Events over three hours, persisted (hours sealed and copied), then a few hot ones."""
    rng = random.Random(seed)
    h.clock.set(T0 + 3 * HOUR_MS + 10 * MINUTE_MS)
    await h.ingest(*[ev(rng, T0 + rng.randrange(3 * HOUR_MS)) for _ in range(n)])
    await h.persist()
    await h.ingest(*[ev(rng, T0 + 3 * HOUR_MS + rng.randrange(9 * MINUTE_MS)) for _ in range(20)])


def cached_ctx(h: Harness, cache: HistoryCache) -> ReadContext:
    return dataclasses.replace(h.read_context(), history=cache)


async def answer(ctx: ReadContext, **dims: str) -> tuple[list[int], list[int], list[int]]:
    """Counts, sums and uniques per bucket of HOURS (as the API merges them)."""
    rollup = tuple(sorted(dims))
    values = [dims[d] for d in rollup]
    plain = await read_buckets(ctx, "click", rollup, values, HOURS, uniques=False)
    sketched = await read_buckets(ctx, "click", rollup, values, HOURS, uniques=True)
    uniques = await count_uniques(ctx.redis, sketched, sketched.hll_keys[0])
    assert (sketched.counts, sketched.sums) == (plain.counts, plain.sums)
    return plain.counts[0], plain.sums[0], list(uniques)


async def test_a_hit_answers_exactly_what_an_uncached_read_does(harness: Harness) -> None:
    await populate(harness)
    cache = HistoryCache(100, 1 << 20)
    ctx = cached_ctx(harness, cache)
    truth = await answer(harness.read_context())
    assert sum(truth[0]) == 320 and truth[0][0] == truth[0][1] == 0
    assert await answer(ctx) == truth  # misses: read and stored
    assert (cache.hits, cache.misses, len(cache)) == (0, 2, 2)
    for dims in ({}, {"source": "a"}, {}):
        assert await answer(ctx, **dims) == await answer(harness.read_context(), **dims)
    assert (cache.hits, len(cache)) == (4, 4)  # the total's two entries hit twice


async def test_a_late_event_for_a_persisted_hour_is_in_the_next_read(harness: Harness) -> None:
    await populate(harness)
    cache = HistoryCache(100, 1 << 20)
    ctx = cached_ctx(harness, cache)
    before = await answer(ctx)
    late = [ev(random.Random(1), T0 + 5 * MINUTE_MS, uid="late-one", value=2.5)]
    await harness.ingest(*late)
    hits = cache.hits
    after = await answer(ctx)
    assert cache.hits == hits + 2  # still the cached Postgres part, plus the late delta
    assert after[0][2] == before[0][2] + 1 and after[1][2] == before[1][2] + 2_500_000
    assert after == await answer(harness.read_context())
    await harness.persist()  # the generation is applied to Postgres rows the cache holds
    assert await answer(ctx) == after == await answer(harness.read_context())
    # the pass rotated the late generation (and sealed): the part is read again
    assert cache.hits == hits + 2


async def test_a_part_cached_before_its_late_generation_is_applied_is_not_used_after(
    harness: Harness,
) -> None:
    """A read between the rotation of a late generation and its application caches a part
    that lacks the generation and adds it from Redis. Once applied, Redis may drop the
    generation's keys before they expire (volatile-* eviction takes them first; the e2e
    test on a cluster drops them by hand): the cached part must not be used without them."""
    await populate(harness)
    cache = HistoryCache(100, 1 << 20)
    ctx = cached_ctx(harness, cache)
    late = [ev(random.Random(1), T0 + 5 * MINUTE_MS, uid="late-one", value=2.5)]
    await harness.ingest(*late)
    keys, applier = harness.keys, harness.persister.late
    open_gen = await applier.rotate(keys)
    truth = await answer(harness.read_context())
    assert await answer(ctx) == truth  # cached: Postgres without the generation, plus its keys
    async with harness.pool.acquire() as conn:
        assert await applier.apply_closed(conn, keys, open_gen) == 1
    dropped = [k async for k in harness.redis.scan_iter(match=keys.base + "late:*")]
    assert dropped
    await harness.redis.delete(*dropped)
    assert await answer(harness.read_context()) == truth
    assert await answer(ctx) == truth


async def test_applying_a_late_generation_never_writes_the_watermarks(harness: Harness) -> None:
    """What ends cached parts when a late generation is applied lives outside the
    watermarks hash: with the hash lost (a Redis loss between rotation and apply), the
    apply must not recreate it partially, or the restore would take it for restored and
    ingest would answer 503 (NOWM) for good."""
    await populate(harness)
    await harness.ingest(ev(random.Random(1), T0 + 5 * MINUTE_MS, uid="late-two"))
    keys, applier = harness.keys, harness.persister.late
    open_gen = await applier.rotate(keys)
    token = await harness.redis.get(keys.history_version)
    await harness.redis.delete(keys.watermarks)  # lost between the rotation and the apply
    async with harness.pool.acquire() as conn:
        assert await applier.apply_closed(conn, keys, open_gen) == 1
    assert not await harness.redis.exists(keys.watermarks)
    assert await harness.redis.get(keys.history_version) != token
    await harness.ingest(ev(random.Random(2), T0 + 3 * HOUR_MS + MINUTE_MS))  # restores


async def test_a_rebuild_that_changes_rows_is_in_the_next_read(harness: Harness) -> None:
    await populate(harness)
    async with harness.pool.acquire() as conn:
        await conn.execute(
            "UPDATE rollups_hour SET count = count + 7 WHERE project = $1 AND name = 'click'"
            " AND rollup = ''",
            harness.project,
        )
    cache = HistoryCache(100, 1 << 20)
    ctx = cached_ctx(harness, cache)
    wrong = await answer(ctx)
    assert await answer(ctx) == wrong and cache.hits == 2
    rebuilder = Rebuilder(harness.pool, harness.redis, harness.settings, harness.persister)
    report = await rebuilder.run(harness.project, DAY0, DAY0 + DAY_MS)
    assert report.written_days == 1
    fixed = await answer(ctx)
    assert cache.hits == 2  # the history version moved: read again from Postgres
    assert [w - f for w, f in zip(wrong[0], fixed[0], strict=True)] == [0, 0, 7, 7, 7, 0]
    assert fixed == await answer(harness.read_context())


async def test_a_lost_history_version_is_a_miss(harness: Harness) -> None:
    await populate(harness)
    cache = HistoryCache(100, 1 << 20)
    ctx = cached_ctx(harness, cache)
    first = await answer(ctx)
    await harness.redis.delete(harness.keys.history_version)  # as after a Redis loss
    assert await answer(ctx) == first and (cache.hits, cache.misses) == (0, 4)
    assert await answer(ctx) == first and cache.hits == 2


async def test_projects_never_share_an_entry(
    harness: Harness, settings: Settings, pool: asyncpg.Pool
) -> None:
    await populate(harness)
    other = Harness.build(settings, harness.redis, pool, harness.scripts, harness.project + "b")
    async with pool.acquire() as conn:
        await ensure_project(conn, other.project)
    other.clock.set(harness.clock.now_ms())
    await other.ingest(*[ev(random.Random(9), T0 + HOUR_MS) for _ in range(3)])
    await other.persist()
    cache = HistoryCache(100, 1 << 20)
    mine, theirs = cached_ctx(harness, cache), cached_ctx(other, cache)
    for _ in range(2):
        assert await answer(mine) == await answer(harness.read_context())
        assert (await answer(theirs))[0] == [0, 0, 0, 3, 0, 0]
    assert len(cache) == 4 and cache.hits == 4
    # the union across projects: each project's part from its own entry, sketches merged
    now = harness.clock.now_ms()
    params = {"name": "click", "precision": "1h", "from": str(HOURS[0][1][0])}
    params |= {"to": str(HOURS[0][1][-1] + HOUR_MS), "measure": "uniques"}
    q = parse_read(params, now, (), oldest_minute=mine.oldest_minute)
    plain = [harness.read_context(), other.read_context()]
    want = msgspec.to_builtins(await read_projects(plain, q))
    assert msgspec.to_builtins(await read_projects([mine, theirs], q)) == want
    assert msgspec.to_builtins(await read_projects([mine, theirs], q)) == want
    assert want["union"][0]["data"][3]["value"] >= 1


def _entry(buckets: int, sketch: bytes = b"") -> CachedHistory:
    hlls = [(0, 0, sketch)] if sketch else []
    part = HistoryPart(EMPTY_STATE, [[0] * buckets], [[0] * buckets], hlls, [])
    return CachedHistory(part, b"v", 0.0)


def test_the_bounds_evict_least_recently_used_first() -> None:
    cache = HistoryCache(3, 1 << 20)
    for k in "abc":
        cache.put(k, _entry(10))
    assert cache.get("a", now=1.0) is not None  # a is now the most recent
    cache.put("d", _entry(10))
    assert cache.get("b", now=1.0) is None and len(cache) == 3 and cache.evictions == 1
    size = ENTRY_OVERHEAD_BYTES + BUCKET_BYTES * 100 + 1000
    by_bytes = HistoryCache(100, 2 * size + 10)
    for k in "xyz":
        by_bytes.put(k, _entry(100, b"s" * 1000))
    assert len(by_bytes) == 2 and by_bytes.bytes == 2 * size
    assert by_bytes.get("x", now=1.0) is None and by_bytes.get("z", now=1.0) is not None
    by_bytes.put("huge", _entry(10, b"s" * (3 * size)))  # bigger than the cache: not kept
    assert by_bytes.get("huge", now=1.0) is None and len(by_bytes) == 2


def test_entries_expire_and_the_setting_turns_the_cache_off() -> None:
    cache = HistoryCache(10, 1 << 20, max_age_seconds=30)
    cache.put("k", _entry(1))
    assert cache.get("k", now=29.0) is not None and cache.get("k", now=30.0) is None
    assert len(cache) == 0 and cache.bytes == 0
    on = load_settings({"COUNTERS_READ_CACHE_ENTRIES": "500"})
    made = read_cache(on)
    assert made is not None and made.max_entries == 500 and made.max_age_seconds == 60
    short = msgspec.structs.replace(on, keep_after_copy_seconds=20)
    assert (made := read_cache(short)) is not None and made.max_age_seconds == 10
    assert read_cache(load_settings({"COUNTERS_READ_CACHE_ENTRIES": "0"})) is None
    with pytest.raises(ValueError, match="read_cache_entries"):
        load_settings({"COUNTERS_READ_CACHE_ENTRIES": "-1"})
