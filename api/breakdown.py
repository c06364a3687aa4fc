"""Breakdowns: every dims tuple of a rollup over a range, merged from Postgres history, Redis
hot buckets and pending late deltas (the same no-gap, no-double-count cut as api/query.py),
ranked, with the top N as series and the rest folded into __other__."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.buckets import Grain, from_datetime, to_datetime
from counters.errors import Unavailable
from counters.keys import US, ProjectKeys
from counters.rollups import Rollup, rollup_id
from persist.persister import TABLE
from persist.state import load_state

Cell = tuple[Grain, int]
TMP_TTL_MS = 30_000


class TupleCells(msgspec.Struct):
    """One dims tuple: count and sum per stored bucket, and its sketches' keys per bucket."""

    counts: dict[Cell, int] = msgspec.field(default_factory=dict)
    sums: dict[Cell, int] = msgspec.field(default_factory=dict)
    hlls: dict[Cell, list[str]] = msgspec.field(default_factory=dict)


class Breakdown(msgspec.Struct):
    tuples: dict[tuple[str, ...], TupleCells]
    tmp_blobs: dict[str, bytes]


def _pg_error(exc: Exception) -> Unavailable:
    return Unavailable("postgres", str(exc) or type(exc).__name__)


async def read_breakdown(
    pool: asyncpg.Pool,
    redis: Redis,
    keys: ProjectKeys,
    name: str,
    rollup: Rollup,
    filters: dict[str, str],
    need: dict[Grain, list[int]],
    *,
    uniques: bool,
) -> Breakdown:
    """Every dims tuple of `rollup` (values of the filtered dims fixed) with its cells over
    the needed stored buckets."""
    rid = rollup_id(rollup)
    fixed = {rollup.index(d): v for d, v in filters.items()}
    tuples: dict[tuple[str, ...], TupleCells] = defaultdict(TupleCells)
    tmp: dict[str, bytes] = {}

    def matches(values: Sequence[str]) -> bool:
        return len(values) == len(rollup) and all(values[i] == v for i, v in fixed.items())

    cond = "".join(f" AND dims[{i + 1}] = ${6 + n}" for n, i in enumerate(fixed))
    cond_args = list(fixed.values())
    try:
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state = await load_state(conn, keys.project, create=False)
                for grain, buckets in need.items():
                    until = state.until(grain)
                    wanted = {b for b in buckets if b < until}
                    if not wanted:
                        continue
                    rows = await conn.fetch(
                        f"SELECT dims, bucket, count, sum_micros,"
                        f" {'hll' if uniques else 'NULL::bytea AS hll'} FROM {TABLE[grain]}"
                        " WHERE project = $1 AND name = $2 AND rollup = $3"
                        f" AND bucket >= $4 AND bucket < $5{cond}",
                        keys.project,
                        name,
                        rid,
                        to_datetime(min(wanted)),
                        to_datetime(min(max(wanted) + grain.value, until)),
                        *cond_args,
                    )
                    for r in rows:
                        b = from_datetime(r["bucket"])
                        if b not in wanted:
                            continue
                        t = tuples[tuple(r["dims"])]
                        t.counts[(grain, b)] = r["count"]
                        t.sums[(grain, b)] = r["sum_micros"]
                        if uniques and r["hll"] is not None:
                            k = keys.tmp(uuid.uuid4().hex)
                            tmp[k] = r["hll"]
                            t.hlls.setdefault((grain, b), []).append(k)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise _pg_error(exc) from exc

    prefix = name + US + rid + US
    try:
        pipe = redis.pipeline(transaction=False)
        pipe.hget(keys.watermarks, "gen")
        hot: list[Cell] = []
        for grain, buckets in need.items():
            until = state.until(grain)
            for b in buckets:
                if b >= until:
                    hot.append((grain, b))
                    pipe.hgetall(keys.hot(grain, b))
        replies = await pipe.execute()
        gen = int(replies[0] or 0)
        for cell, h in zip(hot, replies[1:], strict=True):
            _fold_hash(h, prefix, matches, tuples, cell, keys, uniques, late_gen=None)
        pending = range(state.late_applied + 1, gen + 1)
        if pending:
            pipe = redis.pipeline(transaction=False)
            for g in pending:
                pipe.hgetall(keys.late(g))
            wanted_cells = {(g, b) for g, bs in need.items() for b in bs}
            for g, h in zip(pending, await pipe.execute(), strict=True):
                by_cell: dict[Cell, dict[bytes, bytes]] = defaultdict(dict)
                for k, v in h.items():
                    grain_s, bucket_s, rest = k.decode().split(":", 2)
                    cell = (_GRAINS[grain_s], int(bucket_s))
                    if cell in wanted_cells:
                        by_cell[cell][rest.encode()] = v
                for cell, fields in by_cell.items():
                    _fold_hash(fields, prefix, matches, tuples, cell, keys, uniques, late_gen=g)
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    return Breakdown(dict(tuples), tmp)


_GRAINS = {g.short: g for g in Grain}


def _fold_hash(
    h: dict[bytes, bytes],
    prefix: str,
    matches: Any,
    tuples: dict[tuple[str, ...], TupleCells],
    cell: Cell,
    keys: ProjectKeys,
    uniques: bool,
    *,
    late_gen: int | None,
) -> None:
    grain, bucket = cell
    for k, v in h.items():
        kind, _, field = k.decode().partition(US)
        if not field.startswith(prefix):
            continue
        values = tuple(field[len(prefix) :].split(US))
        if not matches(values):
            continue
        t = tuples[values]
        if kind == "c":
            t.counts[cell] = t.counts.get(cell, 0) + int(v)
            if uniques:
                hll = (
                    keys.hll(grain, bucket, field)
                    if late_gen is None
                    else keys.late_hll(late_gen, grain, bucket, field)
                )
                t.hlls.setdefault(cell, []).append(hll)
        else:
            t.sums[cell] = t.sums.get(cell, 0) + int(v)
