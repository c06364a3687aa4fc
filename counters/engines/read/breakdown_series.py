"""Breakdown series: the top `limit` dims tuples by the measure over the range, each with
its per-period values, then one `__other__` series for the rest of the tuples and one
`__none__` series for the events lacking a grouped dim, so that for count and sum the
series add up to the total, per period and over the range. For uniques, `__none__` is the
uids seen only in events lacking a grouped dim: uniques(total) - uniques(union of every
tuple), floored at 0 (an estimate within HyperLogLog error of both terms); the union of
every series is then the total's uniques."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence

from counters.core.measures import measure_value
from counters.core.rollups import NONE, OTHER
from counters.engines.read.breakdown import (
    Breakdown,
    RankedBreakdown,
    Tuple,
    TupleCells,
    read_breakdown,
    read_ranked,
)
from counters.engines.read.breakdown_shards import read_split_breakdown
from counters.engines.read.cells import Periods, Value
from counters.engines.read.context import ReadContext
from counters.engines.read.pace import Pacer
from counters.engines.read.parse import ReadQuery
from counters.engines.read.plan import Cell, flatten, need
from counters.engines.read.query import (
    TMP_TTL_MS,
    BucketValues,
    count_uniques,
    deletes,
    execute_chunked,
)
from counters.engines.read.reply import DimValues, NamedSeries, points
from lua.client import RedisClient, redis_unavailable


def _dims(q: ReadQuery, values: Sequence[str]) -> DimValues:
    """The filters plus the breakdown dims' values of one tuple (values in rollup order)."""
    return {**q.reply_dims, **{d: values[q.rollup.index(d)] for d in q.group_by}}


def other_dims(q: ReadQuery, value: str = OTHER) -> DimValues:
    """The dims of the `__other__` series (or, with value=NONE, of `__none__`)."""
    return {**q.reply_dims, **{d: value for d in q.group_by}}


def merge_any_of(q: ReadQuery, bd: Breakdown) -> Breakdown:
    """The breakdown's tuples with the any-of dims' values forgotten: tuples that differ
    only there are one (counts and sums add, sketches unite); `__none__`'s total is
    already every total field added up."""
    if not q.any_of:
        return bd
    blank = {q.rollup.index(d) for d, _ in q.any_of}
    merged: dict[Tuple, TupleCells] = {}
    for values, t in bd.tuples.items():
        key = tuple("" if i in blank else v for i, v in enumerate(values))
        merged.setdefault(key, TupleCells()).add(t)
    return Breakdown(merged, bd.tmp_blobs, bd.total)


def _ranked_from(q: ReadQuery, bd: Breakdown, cells: Periods) -> RankedBreakdown:
    """A ranking of every tuple read (count or sum over the range), as read_ranked gives
    for the tuples it proves."""
    everything = flatten(cells)
    source = "sums" if q.measure == "sum" else "counts"
    totals = {
        t: sum(getattr(c, source).get(x, 0) for x in everything) for t, c in bd.tuples.items()
    }
    top = sorted(totals, key=lambda t: (-totals[t], t))[: q.limit]
    all_tuples = TupleCells()
    for c in bd.tuples.values():
        all_tuples.add(c)
    return RankedBreakdown(
        [(t, bd.tuples[t]) for t in top], all_tuples, bd.total, {t: totals[t] for t in top}
    )


def _value_of(q: ReadQuery, t: TupleCells, cells: Sequence[Cell]) -> Value:
    return measure_value(
        q.measure, sum(t.counts.get(x, 0) for x in cells), sum(t.sums.get(x, 0) for x in cells)
    )


async def ranked_series(
    ctx: ReadContext, q: ReadQuery, name: str, cells: Periods
) -> list[NamedSeries]:
    """Breakdown by count or sum: ranked in Postgres, only the top tuples' rows read; the
    rest is all tuples minus the top. With any-of filters, every tuple is read and the
    tuples that differ only in an any-of dim are merged before ranking; a split project's
    every tuple is read in each shard, merged, then ranked."""
    if ctx.shards:
        bd = await read_split_breakdown(
            ctx, name, q.rollup, q.filter_sets, need(cells), uniques=False
        )
        ranked = _ranked_from(q, merge_any_of(q, bd), cells)
    elif q.any_of:
        bd = await read_breakdown(ctx, name, q.rollup, q.filter_sets, need(cells))
        ranked = _ranked_from(q, merge_any_of(q, bd), cells)
    else:
        ranked = await read_ranked(
            ctx,
            name,
            q.rollup,
            q.filter_sets,
            need(cells),
            by_sum=q.measure == "sum",
            limit=q.limit,
        )
    everything = flatten(cells)

    def series(t: TupleCells, dims: DimValues) -> NamedSeries:
        data = [_value_of(q, t, p) for p in cells]
        return NamedSeries(name, dims, _value_of(q, t, everything), points(q, data))

    out: list[NamedSeries] = []
    rest = TupleCells(dict(ranked.all_tuples.counts), dict(ranked.all_tuples.sums))
    pacer = Pacer()
    for values, t in ranked.top:
        out.append(series(t, _dims(q, values)))
        rest.add(t, sign=-1)
        await pacer.tick()
    out.append(series(rest, other_dims(q)))
    none = TupleCells(dict(ranked.total.counts), dict(ranked.total.sums))
    none.add(ranked.all_tuples, sign=-1)
    out.append(series(none, other_dims(q, NONE)))
    return out


def _sketches(t: TupleCells, cells: Sequence[Cell]) -> list[str]:
    return [k for cell in cells for k in t.hlls.get(cell, [])]


async def _count_merged(
    redis: RedisClient,
    blobs: BucketValues,
    merges: Sequence[tuple[str, list[str]]],
    groups: Sequence[Sequence[str]],
) -> list[int]:
    """count_uniques, after PFMERGE of each (scratch key, sketches) in the same pipelines:
    a union counted more than once (the rest's, alone and with the top) is merged once."""
    scratch_keys = [*blobs.tmp_blobs, *(scratch for scratch, _ in merges)]
    commands = itertools.chain(
        (("SET", key, blob, "PX", TMP_TTL_MS) for key, blob in blobs.tmp_blobs.items()),
        (
            c
            for scratch, keys in merges
            for c in (("PFMERGE", scratch, *keys), ("PEXPIRE", scratch, TMP_TTL_MS))
        ),
        (("PFCOUNT", *group) for group in groups if group),
        deletes(scratch_keys),
    )
    with redis_unavailable():
        replies = await execute_chunked(redis, commands)
    counted = iter(replies[len(blobs.tmp_blobs) + 2 * len(merges) :])
    return [int(next(counted)) if group else 0 for group in groups]


async def uniques_series(
    ctx: ReadContext, q: ReadQuery, name: str, cells: Periods
) -> list[NamedSeries]:
    """Breakdown by uniques: every tuple's sketches read, ranked by the union over the
    range; the rest's uniques are the union of the rest's sketches, never a sum (a split
    project's tuples merged over its shards first: their sketches united)."""
    if ctx.shards:
        read = await read_split_breakdown(
            ctx, name, q.rollup, q.filter_sets, need(cells), uniques=True
        )
    else:
        read = await read_breakdown(ctx, name, q.rollup, q.filter_sets, need(cells))
    bd = merge_any_of(q, read)
    blobs = BucketValues([], [], [], bd.tmp_blobs)
    everything = flatten(cells)
    items = list(bd.tuples.items())
    pacer = Pacer()
    whole_sketches: list[list[str]] = []
    for _, t in items:
        whole_sketches.append(_sketches(t, everything))
        await pacer.tick()
    totals: list[Value] = list(
        await count_uniques(ctx.redis, blobs, whole_sketches) if items else []
    )
    ranked = sorted(range(len(items)), key=lambda i: (-totals[i], items[i][0]))
    top, rest = ranked[: q.limit], ranked[q.limit :]
    groups: list[list[str]] = []
    for i in top:
        groups.extend(_sketches(items[i][1], p) for p in cells)
        await pacer.tick()

    # per period, then the range: the rest (merged once into a scratch key), every tuple
    # (the rest's key and the top's sketches, merged too), the total (the filters' rollup).
    # The range's unions merge the periods' merged keys: no command names every sketch.
    def scratch() -> str:
        return ctx.keys.tmp(uuid.uuid4().hex)

    rest_of = [scratch() for _ in cells]
    all_of = [scratch() for _ in cells]
    rest_range, all_range = scratch(), scratch()
    merges: list[tuple[str, list[str]]] = []
    for key, p in zip(rest_of, cells, strict=True):
        merges.append((key, [k for i in rest for k in _sketches(items[i][1], p)]))
        await pacer.tick()
    for key, rest_key, p in zip(all_of, rest_of, cells, strict=True):
        merges.append((key, [rest_key, *(k for i in top for k in _sketches(items[i][1], p))]))
        await pacer.tick()
    merges += [(rest_range, rest_of), (all_range, all_of)]
    groups.extend([key] for key in [*rest_of, rest_range])
    groups.extend([key] for key in [*all_of, all_range])
    groups.extend(_sketches(bd.total, p) for p in [*cells, everything])
    counted = await _count_merged(ctx.redis, blobs, [m for m in merges if m[1]], groups)
    n = len(cells)
    out: list[NamedSeries] = []
    for j, i in enumerate(top):
        data = counted[j * n : (j + 1) * n]
        out.append(NamedSeries(name, _dims(q, items[i][0]), totals[i], points(q, data)))
        await pacer.tick()
    at = len(top) * n
    other, tuples, whole = (counted[at + k * (n + 1) : at + (k + 1) * (n + 1)] for k in range(3))
    out.append(NamedSeries(name, other_dims(q), other[-1], points(q, other[:-1])))
    none = [max(0, w - t) for w, t in zip(whole, tuples, strict=True)]
    out.append(NamedSeries(name, other_dims(q, NONE), none[-1], points(q, none[:-1])))
    return out


async def breakdown_series(
    ctx: ReadContext, q: ReadQuery, name: str, cells: Periods
) -> list[NamedSeries]:
    """Top `limit` dims tuples by the measure over the range, then __other__ and __none__
    (always both, zero or not)."""
    if q.measure == "uniques":
        return await uniques_series(ctx, q, name, cells)
    return await ranked_series(ctx, q, name, cells)
