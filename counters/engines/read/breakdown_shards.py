"""Breakdowns of a split project (counters/core/shards.py): every shard's breakdown read on
its own (its own Postgres snapshot and watermarks, its own Redis keys: each exact alone),
then merged tuple by tuple (counts and sums add, sketches join, united when counted, never
summed). The caller ranks the merged tuples, as it does for any-of filters."""

from __future__ import annotations

from counters.core.rollups import Rollup
from counters.engines.read.breakdown import Breakdown, Filters, read_breakdown
from counters.engines.read.context import ReadContext
from counters.engines.read.pace import Pacer
from counters.engines.read.plan import Need
from counters.engines.read.query import move_sketches
from lua.client import RedisClient
from lua.keys import ProjectKeys


async def read_split_breakdown(
    ctx: ReadContext,
    name: str,
    rollup: Rollup,
    filters: Filters,
    need: Need,
    *,
    uniques: bool,
) -> Breakdown:
    """read_breakdown of every shard of ctx's project (ctx.all_keys), merged: each tuple's
    cells are the sum of its cells in every shard, its sketches those of every shard (on a
    Redis Cluster moved into shard 0's slot, so one PFCOUNT unites them); the total too."""
    out, *others = await ctx.each_shard(
        lambda one: read_breakdown(one, name, rollup, filters, need, uniques=uniques)
    )
    for part in others:
        if uniques and ctx.sketches_cross_slots:
            await _localize(ctx.redis, part, ctx.keys)
        await add_breakdown(out, part)
    return out


async def add_breakdown(into: Breakdown, other: Breakdown) -> None:
    """Adds another shard's breakdown of the same read: tuples missing from into are taken
    as they are, the others' cells added (TupleCells.add); the total likewise."""
    pacer = Pacer()
    for values, cells in other.tuples.items():
        mine = into.tuples.get(values)
        if mine is None:
            into.tuples[values] = cells
        else:
            mine.add(cells)
        await pacer.tick()
    into.total.add(other.total)
    into.tmp_blobs.update(other.tmp_blobs)


async def _localize(redis: RedisClient, bd: Breakdown, home: ProjectKeys) -> None:
    """Moves every sketch of bd (another shard's slot) under scratch keys of home's slot;
    sketches that no longer exist are left out (an empty sketch)."""
    cells = [*bd.tuples.values(), bd.total]
    wanted = (k for t in cells for ks in t.hlls.values() for k in ks)
    renamed, bd.tmp_blobs = await move_sketches(redis, wanted, bd.tmp_blobs, home)
    for t in cells:
        t.hlls = {c: [renamed[k] for k in ks if k in renamed] for c, ks in t.hlls.items()}
