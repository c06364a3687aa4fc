"""The read engine: one field of one rollup over buckets, merging the Postgres history with
the Redis hot buckets and pending late deltas, with no gap and no double count."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from counters.core.buckets import MINUTE_MS, Grain, bucket_ceil, bucket_start
from counters.core.errors import Unavailable
from counters.core.rollups import Rollup, encode_field, rollup_id
from lua import Scripts
from lua.keys import ProjectKeys, count_field, late_field, sum_field
from persist.db import PG_ERRORS
from persist.history import read_history

Piece = tuple[Grain, Sequence[int]]
T = TypeVar("T")
TMP_TTL_MS = 30_000


class BucketValues(msgspec.Struct):
    """count and sum (millionths) of every bucket of every piece, plus where its uniques live."""

    counts: list[list[int]]
    sums: list[list[int]]
    hll_keys: list[list[list[str]]]
    """Per piece, per bucket: Redis keys whose union is that bucket's uniques sketch."""
    tmp_blobs: dict[str, bytes]
    """Scratch keys to load (Postgres sketches) before counting, and delete after."""


class HotCell(msgspec.Struct):
    """One hot (grain, bucket) as Redis holds it: its own hash and, for an hour or a day,
    the hashes of its minutes not merged into it yet (see lua/read_hot.lua)."""

    minutes: list[int]
    hashes: list[Any]
    """HMGET replies (field mode) or field->value dicts (whole hashes), own hash first."""


def _hot_args(
    keys: ProjectKeys, fields: Sequence[str] | None, cells: Sequence[tuple[Grain, int]]
) -> tuple[list[str], list[Any]]:
    args: list[Any] = [keys.base, len(fields or ()), *(fields or ())]
    args += [f"{g.short}:{b}" for g, b in cells]
    return [keys.watermarks, keys.dirty(Grain.minute)], args


async def read_hot(
    scripts: Scripts,
    keys: ProjectKeys,
    fields: Sequence[str] | None,
    cells: Sequence[tuple[Grain, int]],
) -> list[HotCell]:
    """The hot cells' hashes (the given fields, or whole hashes for None), read atomically
    with respect to sealing, so every hot event is counted exactly once."""
    script_keys, args = _hot_args(keys, fields, cells)
    reply = await scripts.read_hot(keys=script_keys, args=args)
    return hot_cells(reply, whole=fields is None)


def queue_read_hot(
    pipe: Any,
    scripts: Scripts,
    keys: ProjectKeys,
    fields: Sequence[str] | None,
    cells: Sequence[tuple[Grain, int]],
) -> None:
    """read_hot queued on a pipeline as a bare EVALSHA (redis-py would add a SCRIPT EXISTS
    round trip to each pipeline holding a Script); run the pipeline under
    with_scripts_loaded, and decode the reply with hot_cells()."""
    script_keys, args = _hot_args(keys, fields, cells)
    pipe.evalsha(scripts.read_hot.sha, len(script_keys), *script_keys, *args)


async def with_scripts_loaded(scripts: Scripts, attempt: Callable[[], Awaitable[T]]) -> T:
    """Runs attempt; if Redis had forgotten read_hot.lua (a restart, SCRIPT FLUSH), loads
    it and runs attempt once more."""
    try:
        return await attempt()
    except NoScriptError:
        await scripts.read_hot.registered_client.script_load(scripts.read_hot.script)
        return await attempt()


def hot_cells(reply: Sequence[Any], *, whole: bool) -> list[HotCell]:
    """Decodes read_hot.lua's reply."""
    out = []
    for entry in reply:
        minutes = [int(m) for m in entry[0]]
        hashes = [dict(zip(h[::2], h[1::2], strict=True)) if whole else h for h in entry[1:]]
        out.append(HotCell(minutes, hashes))
    return out


def decompose(start: int, end: int) -> list[Piece]:
    """Splits a minute-aligned [start, end) into the fewest day, hour and minute buckets."""
    pieces: list[Piece] = []

    def split(lo: int, hi: int, level: int) -> None:
        if lo >= hi:
            return
        grain = (Grain.day, Grain.hour, Grain.minute)[level]
        if grain is Grain.minute:
            pieces.append((grain, list(range(lo, hi, MINUTE_MS))))
            return
        first = bucket_ceil(lo, grain)
        last = bucket_start(hi, grain)
        if first >= last:
            split(lo, hi, level + 1)
            return
        split(lo, first, level + 1)
        pieces.append((grain, list(range(first, last, grain.value))))
        split(last, hi, level + 1)

    split(start, end, 0)
    return pieces


async def read_buckets(
    pool: asyncpg.Pool,
    redis: Redis,
    scripts: Scripts,
    keys: ProjectKeys,
    name: str,
    rollup: Rollup,
    values: Sequence[str],
    pieces: Sequence[Piece],
    *,
    uniques: bool,
) -> BucketValues:
    """Exact count and sum of each bucket as of now (Postgres below its watermark, Redis at
    or above it, plus late deltas Postgres has not applied yet)."""
    field = encode_field(name, rollup, values)
    try:
        async with pool.acquire() as conn:
            snap = await read_history(
                conn, keys.project, name, rollup_id(rollup), values, pieces, with_hll=uniques
            )
    except PG_ERRORS as exc:
        raise Unavailable("postgres", str(exc) or type(exc).__name__) from exc
    cf, sf = count_field(field), sum_field(field)
    counts: list[list[int]] = []
    sums: list[list[int]] = []
    hll_keys: list[list[list[str]]] = []
    tmp: dict[str, bytes] = {}
    hot: list[tuple[int, int, Grain, int]] = []
    for p, (grain, buckets) in enumerate(pieces):
        until = snap.state.until(grain)
        rows = snap.rows[p]
        counts.append([0] * len(buckets))
        sums.append([0] * len(buckets))
        hll_keys.append([[] for _ in buckets] if uniques else [])
        for i, b in enumerate(buckets):
            if b < until:
                row = rows.get(b)
                if row is not None:
                    counts[p][i] = row.count
                    sums[p][i] = row.sum_micros
                    if uniques and row.hll is not None:
                        t = keys.tmp(uuid.uuid4().hex)
                        tmp[t] = row.hll
                        hll_keys[p][i].append(t)
            else:
                hot.append((p, i, grain, b))
    # late generations usually do not exist: ask cheaply before building field lists
    guess = [snap.state.late_applied + 1, snap.state.late_applied + 2]

    async def first_round() -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        pipe.hget(keys.watermarks, "gen")
        for g in guess:
            pipe.exists(keys.late(g), keys.late_hll_index(g))
        if hot:
            queue_read_hot(pipe, scripts, keys, [cf, sf], [(g, b) for _, _, g, b in hot])
        return list(await pipe.execute())

    try:
        replies = await with_scripts_loaded(scripts, first_round)
        gen = int(replies[0] or 0)
        present = {g for g, n in zip(guess, replies[1:3], strict=True) if n}
        if hot:
            for (p, i, grain, b), cell in zip(hot, hot_cells(replies[3], whole=False), strict=True):
                for c, s in cell.hashes:
                    counts[p][i] += int(c or 0)
                    sums[p][i] += int(s or 0)
                if uniques:
                    hll_keys[p][i].append(keys.hll(grain, b, field))
                    hll_keys[p][i].extend(keys.hll(Grain.minute, m, field) for m in cell.minutes)
        unknown = list(range(guess[-1] + 1, gen + 1))
        if unknown:
            pipe = redis.pipeline(transaction=False)
            for g in unknown:
                pipe.exists(keys.late(g), keys.late_hll_index(g))
            present |= {g for g, n in zip(unknown, await pipe.execute(), strict=True) if n}
        pending = sorted(g for g in present if g <= gen)
        if pending:
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
                            hll_keys[p][i].append(keys.late_hll(g, grain, b, field))
                    if fields:
                        pipe.hmget(keys.late(g), fields)
            flat: list[bytes | None] = [v for reply in await pipe.execute() for v in reply]
            for n, (p, i) in enumerate(late_index):
                counts[p][i] += int(flat[2 * n] or 0)
                sums[p][i] += int(flat[2 * n + 1] or 0)
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    return BucketValues(counts, sums, hll_keys, tmp)


async def count_uniques(
    redis: Redis, values: BucketValues, groups: Sequence[Sequence[str]]
) -> list[int]:
    """PFCOUNT of the union of each group of keys (after loading the Postgres sketches)."""
    try:
        pipe = redis.pipeline(transaction=False)
        for key, blob in values.tmp_blobs.items():
            pipe.set(key, blob, px=TMP_TTL_MS)
        for group in groups:
            if group:
                pipe.pfcount(*group)
        if values.tmp_blobs:
            pipe.delete(*values.tmp_blobs)
        replies = await pipe.execute()
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    counted = iter(replies[len(values.tmp_blobs) :])
    return [int(next(counted)) if group else 0 for group in groups]
