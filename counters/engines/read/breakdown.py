"""Breakdowns: the dims tuples of a rollup over a range, merged from Postgres history, Redis
hot buckets and pending late deltas (the same no-gap, no-double-count cut as query.py: the
Postgres snapshot's watermarks decide which buckets come from Redis)."""

from __future__ import annotations

import itertools
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from counters.core.buckets import Grain
from counters.core.rollups import (
    Rollup,
    encode_field,
    field_prefix,
    field_values,
    rollup_for_filters,
)
from counters.engines.read.context import ReadContext
from counters.engines.read.hot import hot_cells, queue_read_hot, with_scripts_loaded
from counters.engines.read.pace import Pacer
from counters.engines.read.plan import Cell, Need
from lua.client import redis_unavailable
from lua.keys import COUNT, parse_late_field, parse_measure_field
from persist.db import Conn
from persist.rollup_reads import RollupSelect, snapshot, top_of_lists, totals, tuple_rows
from persist.state import PersistState

Tuple = tuple[str, ...]
Grains = list[tuple[Grain, list[int]]]


class TupleCells(msgspec.Struct):
    """One dims tuple: count and sum per stored bucket, and its sketches' keys per bucket."""

    counts: dict[Cell, int] = msgspec.field(default_factory=dict)
    sums: dict[Cell, int] = msgspec.field(default_factory=dict)
    hlls: dict[Cell, list[str]] = msgspec.field(default_factory=dict)

    def add(self, other: TupleCells, sign: int = 1) -> None:
        """Adds (or with sign=-1 subtracts) another tuple's counts and sums; sketches add."""
        for c, v in other.counts.items():
            self.counts[c] = self.counts.get(c, 0) + sign * v
        for c, v in other.sums.items():
            self.sums[c] = self.sums.get(c, 0) + sign * v
        for c, ks in other.hlls.items():
            self.hlls.setdefault(c, []).extend(ks)


class Breakdown(msgspec.Struct):
    tuples: dict[Tuple, TupleCells]
    tmp_blobs: dict[str, bytes]
    total: TupleCells
    """The filters' own rollup (every event the breakdown is about, grouped dims or not)."""


class RankedBreakdown(msgspec.Struct):
    """For count and sum: the top tuples with their cells, and all tuples summed per cell."""

    top: list[tuple[Tuple, TupleCells]]
    all_tuples: TupleCells
    total: TupleCells
    """The filters' own rollup: all_tuples plus the events lacking a grouped dim."""
    totals: dict[Tuple, int]
    """Range total of the ranking measure for each top tuple."""


TOTAL: Tuple = ()
"""The key of the breakdown's total (the filters' own rollup) among its tuples: a breakdown
rollup has at least one grouped dim, so no real tuple is empty."""


Filters = Mapping[str, Sequence[str]]
"""Each filtered dim and the values it may take: one, or several (any of them)."""


class _Scope:
    """Which fields of which rollup, with some dims fixed by filters (to one value or any of
    several); and the fields of the filters' own rollup (the total every breakdown adds up
    to: one field, or one per combination of any-of values), all under the key TOTAL."""

    def __init__(self, project: str, name: str, rollup: Rollup, filters: Filters) -> None:
        self.name = name
        self.rollup = rollup
        self.fixed = {rollup.index(d): tuple(vs) for d, vs in filters.items()}
        self.prefix = field_prefix(name, rollup)
        self.select = RollupSelect(project, name, rollup, self.fixed)
        whole = rollup_for_filters(filters)
        self.total_fields = [
            encode_field(name, whole, combo)
            for combo in itertools.product(*(filters[d] for d in whole))
        ]
        self._totals = set(self.total_fields)
        self.total_select = RollupSelect(
            project, name, whole, dict(enumerate(filters[d] for d in whole))
        )

    def values(self, field: str) -> Tuple | None:
        """The dims tuple of a rollup field in scope (TOTAL for a total's field), else None."""
        if field in self._totals:
            return TOTAL
        values = field_values(field, self.prefix)
        if values is None or len(values) != len(self.rollup):
            return None
        if any(values[i] not in vs for i, vs in self.fixed.items()):
            return None
        return values

    def fields(self, values: Tuple) -> list[str]:
        """The rollup fields of a tuple (TOTAL: every total field)."""
        if values == TOTAL:
            return self.total_fields
        return [encode_field(self.name, self.rollup, values)]


def _fold_hash(
    ctx: ReadContext,
    h: dict[bytes, bytes],
    scope: _Scope,
    tuples: dict[Tuple, TupleCells],
    cell: Cell,
    uniques: bool,
    late_gen: int | None,
) -> None:
    """Adds one hot (or late) hash's fields in scope to their tuples' cell."""
    grain, bucket = cell
    for k, v in h.items():
        kind, field = parse_measure_field(k)
        values = scope.values(field)
        if values is None:
            continue
        t = tuples[values]
        if kind != COUNT:
            t.sums[cell] = t.sums.get(cell, 0) + int(v)
            continue
        t.counts[cell] = t.counts.get(cell, 0) + int(v)
        if uniques:
            hll = (
                ctx.keys.hll(grain, bucket, field)
                if late_gen is None
                else ctx.keys.late_hll(late_gen, grain, bucket, field)
            )
            t.hlls.setdefault(cell, []).append(hll)


def _add_minute_sketches(
    ctx: ReadContext,
    tuples: dict[Tuple, TupleCells],
    scope: _Scope,
    cell: Cell,
    minutes: Sequence[int],
) -> None:
    """A hot hour's or day's uniques also hold its minutes not merged into it yet."""
    if not minutes:
        return
    for values, t in tuples.items():
        if cell in t.hlls:
            extra = [
                ctx.keys.hll(Grain.minute, m, field)
                for field in scope.fields(values)
                for m in minutes
            ]
            t.hlls[cell] = list(dict.fromkeys(t.hlls[cell] + extra))


async def _late_cells(
    ctx: ReadContext,
    pending: range,
    need: Need,
    scope: _Scope,
    tuples: dict[Tuple, TupleCells],
    uniques: bool,
) -> None:
    """Folds the late generations Postgres has not applied into the needed cells."""
    pipe = ctx.redis.pipeline(transaction=False)
    for g in pending:
        pipe.hgetall(ctx.keys.late(g))
    wanted = {(g, b) for g, bs in need.items() for b in bs}
    pacer = Pacer()
    for g, h in zip(pending, await pipe.execute(), strict=True):
        by_cell: dict[Cell, dict[bytes, bytes]] = defaultdict(dict)
        for k, v in h.items():
            grain, bucket, rest = parse_late_field(k)
            if (grain, bucket) in wanted:
                by_cell[(grain, bucket)][rest.encode()] = v
        for cell, fields in by_cell.items():
            _fold_hash(ctx, fields, scope, tuples, cell, uniques, g)
            await pacer.tick()


async def _redis_cells(
    ctx: ReadContext, state: PersistState, scope: _Scope, need: Need, *, uniques: bool
) -> dict[Tuple, TupleCells]:
    """The cells Redis is authoritative for under this snapshot's watermarks: hot buckets at
    or past them, and late generations not yet applied."""
    tuples: dict[Tuple, TupleCells] = defaultdict(TupleCells)
    hot: list[Cell] = [
        (grain, b) for grain, buckets in need.items() for b in buckets if b >= state.until(grain)
    ]

    async def first_round() -> list[Any]:
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.hget(ctx.keys.watermarks, "gen")
        if hot:
            queue_read_hot(pipe, ctx.scripts, ctx.keys, None, hot)
        return list(await pipe.execute())

    pacer = Pacer()
    with redis_unavailable():
        replies = await with_scripts_loaded(ctx.scripts, first_round)
        for cell, hot_cell in zip(
            hot, hot_cells(replies[1], whole=True) if hot else (), strict=True
        ):
            for h in hot_cell.hashes:
                _fold_hash(ctx, h, scope, tuples, cell, uniques, None)
                await pacer.tick()
            if uniques:
                _add_minute_sketches(ctx, tuples, scope, cell, hot_cell.minutes)
                await pacer.tick()
        pending = range(state.late_applied + 1, int(replies[0] or 0) + 1)
        if pending:
            await _late_cells(ctx, pending, need, scope, tuples, uniques)
    return dict(tuples)


def _pg_buckets(state: PersistState, need: Need) -> Grains:
    """Per grain, the needed buckets Postgres is authoritative for."""
    out = []
    for grain, buckets in need.items():
        wanted = [b for b in buckets if b < state.until(grain)]
        if wanted:
            out.append((grain, wanted))
    return out


async def read_breakdown(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    filters: Filters,
    need: Need,
    *,
    uniques: bool = True,
) -> Breakdown:
    """Every dims tuple of `rollup` (the filtered dims taking one of their values) with its
    cells over the needed stored buckets, sketches included (unless uniques=False: counts
    and sums only); the total adds up every field of the filters' own rollup."""
    scope = _Scope(ctx.project, name, rollup, filters)
    tmp: dict[str, bytes] = {}
    tuples: dict[Tuple, TupleCells] = defaultdict(TupleCells)
    pacer = Pacer()
    async with snapshot(ctx.pool, ctx.project) as (conn, state):
        for grain, wanted in _pg_buckets(state, need):
            rows = await tuple_rows(conn, scope.select, grain, wanted, with_hll=uniques)
            whole = await tuple_rows(conn, scope.total_select, grain, wanted, with_hll=uniques)
            for r in rows + [msgspec.structs.replace(r, dims=TOTAL) for r in whole]:
                await pacer.tick()
                cell = (grain, r.bucket)
                row = tuples[r.dims]  # one row per tuple and cell, but several totals
                row.counts[cell] = row.counts.get(cell, 0) + r.count
                row.sums[cell] = row.sums.get(cell, 0) + r.sum_micros
                if r.hll is not None:
                    k = ctx.keys.tmp(uuid.uuid4().hex)
                    tmp[k] = r.hll
                    row.hlls.setdefault(cell, []).append(k)
        for t, cells in (await _redis_cells(ctx, state, scope, need, uniques=uniques)).items():
            tuples[t].add(cells)
            await pacer.tick()
    total = tuples.pop(TOTAL, None) or TupleCells()
    return Breakdown(dict(tuples), tmp, total)


RANK_DEPTHS = (64, 512)
"""Rows the ranking reads from the top of each bucket's list (by count) before it tries to
prove the top N; then deeper; past the last depth it totals every row instead."""
RANK_MAX_LISTS = 100
"""More buckets than this (say an hourly breakdown over weeks): total every row instead."""


def _lists(per_grain: Grains) -> int:
    return sum(len(wanted) for _, wanted in per_grain)


async def _prove_top(
    conn: Conn,
    scope: _Scope,
    per_grain: Grains,
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
            for items in await top_of_lists(conn, scope.select, grain, wanted, depth):
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


def _ranking(totals_: dict[Tuple, int]) -> list[Tuple]:
    return sorted(totals_, key=lambda t: (-totals_[t], t))


async def _add_totals(
    conn: Conn,
    sel: RollupSelect,
    per_grain: Grains,
    ranking: dict[Tuple, int],
    everything: TupleCells,
    *,
    by_sum: bool,
    per_tuple: bool,
) -> None:
    """Adds Postgres's per-bucket sums of all tuples to everything and, with per_tuple,
    each tuple's range total of the ranking measure to ranking."""
    for grain, wanted in per_grain:
        found = await totals(conn, sel, grain, wanted, by_sum=by_sum, per_tuple=per_tuple)
        for t, m in found.per_tuple.items():
            ranking[t] = ranking.get(t, 0) + m
        for b, (c, s) in found.per_bucket.items():
            cell = (grain, b)
            everything.counts[cell] = everything.counts.get(cell, 0) + c
            everything.sums[cell] = everything.sums.get(cell, 0) + s


async def _top_cells(
    conn: Conn, sel: RollupSelect, per_grain: Grains, top: list[Tuple]
) -> dict[Tuple, TupleCells]:
    """The Postgres rows of the top tuples only."""
    cells_of: dict[Tuple, TupleCells] = {t: TupleCells() for t in top}
    for grain, wanted in per_grain if top else ():
        for r in await tuple_rows(conn, sel, grain, wanted, with_hll=False, only=top):
            cells = cells_of[r.dims]
            cells.counts[(grain, r.bucket)] = r.count
            cells.sums[(grain, r.bucket)] = r.sum_micros
    return cells_of


async def _total_cells(conn: Conn, sel: RollupSelect, per_grain: Grains) -> TupleCells:
    """The Postgres rows of the filters' own rollup (its fields added up) in the buckets."""
    out = TupleCells()
    for grain, wanted in per_grain:
        for r in await tuple_rows(conn, sel, grain, wanted, with_hll=False):
            cell = (grain, r.bucket)
            out.counts[cell] = out.counts.get(cell, 0) + r.count
            out.sums[cell] = out.sums.get(cell, 0) + r.sum_micros
    return out


async def read_ranked(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    filters: Filters,
    need: Need,
    *,
    by_sum: bool,
    limit: int,
) -> RankedBreakdown:
    """Top `limit` tuples by count (or sum) without reading every tuple's rows: the top of
    each bucket's list proves the ranking when it can (_prove_top), else Postgres totals
    every tuple in SQL; only the top tuples' rows are returned. The Redis part (hot
    buckets, pending late deltas) is merged before ranking."""
    scope = _Scope(ctx.project, name, rollup, filters)
    async with snapshot(ctx.pool, ctx.project) as (conn, state):
        redis_part = await _redis_cells(ctx, state, scope, need, uniques=False)
        total = redis_part.pop(TOTAL, None) or TupleCells()
        ranking: dict[Tuple, int] = {
            t: sum((c.sums if by_sum else c.counts).values()) for t, c in redis_part.items()
        }
        everything = TupleCells()
        pacer = Pacer()
        for cells in redis_part.values():
            everything.add(cells)
            await pacer.tick()
        per_grain = _pg_buckets(state, need)
        proven = None
        if not by_sum and not scope.select.fixed and _lists(per_grain) <= RANK_MAX_LISTS:
            proven = await _prove_top(conn, scope, per_grain, limit, ranking)
        await _add_totals(
            conn,
            scope.select,
            per_grain,
            ranking,
            everything,
            by_sum=by_sum,
            per_tuple=proven is None,
        )
        top = (proven if proven is not None else _ranking(ranking))[:limit]
        cells_of = await _top_cells(conn, scope.select, per_grain, top)
        total.add(await _total_cells(conn, scope.total_select, per_grain))
    for t in top:
        if t in redis_part:
            cells_of[t].add(redis_part[t])
            await pacer.tick()
    if proven is not None:  # exact totals of the proven top, in the usual order
        ranking = {t: sum(cells_of[t].counts.values()) for t in top}
        top = _ranking(ranking)
    return RankedBreakdown(
        [(t, cells_of[t]) for t in top], everything, total, {t: ranking[t] for t in top}
    )
