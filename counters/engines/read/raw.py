"""Answers from the raw log when no rollup covers the filters and breakdown dims.

Exact and slower: Postgres aggregates raw_events up to its copy cursor (read in one snapshot
with the cursor), and the raw-log entries still in Redis past that cursor are folded in
Python. Redis is read first, so an entry trimmed meanwhile is already in Postgres."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.buckets import to_datetime
from counters.core.errors import Unavailable
from counters.core.models import RawEvent
from lua.keys import ProjectKeys
from persist.db import PG_ERRORS
from persist.schema import stream_order as stream_key
from persist.state import load_state

_batch = msgspec.msgpack.Decoder(list[RawEvent])


class Acc(msgspec.Struct):
    """One group's measures in one period."""

    count: int = 0
    sum_micros: int = 0
    uids: set[str] | None = None


Groups = dict[tuple[str, ...], list[Acc]]


def _period_index(ts: int, starts: Sequence[int]) -> int:
    lo, hi = 0, len(starts)
    while lo < hi:
        mid = (lo + hi) // 2
        if starts[mid] <= ts:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


async def read_raw(
    pool: asyncpg.Pool,
    redis: Redis,
    keys: ProjectKeys,
    name: str,
    periods: Sequence[tuple[int, int]],
    filters: dict[str, str],
    group_by: Sequence[str],
    *,
    uniques: bool,
) -> Groups:
    """Per group of `group_by` values, the measures of every period, from the raw log."""
    starts = [s for s, _ in periods]
    lo, hi = periods[0][0], periods[-1][1]
    out: Groups = defaultdict(lambda: [Acc() for _ in periods])
    try:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(keys.raw, "-", "+")
        )
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc

    args: list[Any] = [
        keys.project,
        name,
        to_datetime(lo),
        to_datetime(hi),
        [to_datetime(s) for s in starts],
    ]
    where = ""
    for dim, value in filters.items():
        args.append(dim)
        args.append(value)
        where += f" AND dims->>${len(args) - 1} = ${len(args)}"
    groups_sql = "".join(f", dims->>'{g}'" for g in group_by)  # names match [a-z0-9_]
    n_groups = len(group_by)
    select_groups = "".join(f", dims->>'{g}' AS g{i}" for i, g in enumerate(group_by))
    if uniques:
        sql = (
            f"SELECT width_bucket(ts, $5::timestamptz[]) AS i{select_groups}, uid,"
            " count(*) AS n, coalesce(sum(value_micros), 0)::bigint AS s FROM raw_events"
            f" WHERE project = $1 AND name = $2 AND ts >= $3 AND ts < $4{where}"
            f" GROUP BY i{groups_sql}, uid"
        )
    else:
        sql = (
            f"SELECT width_bucket(ts, $5::timestamptz[]) AS i{select_groups},"
            " count(*) AS n, coalesce(sum(value_micros), 0)::bigint AS s FROM raw_events"
            f" WHERE project = $1 AND name = $2 AND ts >= $3 AND ts < $4{where}"
            f" GROUP BY i{groups_sql}"
        )
    try:
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = (await load_state(conn, keys.project, create=False)).raw_stream_id
                # the snapshot holds exactly the entries up to the cursor read with it
                for r in await conn.fetch(sql, *args):
                    group = tuple(r[f"g{i}"] for i in range(n_groups))
                    if None in group:
                        continue  # events without a group dim are not in that breakdown
                    acc = out[group][r["i"] - 1]
                    acc.count += r["n"]
                    acc.sum_micros += r["s"]
                    if uniques and r["uid"] is not None:
                        if acc.uids is None:
                            acc.uids = set()
                        acc.uids.add(r["uid"])
    except PG_ERRORS as exc:
        raise Unavailable("postgres", str(exc) or type(exc).__name__) from exc

    done = stream_key(cursor)
    for sid, fields in entries:
        if stream_key(sid.decode()) <= done:
            continue
        for ev in _batch.decode(fields[b"e"]):
            if ev.name != name or not lo <= ev.ts < hi:
                continue
            if any(ev.dims.get(d) != v for d, v in filters.items()):
                continue
            if any(g not in ev.dims for g in group_by):
                continue
            acc = out[tuple(ev.dims[g] for g in group_by)][_period_index(ev.ts, starts)]
            acc.count += 1
            acc.sum_micros += ev.value
            if uniques and ev.uid is not None:
                if acc.uids is None:
                    acc.uids = set()
                acc.uids.add(ev.uid)
    return dict(out)
