"""What a dashboard needs before it asks for numbers: the event names a project has seen
lately and the single dims each was rolled up by (Postgres day rollups of the last 30 days,
plus today's and yesterday's hot days in Redis); a split project's is the union of its
shards'."""

from __future__ import annotations

import msgspec

from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.core.rollups import decode_field
from counters.engines.read.context import ReadContext
from counters.engines.read.hot import read_hot
from lua.client import redis_unavailable
from lua.keys import COUNT, parse_measure_field
from persist.catalog import names_and_dims

CATALOG_DAYS = 30


class WhoAmI(msgspec.Struct):
    projects: list[str]
    scope: str


class NameDims(msgspec.Struct):
    name: str
    dims: list[str]


class Catalog(msgspec.Struct):
    project: str
    names: list[NameDims]


async def read_catalog(ctx: ReadContext, now_ms: int) -> Catalog:
    """Event names of the last CATALOG_DAYS UTC days and their single dims, sorted (seen in
    any shard of the project); the reply names the project itself."""
    today = bucket_start(now_ms, Grain.day)
    shards = ctx.all_keys
    since = today - CATALOG_DAYS * DAY_MS
    seen = await names_and_dims(ctx.pool, [keys.project for keys in shards], since)
    days = [(Grain.day, today - DAY_MS), (Grain.day, today)]
    cells = []
    with redis_unavailable():
        # today's and yesterday's hot days, with their minutes not merged into them yet
        for keys in shards:
            cells.extend(await read_hot(ctx.scripts, keys, None, days))
    for cell in cells:
        for h in cell.hashes:
            for f in h:
                kind, field = parse_measure_field(f)
                if kind != COUNT:
                    continue
                name, rollup, _ = decode_field(field)
                dims = seen.setdefault(name, set())
                if len(rollup) == 1:
                    dims.add(rollup[0])
    return Catalog(ctx.project, [NameDims(n, sorted(d)) for n, d in sorted(seen.items())])
