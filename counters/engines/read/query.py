"""One field of one rollup over buckets, merging the Postgres history with the Redis hot
buckets and pending late deltas, with no gap and no double count: the Postgres snapshot's
watermarks decide which buckets come from Redis."""

from __future__ import annotations

import dataclasses
import itertools
import time
import uuid
from collections.abc import Hashable, Iterable, Iterator, Sequence
from typing import Any, cast

import msgspec

from counters.core.buckets import Grain
from counters.core.rollups import Rollup, encode_field, rollup_id
from counters.engines.history_version import history_token, queue_version, version_of
from counters.engines.read.context import ReadContext
from counters.engines.read.history_cache import CachedHistory, HistoryPart, Hot, cache_key
from counters.engines.read.hot import hot_cells, queue_read_hot, with_scripts_loaded
from counters.engines.read.plan import Piece
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys, count_field, late_field, sum_field
from persist.history import Snapshot, read_history

TMP_TTL_MS = 30_000


class BucketValues(msgspec.Struct):
    """count and sum (millionths) of every bucket of every piece, plus where its uniques live."""

    counts: list[list[int]]
    sums: list[list[int]]
    hll_keys: list[list[list[str]]]
    """Per piece, per bucket: RedisClient keys whose union is that bucket's uniques sketch."""
    tmp_blobs: dict[str, bytes]
    """Scratch keys to load (Postgres sketches) before counting, and delete after."""


def _from_history(snap: Snapshot, pieces: Sequence[Piece], uniques: bool) -> HistoryPart:
    """The buckets Postgres holds, and the list of those Redis must answer."""
    counts_all: list[list[int]] = []
    sums_all: list[list[int]] = []
    hlls: list[tuple[int, int, bytes]] = []
    hot: list[Hot] = []
    for p, (grain, buckets) in enumerate(pieces):
        until = snap.state.until(grain)
        rows = snap.rows[p]
        counts, sums = [0] * len(buckets), [0] * len(buckets)
        counts_all.append(counts)
        sums_all.append(sums)
        for i, b in enumerate(buckets):
            if b >= until:
                hot.append((p, i, grain, b))
                continue
            row = rows.get(b)
            if row is None:
                continue
            counts[i], sums[i] = row.count, row.sum_micros
            if uniques and row.hll is not None:
                hlls.append((p, i, row.hll))
    return HistoryPart(snap.state, counts_all, sums_all, hlls, hot)


def _values(part: HistoryPart, keys: ProjectKeys, uniques: bool) -> BucketValues:
    """A fresh BucketValues of the Postgres part (the part itself is never changed: the
    cache hands it to every read), its sketches under new scratch key names."""
    out = BucketValues([list(c) for c in part.counts], [list(s) for s in part.sums], [], {})
    if uniques:
        out.hll_keys = [[[] for _ in c] for c in part.counts]
        token = uuid.uuid4().hex
        for n, (p, i, blob) in enumerate(part.hlls):
            t = keys.tmp(f"{token}.{n}")
            out.tmp_blobs[t] = blob
            out.hll_keys[p][i].append(t)
    else:
        out.hll_keys = [[] for _ in part.counts]
    return out


def _add_hot(
    out: BucketValues, keys: ProjectKeys, field: str, hot: list[Hot], reply: Any, uniques: bool
) -> None:
    for (p, i, grain, b), cell in zip(hot, hot_cells(reply, whole=False), strict=True):
        for c, s in cell.hashes:
            out.counts[p][i] += int(c or 0)
            out.sums[p][i] += int(s or 0)
        if uniques:
            out.hll_keys[p][i].append(keys.hll(grain, b, field))
            out.hll_keys[p][i].extend(keys.hll(Grain.minute, m, field) for m in cell.minutes)


async def _present_generations(
    redis: RedisClient, keys: ProjectKeys, gen: int, guess: list[int], found: Sequence[int]
) -> list[int]:
    """Late generations up to gen that exist: the guessed ones already asked, the rest now."""
    present = {g for g, n in zip(guess, found, strict=True) if n}
    unknown = list(range(guess[-1] + 1, gen + 1))
    if unknown:
        pipe = redis.pipeline(transaction=False)
        for g in unknown:
            pipe.exists(keys.late(g), keys.late_hll_index(g))
        present |= {g for g, n in zip(unknown, await pipe.execute(), strict=True) if n}
    return sorted(g for g in present if g <= gen)


async def _add_late(
    out: BucketValues,
    redis: RedisClient,
    keys: ProjectKeys,
    field: str,
    pieces: Sequence[Piece],
    pending: list[int],
    uniques: bool,
) -> None:
    """Adds the late deltas of the pending generations to every bucket."""
    cf, sf = count_field(field), sum_field(field)
    pipe = redis.pipeline(transaction=False)
    late_index: list[tuple[int, int]] = []
    for g in pending:
        for p, (grain, buckets) in enumerate(pieces):
            fields: list[str] = []
            for i, b in enumerate(buckets):
                late_index.append((p, i))
                fields.append(late_field(grain, b, cf))
                fields.append(late_field(grain, b, sf))
                if uniques:
                    out.hll_keys[p][i].append(keys.late_hll(g, grain, b, field))
            if fields:
                pipe.hmget(keys.late(g), fields)
    flat: list[bytes | None] = [v for reply in await pipe.execute() for v in reply]
    for n, (p, i) in enumerate(late_index):
        out.counts[p][i] += int(flat[2 * n] or 0)
        out.sums[p][i] += int(flat[2 * n + 1] or 0)


async def _history_part(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    values: Sequence[str],
    pieces: Sequence[Piece],
    uniques: bool,
    key: Hashable | None,
) -> HistoryPart:
    """The Postgres part, read now (one snapshot) and, with a cache, stored under key with
    the history version read before the snapshot began."""
    cache = ctx.history
    token = None
    read_at = time.monotonic()
    if cache is not None:
        cache.misses += 1
        token = await history_token(ctx.redis, ctx.keys)
    snap = await read_history(
        ctx.pool, ctx.keys.project, name, rollup_id(rollup), values, pieces, with_hll=uniques
    )
    part = _from_history(snap, pieces, uniques)
    if cache is not None and key is not None and token is not None:
        cache.put(key, CachedHistory(part, token, read_at))
    return part


async def read_buckets(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    values: Sequence[str],
    pieces: Sequence[Piece],
    *,
    uniques: bool,
) -> BucketValues:
    """Exact count and sum of each bucket as of now (Postgres below its watermark, Redis at
    or above it, plus late deltas Postgres has not applied yet). With ctx.history, the
    Postgres part may come from the cache: only while the project's history version is the
    one it was read under (checked in the same Redis round trip as the hot part), so the
    answer is the one an uncached read gives. A split project's shards are each read so
    (each is exact on its own) and added: counts and sums add, sketches are united."""
    if not ctx.shards:
        return await _read_shard(ctx, name, rollup, values, pieces, uniques=uniques)
    out, *others = await ctx.each_shard(
        lambda one: _read_shard(one, name, rollup, values, pieces, uniques=uniques)
    )
    for part in others:
        if uniques and ctx.sketches_cross_slots:
            await localize(ctx.redis, part, ctx.keys)
        add_values(out, part)
    return out


def add_values(into: BucketValues, other: BucketValues) -> None:
    """Adds another read's values of the same buckets (another field, or another shard):
    counts and sums add, the sketches of each bucket join its list (united when counted,
    never summed)."""
    for mine, theirs in zip(into.counts, other.counts, strict=True):
        for i, v in enumerate(theirs):
            mine[i] += v
    for mine, theirs in zip(into.sums, other.sums, strict=True):
        for i, v in enumerate(theirs):
            mine[i] += v
    for mine_keys, their_keys in zip(into.hll_keys, other.hll_keys, strict=True):
        for keys, more in zip(mine_keys, their_keys, strict=True):
            keys.extend(more)
    into.tmp_blobs.update(other.tmp_blobs)


async def localize(redis: RedisClient, values: BucketValues, home: ProjectKeys) -> None:
    """Moves every sketch of values (another shard's: another Redis Cluster slot) under
    scratch keys of home's slot, so one PFCOUNT can unite them with home's (move_sketches).
    Keys that no longer exist are left out (an empty sketch)."""
    wanted = (k for piece in values.hll_keys for ks in piece for k in ks)
    renamed, values.tmp_blobs = await move_sketches(redis, wanted, values.tmp_blobs, home)
    values.hll_keys = [
        [[renamed[k] for k in ks if k in renamed] for ks in piece] for piece in values.hll_keys
    ]


MGET_KEYS = 500
"""Sketches read per MGET when moving a shard's sketches (a few hundred KB a round trip)."""


async def move_sketches(
    redis: RedisClient, keys: Iterable[str], blobs: dict[str, bytes], home: ProjectKeys
) -> tuple[dict[str, str], dict[str, bytes]]:
    """Every sketch named in keys (resident in Redis, or one of blobs: loaded from
    Postgres) under a new scratch key of home's slot: (old key -> new key, the new keys'
    blobs to load). The resident ones are read (MGET, a few hundred at a time); keys that
    no longer exist are left out of both (an empty sketch)."""
    resident = sorted({k for k in keys if k not in blobs})
    found: dict[str, bytes | None] = dict(blobs)
    with redis_unavailable():
        for i in range(0, len(resident), MGET_KEYS):
            chunk = resident[i : i + MGET_KEYS]
            got = cast(list[bytes | None], await redis.mget(chunk))
            found.update(zip(chunk, got, strict=True))
    token = uuid.uuid4().hex
    renamed = {k: home.tmp(f"{token}.s{n}") for n, k in enumerate(found) if found[k] is not None}
    return renamed, {renamed[k]: blob for k, blob in found.items() if blob is not None}


async def _read_shard(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    values: Sequence[str],
    pieces: Sequence[Piece],
    *,
    uniques: bool,
) -> BucketValues:
    """read_buckets of one shard (ctx.keys) alone."""
    keys = ctx.keys
    field = encode_field(name, rollup, values)
    cache = ctx.history
    key = None
    cached = None
    if cache is not None:
        key = cache_key(keys.base, name, rollup_id(rollup), values, pieces, uniques)
        cached = cache.get(key)
    if cached is not None:
        part = cached.part
    else:
        part = await _history_part(ctx, name, rollup, values, pieces, uniques, key)
    out, hot = _values(part, keys, uniques), part.hot
    # late generations usually do not exist: ask cheaply before building field lists
    guess = [part.state.late_applied + 1, part.state.late_applied + 2]

    async def first_round() -> list[Any]:
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.hget(keys.watermarks, "gen")
        for g in guess:
            pipe.exists(keys.late(g), keys.late_hll_index(g))
        if cached is not None:
            queue_version(pipe, keys)
        if hot:
            cells = [(g, b) for _, _, g, b in hot]
            queue_read_hot(pipe, ctx.scripts, keys, [count_field(field), sum_field(field)], cells)
        return list(await pipe.execute())

    with redis_unavailable():
        replies = await with_scripts_loaded(ctx.scripts, first_round)
    if replies[0] is None and ctx.restore is not None:
        # no watermarks: RedisClient lost its state. Restore first (the hot hours and days come
        # back from Postgres), then answer, so answers for persisted data do not move
        if cache is not None and key is not None:
            cache.drop(key)
        await ctx.restore(keys.project)
        again = dataclasses.replace(ctx, restore=None)
        return await _read_shard(again, name, rollup, values, pieces, uniques=uniques)
    if cached is not None:
        assert cache is not None and key is not None
        token, watermarks = replies.pop(3), replies.pop(3)
        if version_of(token, watermarks) != cached.token:  # rewritten, sealed or rotated
            cache.stale += 1
            cache.drop(key)
            return await _read_shard(ctx, name, rollup, values, pieces, uniques=uniques)
        cache.hits += 1
    with redis_unavailable():
        if hot:
            _add_hot(out, keys, field, hot, replies[3], uniques)
        gen = int(replies[0] or 0)
        pending = await _present_generations(ctx.redis, keys, gen, guess, replies[1:3])
        if pending:
            await _add_late(out, ctx.redis, keys, field, pieces, pending, uniques)
    return out


PIPELINE_ARGS = 1_000
"""Command words per pipeline round trip of a big read: packing and parsing one chunk holds
the event loop only a few ms, and it runs other tasks between chunks."""


async def execute_chunked(redis: RedisClient, commands: Iterable[Sequence[Any]]) -> list[Any]:
    """The replies of the commands (each the words of one command), in order, sent about
    PIPELINE_ARGS words at a time (no transaction: the same as one unchunked pipeline).
    `commands` is consumed lazily, so building them is spread over the round trips."""
    out: list[Any] = []
    pipe = redis.pipeline(transaction=False)
    words = 0
    for command in commands:
        pipe.execute_command(*command)
        words += len(command)
        if words >= PIPELINE_ARGS:
            out.extend(await pipe.execute())
            pipe = redis.pipeline(transaction=False)
            words = 0
    if words:
        out.extend(await pipe.execute())
    return out


def deletes(keys: Sequence[str]) -> Iterator[Sequence[Any]]:
    """DEL commands for the keys, a few hundred keys each."""
    for i in range(0, len(keys), PIPELINE_ARGS // 8):
        yield ("DEL", *keys[i : i + PIPELINE_ARGS // 8])


async def count_uniques(
    redis: RedisClient, values: BucketValues, groups: Sequence[Sequence[str]]
) -> list[int]:
    """PFCOUNT of the union of each group of keys (after loading the Postgres sketches)."""
    blobs = values.tmp_blobs
    commands = itertools.chain(
        (("SET", key, blob, "PX", TMP_TTL_MS) for key, blob in blobs.items()),
        (("PFCOUNT", *group) for group in groups if group),
        deletes(list(blobs)),
    )
    with redis_unavailable():
        replies = await execute_chunked(redis, commands)
    counted = iter(replies[len(blobs) :])
    return [int(next(counted)) if group else 0 for group in groups]
