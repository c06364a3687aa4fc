"""Breakdowns: the dims tuples of a rollup over a range, merged from Postgres history, Redis
hot buckets and pending late deltas (the same no-gap, no-double-count cut as api/query.py:
the Postgres snapshot's watermarks decide which buckets come from Redis)."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.buckets import Grain, from_datetime, to_datetime
from counters.core.errors import Unavailable
from counters.core.rollups import Rollup, rollup_id
from counters.engines.read.query import hot_cells, queue_read_hot, with_scripts_loaded
from lua import Scripts
from lua.keys import US, ProjectKeys
from persist.db import PG_ERRORS, Conn
from persist.schema import ROLLUP_TABLE as TABLE
from persist.state import PersistState, load_state

Cell = tuple[Grain, int]
Tuple = tuple[str, ...]
_GRAINS = {g.short: g for g in Grain}


class TupleCells(msgspec.Struct):
    """One dims tuple: count and sum per stored bucket, and its sketches' keys per bucket."""

    counts: dict[Cell, int] = msgspec.field(default_factory=dict)
    sums: dict[Cell, int] = msgspec.field(default_factory=dict)
    hlls: dict[Cell, list[str]] = msgspec.field(default_factory=dict)

    def add(self, other: TupleCells) -> None:
        for c, v in other.counts.items():
            self.counts[c] = self.counts.get(c, 0) + v
        for c, v in other.sums.items():
            self.sums[c] = self.sums.get(c, 0) + v
        for c, ks in other.hlls.items():
            self.hlls.setdefault(c, []).extend(ks)


class Breakdown(msgspec.Struct):
    tuples: dict[Tuple, TupleCells]
    tmp_blobs: dict[str, bytes]


class RankedBreakdown(msgspec.Struct):
    """For count and sum: the top tuples with their cells, and all tuples summed per cell."""

    top: list[tuple[Tuple, TupleCells]]
    all_tuples: TupleCells
    totals: dict[Tuple, int]
    """Range total of the ranking measure for each top tuple."""


class _Scope:
    """Which fields of which rollup, with some dims fixed by filters."""

    def __init__(self, name: str, rollup: Rollup, filters: dict[str, str]) -> None:
        self.name = name
        self.rollup = rollup
        self.rid = rollup_id(rollup)
        self.fixed = {rollup.index(d): v for d, v in filters.items()}
        self.prefix = name + US + self.rid + US
        self.cond = "".join(f" AND dims[{i + 1}] = ${5 + n}" for n, i in enumerate(self.fixed))
        self.cond_args: list[Any] = list(self.fixed.values())
        # grouping on text hashes faster than on text[]: one dim is the common case
        self.key_sql = "dims[1]" if len(rollup) == 1 else "array_to_string(dims, E'\\x1f')"

    def matches(self, values: Sequence[str]) -> bool:
        return len(values) == len(self.rollup) and all(
            values[i] == v for i, v in self.fixed.items()
        )


def _pg_error(exc: Exception) -> Unavailable:
    return Unavailable("postgres", str(exc) or type(exc).__name__)


def _redis_error(exc: Exception) -> Unavailable:
    return Unavailable("redis", str(exc) or type(exc).__name__)


async def _redis_cells(
    redis: Redis,
    scripts: Scripts,
    keys: ProjectKeys,
    state: PersistState,
    scope: _Scope,
    need: dict[Grain, list[int]],
    *,
    uniques: bool,
) -> dict[Tuple, TupleCells]:
    """The cells Redis is authoritative for under this snapshot's watermarks: hot buckets at
    or past them, and late generations not yet applied."""
    tuples: dict[Tuple, TupleCells] = defaultdict(TupleCells)
    hot: list[Cell] = [
        (grain, b) for grain, buckets in need.items() for b in buckets if b >= state.until(grain)
    ]

    async def first_round() -> list[Any]:
        pipe = redis.pipeline(transaction=False)
        pipe.hget(keys.watermarks, "gen")
        if hot:
            queue_read_hot(pipe, scripts, keys, None, hot)
        return list(await pipe.execute())

    try:
        replies = await with_scripts_loaded(scripts, first_round)
        gen = int(replies[0] or 0)
        if hot:
            for cell, hot_cell in zip(hot, hot_cells(replies[1], whole=True), strict=True):
                for h in hot_cell.hashes:
                    _fold_hash(h, scope, tuples, cell, keys, uniques, late_gen=None)
                if uniques:
                    _add_minute_sketches(tuples, scope, cell, hot_cell.minutes, keys)
        pending = range(state.late_applied + 1, gen + 1)
        if pending:
            pipe = redis.pipeline(transaction=False)
            for g in pending:
                pipe.hgetall(keys.late(g))
            wanted = {(g, b) for g, bs in need.items() for b in bs}
            for g, h in zip(pending, await pipe.execute(), strict=True):
                by_cell: dict[Cell, dict[bytes, bytes]] = defaultdict(dict)
                for k, v in h.items():
                    grain_s, bucket_s, rest = k.decode().split(":", 2)
                    cell = (_GRAINS[grain_s], int(bucket_s))
                    if cell in wanted:
                        by_cell[cell][rest.encode()] = v
                for cell, fields in by_cell.items():
                    _fold_hash(fields, scope, tuples, cell, keys, uniques, late_gen=g)
    except (RedisError, OSError) as exc:
        raise _redis_error(exc) from exc
    return dict(tuples)


def _fold_hash(
    h: dict[bytes, bytes],
    scope: _Scope,
    tuples: dict[Tuple, TupleCells],
    cell: Cell,
    keys: ProjectKeys,
    uniques: bool,
    *,
    late_gen: int | None,
) -> None:
    grain, bucket = cell
    prefix = scope.prefix
    for k, v in h.items():
        kind, _, field = k.decode().partition(US)
        if not field.startswith(prefix):
            continue
        values = tuple(field[len(prefix) :].split(US))
        if not scope.matches(values):
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


def _add_minute_sketches(
    tuples: dict[Tuple, TupleCells],
    scope: _Scope,
    cell: Cell,
    minutes: Sequence[int],
    keys: ProjectKeys,
) -> None:
    """A hot hour's or day's uniques also hold its minutes not merged into it yet."""
    if not minutes:
        return
    for values, t in tuples.items():
        if cell in t.hlls:
            field = scope.prefix + US.join(values)
            extra = [keys.hll(Grain.minute, m, field) for m in minutes]
            t.hlls[cell] = list(dict.fromkeys(t.hlls[cell] + extra))


def _pg_buckets(state: PersistState, need: dict[Grain, list[int]]) -> list[tuple[Grain, list[Any]]]:
    out = []
    for grain, buckets in need.items():
        wanted = [to_datetime(b) for b in buckets if b < state.until(grain)]
        if wanted:
            out.append((grain, wanted))
    return out


async def _in_snapshot(
    pool: asyncpg.Pool, project: str, body: Callable[[Conn, PersistState], Any]
) -> Any:
    try:
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state = await load_state(conn, project, create=False)
                return await body(conn, state)
    except PG_ERRORS as exc:
        raise _pg_error(exc) from exc


async def read_breakdown(
    pool: asyncpg.Pool,
    redis: Redis,
    scripts: Scripts,
    keys: ProjectKeys,
    name: str,
    rollup: Rollup,
    filters: dict[str, str],
    need: dict[Grain, list[int]],
    *,
    uniques: bool,
) -> Breakdown:
    """Every dims tuple of `rollup` (values of the filtered dims fixed) with its cells over
    the needed stored buckets, sketches included (for uniques)."""
    scope = _Scope(name, rollup, filters)
    tmp: dict[str, bytes] = {}

    async def body(conn: Conn, state: PersistState) -> dict[Tuple, TupleCells]:
        tuples: dict[Tuple, TupleCells] = defaultdict(TupleCells)
        for grain, wanted in _pg_buckets(state, need):
            rows = await conn.fetch(
                f"SELECT dims, bucket, count, sum_micros,"
                f" {'hll' if uniques else 'NULL::bytea AS hll'} FROM {TABLE[grain]}"
                " WHERE project = $1 AND name = $2 AND rollup = $3"
                f" AND bucket = ANY($4::timestamptz[]){scope.cond}",
                keys.project,
                name,
                scope.rid,
                wanted,
                *scope.cond_args,
            )
            for r in rows:
                cell = (grain, from_datetime(r["bucket"]))
                row = tuples[tuple(r["dims"])]
                row.counts[cell] = r["count"]
                row.sums[cell] = r["sum_micros"]
                if uniques and r["hll"] is not None:
                    k = keys.tmp(uuid.uuid4().hex)
                    tmp[k] = r["hll"]
                    row.hlls.setdefault(cell, []).append(k)
        for t, cells in (
            await _redis_cells(redis, scripts, keys, state, scope, need, uniques=uniques)
        ).items():
            tuples[t].add(cells)
        return dict(tuples)

    return Breakdown(await _in_snapshot(pool, keys.project, body), tmp)


RANK_DEPTHS = (64, 512)
"""Rows the ranking reads from the top of each bucket's list (by count) before it tries to
prove the top N; then deeper; past the last depth it totals every row instead."""
RANK_MAX_LISTS = 100
"""More buckets than this (say an hourly breakdown over weeks): total every row instead."""


def _lists(per_grain: Sequence[tuple[Grain, list[Any]]]) -> int:
    return sum(len(wanted) for _, wanted in per_grain)


async def _prove_top(
    conn: Conn,
    scope: _Scope,
    project: str,
    per_grain: Sequence[tuple[Grain, list[Any]]],
    limit: int,
    redis_totals: dict[Tuple, int],
) -> list[Tuple] | None:
    """The top `limit` tuples by count over the buckets, read from the first rows of each
    bucket's list in count order (the threshold algorithm without random access), or None
    when those rows cannot prove which tuples they are. A tuple's total is at least what
    was seen of it (plus Redis) and at most that plus, for every bucket where it was not
    seen, the smallest count read there; the top is proven when every other tuple's most
    is below the least of the top's."""
    for depth in RANK_DEPTHS:
        least: dict[Tuple, int] = dict(redis_totals)
        room_where_seen: dict[Tuple, int] = {}  # per tuple: the room of the buckets it was seen in
        room = 0  # sum over buckets of the most an unseen row of that bucket may count
        for grain, wanted in per_grain:
            rows = await conn.fetch(
                "SELECT b.bucket, r.k, r.m FROM unnest($4::timestamptz[]) AS b(bucket),"
                f" LATERAL (SELECT {scope.key_sql} AS k, count AS m FROM {TABLE[grain]}"
                " WHERE project = $1 AND name = $2 AND rollup = $3 AND bucket = b.bucket"
                " ORDER BY count DESC LIMIT $5) r",
                project,
                scope.name,
                scope.rid,
                wanted,
                depth,
            )
            per_bucket: dict[Any, list[tuple[Tuple, int]]] = defaultdict(list)
            for r in rows:
                per_bucket[r["bucket"]].append((tuple(r["k"].split(US)), r["m"]))
            for items in per_bucket.values():
                left = min(m for _, m in items) if len(items) == depth else 0
                room += left
                for t, m in items:
                    least[t] = least.get(t, 0) + m
                    room_where_seen[t] = room_where_seen.get(t, 0) + left
        ranked = sorted(least, key=lambda t: (-least[t], t))
        if room == 0:  # every list read to its end: every total is known exactly
            return ranked[:limit]
        if len(ranked) < limit:
            continue
        floor = least[ranked[limit - 1]]
        most_outside = max(
            [room] + [least[t] + room - room_where_seen.get(t, 0) for t in ranked[limit:]]
        )
        if most_outside < floor:
            return ranked[:limit]
    return None


async def read_ranked(
    pool: asyncpg.Pool,
    redis: Redis,
    scripts: Scripts,
    keys: ProjectKeys,
    name: str,
    rollup: Rollup,
    filters: dict[str, str],
    need: dict[Grain, list[int]],
    *,
    by_sum: bool,
    limit: int,
) -> RankedBreakdown:
    """Top `limit` tuples by count (or sum) without reading every tuple's rows: the top of
    each bucket's list proves the ranking when it can (_prove_top), else Postgres totals
    every tuple in SQL; only the top tuples' rows are returned. The Redis part (hot
    buckets, pending late deltas) is merged before ranking."""
    scope = _Scope(name, rollup, filters)
    measure_col = "sum_micros" if by_sum else "count"

    async def body(conn: Conn, state: PersistState) -> RankedBreakdown:
        redis_part = await _redis_cells(redis, scripts, keys, state, scope, need, uniques=False)
        totals: dict[Tuple, int] = {
            t: sum((c.sums if by_sum else c.counts).values()) for t, c in redis_part.items()
        }
        everything = TupleCells()
        for cells in redis_part.values():
            everything.add(cells)
        per_grain = _pg_buckets(state, need)
        proven = None
        if not by_sum and not scope.cond_args and _lists(per_grain) <= RANK_MAX_LISTS:
            proven = await _prove_top(conn, scope, keys.project, per_grain, limit, totals)
        for grain, wanted in per_grain:
            args = [keys.project, name, scope.rid, wanted, *scope.cond_args]
            where = (
                f"FROM {TABLE[grain]} WHERE project = $1 AND name = $2 AND rollup = $3"
                f" AND bucket = ANY($4::timestamptz[]){scope.cond}"
            )
            if proven is not None:
                # the ranking is settled: only the per-bucket sums of all tuples are needed
                sql = "SELECT NULL AS k, bucket, 0 AS m, sum(count)::bigint AS c,"
                sql += f" sum(sum_micros)::bigint AS s {where} GROUP BY bucket"
            else:
                # one scan: per tuple (ranking) and per bucket (all tuples, for __other__)
                sql = f"SELECT {scope.key_sql} AS k, bucket, sum({measure_col})::bigint AS m,"
                sql += " sum(count)::bigint AS c, sum(sum_micros)::bigint AS s"
                sql += f" {where} GROUP BY GROUPING SETS (({scope.key_sql}), (bucket))"
            for r in await conn.fetch(sql, *args):
                if r["k"] is not None:
                    t = tuple(r["k"].split(US))
                    totals[t] = totals.get(t, 0) + r["m"]
                else:
                    cell = (grain, from_datetime(r["bucket"]))
                    everything.counts[cell] = everything.counts.get(cell, 0) + r["c"]
                    everything.sums[cell] = everything.sums.get(cell, 0) + r["s"]
        top = proven if proven is not None else sorted(totals, key=lambda t: (-totals[t], t))
        top = top[:limit]
        cells_of: dict[Tuple, TupleCells] = {t: TupleCells() for t in top}
        joined = [US.join(t) for t in top]
        for grain, wanted in per_grain:
            if not joined:
                break
            n = 5 + len(scope.cond_args)
            for r in await conn.fetch(
                f"SELECT dims, bucket, count, sum_micros FROM {TABLE[grain]}"
                " WHERE project = $1 AND name = $2 AND rollup = $3"
                f" AND bucket = ANY($4::timestamptz[]){scope.cond}"
                f" AND {scope.key_sql} = ANY(${n}::text[])",
                keys.project,
                name,
                scope.rid,
                wanted,
                *scope.cond_args,
                joined,
            ):
                cells = cells_of[tuple(r["dims"])]
                cell = (grain, from_datetime(r["bucket"]))
                cells.counts[cell] = r["count"]
                cells.sums[cell] = r["sum_micros"]
        for t in top:
            if t in redis_part:
                cells_of[t].add(redis_part[t])
        if proven is not None:  # exact totals of the proven top, in the usual order
            totals = {t: sum(cells_of[t].counts.values()) for t in top}
            top = sorted(top, key=lambda t: (-totals[t], t))
        return RankedBreakdown(
            [(t, cells_of[t]) for t in top], everything, {t: totals[t] for t in top}
        )

    result: RankedBreakdown = await _in_snapshot(pool, keys.project, body)
    return result
