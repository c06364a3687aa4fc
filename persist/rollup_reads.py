"""Breakdown reads of Postgres rollups: every dims tuple of one rollup over some buckets
(some dims fixed), the top of each bucket's count-ordered list, per-tuple and per-bucket
totals, and the rows of chosen tuples. Buckets go in and come out as epoch ms."""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec

from counters.core.buckets import Grain, from_datetime, to_datetime
from counters.core.rollups import US, Rollup, rollup_id
from persist.db import Conn
from persist.read_errors import READ_TIMEOUT_SECONDS, read_postgres, statement_timeout
from persist.schema import ROLLUP_TABLE
from persist.state import PersistState, load_state

Tuple = tuple[str, ...]
FETCH_ROWS = 5_000
"""Rows fetched per round trip of a big read (the event loop runs between chunks)."""


class TupleRow(msgspec.Struct, array_like=True):
    """One rollup row of one dims tuple in one bucket."""

    dims: Tuple
    bucket: int
    count: int
    sum_micros: int
    hll: bytes | None = None


class Totals(msgspec.Struct):
    """Range totals per tuple (of the ranking measure) and per bucket (count, sum) of all."""

    per_tuple: dict[Tuple, int]
    per_bucket: dict[int, tuple[int, int]]


class RollupSelect:
    """Which rows: one project, event name and rollup, with the dims at some positions fixed
    to one value, or to any of several."""

    __slots__ = ("args", "args_after", "cond", "fixed", "key_sql")

    def __init__(
        self, project: str, name: str, rollup: Rollup, fixed: Mapping[int, Sequence[str]]
    ) -> None:
        self.fixed = bool(fixed)
        self.args: list[Any] = [project, name, rollup_id(rollup)]
        self.cond = "".join(
            f" AND dims[{i + 1}] = ${5 + n}"
            if len(vs) == 1
            else f" AND dims[{i + 1}] = ANY(${5 + n}::text[])"
            for n, (i, vs) in enumerate(fixed.items())
        )
        self.args_after: list[Any] = [vs[0] if len(vs) == 1 else list(vs) for vs in fixed.values()]
        # grouping on text hashes faster than on text[]: one dim is the common case
        self.key_sql = "dims[1]" if len(rollup) == 1 else "array_to_string(dims, E'\\x1f')"

    def where(self, grain: Grain) -> str:
        """FROM and WHERE of the selected rows in the given buckets ($4)."""
        return (
            f"FROM {ROLLUP_TABLE[grain]} WHERE project = $1 AND name = $2 AND rollup = $3"
            f" AND bucket = ANY($4::timestamptz[]){self.cond}"
        )

    def bind(self, buckets: Sequence[int]) -> list[Any]:
        """The arguments of where() for these buckets."""
        return [*self.args, [to_datetime(b) for b in buckets], *self.args_after]


def _tuple(key: str) -> Tuple:
    """Inverse of the SQL key_sql (dims joined by US)."""
    return tuple(key.split(US))


@contextlib.asynccontextmanager
async def snapshot(pool: asyncpg.Pool, project: str) -> AsyncIterator[tuple[Conn, PersistState]]:
    """A read-only REPEATABLE READ transaction and the persister state read in it, each
    statement bounded by READ_TIMEOUT_SECONDS; a statement over it or a query shape
    Postgres refuses is a 400, any other Postgres failure raises Unavailable("postgres")."""
    with read_postgres("ask for fewer buckets, a smaller limit or a shorter range"):
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await statement_timeout(conn, READ_TIMEOUT_SECONDS)
                yield conn, await load_state(conn, project, create=False)


async def tuple_rows(
    conn: Conn,
    sel: RollupSelect,
    grain: Grain,
    buckets: Sequence[int],
    *,
    with_hll: bool,
    only: Sequence[Tuple] | None = None,
) -> list[TupleRow]:
    """The rows of every tuple (or only the given ones) in these buckets (inside a
    transaction: read FETCH_ROWS at a time)."""
    hll = "hll" if with_hll else "NULL::bytea AS hll"
    args = sel.bind(buckets)
    sql = f"SELECT dims, bucket, count, sum_micros, {hll} {sel.where(grain)}"
    if only is not None:
        args.append([US.join(t) for t in only])
        sql += f" AND {sel.key_sql} = ANY(${len(args)}::text[])"
    out: list[TupleRow] = []
    rows = await conn.cursor(sql, *args)  # in chunks: the event loop runs between them
    while chunk := await rows.fetch(FETCH_ROWS):
        out.extend(
            TupleRow(
                tuple(r["dims"]), from_datetime(r["bucket"]), r["count"], r["sum_micros"], r["hll"]
            )
            for r in chunk
        )
    return out


async def top_of_lists(
    conn: Conn, sel: RollupSelect, grain: Grain, buckets: Sequence[int], depth: int
) -> list[list[tuple[Tuple, int]]]:
    """Per bucket that has rows: its first `depth` (tuple, count) in count order."""
    rows = await conn.fetch(
        "SELECT b.bucket, r.k, r.m FROM unnest($4::timestamptz[]) AS b(bucket),"
        f" LATERAL (SELECT {sel.key_sql} AS k, count AS m FROM {ROLLUP_TABLE[grain]}"
        " WHERE project = $1 AND name = $2 AND rollup = $3 AND bucket = b.bucket"
        " ORDER BY count DESC LIMIT $5) r",
        *sel.args,
        [to_datetime(b) for b in buckets],
        depth,
    )
    per_bucket: dict[Any, list[tuple[Tuple, int]]] = defaultdict(list)
    for r in rows:
        per_bucket[r["bucket"]].append((_tuple(r["k"]), r["m"]))
    return list(per_bucket.values())


async def totals(
    conn: Conn,
    sel: RollupSelect,
    grain: Grain,
    buckets: Sequence[int],
    *,
    by_sum: bool,
    per_tuple: bool,
) -> Totals:
    """Per-bucket count and sum of all tuples; with per_tuple, also each tuple's range total
    of count (or sum), in one scan."""
    where = sel.where(grain)
    if per_tuple:
        measure = "sum_micros" if by_sum else "count"
        sql = f"SELECT {sel.key_sql} AS k, bucket, sum({measure})::bigint AS m,"
        sql += " sum(count)::bigint AS c, sum(sum_micros)::bigint AS s"
        sql += f" {where} GROUP BY GROUPING SETS (({sel.key_sql}), (bucket))"
    else:
        sql = "SELECT NULL AS k, bucket, 0 AS m, sum(count)::bigint AS c,"
        sql += f" sum(sum_micros)::bigint AS s {where} GROUP BY bucket"
    out = Totals({}, {})
    for r in await conn.fetch(sql, *sel.bind(buckets)):
        if r["k"] is not None:
            out.per_tuple[_tuple(r["k"])] = r["m"]
        else:
            out.per_bucket[from_datetime(r["bucket"])] = (r["c"], r["s"])
    return out
