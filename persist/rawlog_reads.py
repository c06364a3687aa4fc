"""Aggregates of the Postgres raw log for reads no rollup covers, read in one snapshot with
the persister's copy cursor (so the snapshot holds exactly the entries up to it); bounded by
a row count taken first and by a statement timeout, both refused as 400s. Each takes the
stored project names to read (every shard of a split project: counters/core/shards.py),
and a copy cursor is each shard's own."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import asyncpg
import msgspec

from counters.core.buckets import to_datetime
from persist.read_errors import read_postgres, statement_timeout
from persist.schema import RAW_TABLE
from persist.state import load_states

FETCH_ROWS = 5_000
"""Aggregate rows fetched per round trip (the event loop runs between chunks)."""


class RawGroupRow(msgspec.Struct, array_like=True):
    """Events of one group (and one uid, for uniques) in one period."""

    period: int
    """Index into the period starts given."""
    group: tuple[str | None, ...]
    uid: str | None
    count: int
    sum_micros: int


class RawScope(msgspec.Struct, frozen=True):
    """Which raw events a read aggregates, and how: one name, periods starting at `starts`
    (the last up to `end`), filters, the dims to group by, and whether uids are kept."""

    name: str
    starts: Sequence[int]
    end: int
    filters: Mapping[str, Sequence[str]]
    """Each filtered dim and the values it may take (any of them)."""
    group_by: Sequence[str]
    uniques: bool


async def copied_until(pool: asyncpg.Pool, projects: Sequence[str]) -> list[str]:
    """Per project (in order), the raw-log stream id up to which Postgres holds its
    entries (each only grows)."""
    with read_postgres():
        async with pool.acquire() as conn:
            states = await load_states(conn, list(projects))
    return [states[p].raw_stream_id for p in projects]


async def count_rows(
    pool: asyncpg.Pool,
    projects: Sequence[str],
    start: int,
    end: int,
    cap: int,
    *,
    timeout: float,
    hint: str,
) -> int:
    """The raw-log rows of the projects in [start, end), counted up to `cap` (an index scan
    of at most cap rows: what an aggregate over that range would have to read at least)."""
    sql = (
        f"SELECT count(*) AS n FROM (SELECT 1 FROM {RAW_TABLE}"
        " WHERE project = ANY($1::text[]) AND ts >= $2 AND ts < $3 LIMIT $4) t"
    )
    with read_postgres(hint):
        async with pool.acquire() as conn:
            async with conn.transaction(readonly=True):
                await statement_timeout(conn, timeout)
                n: int = await conn.fetchval(
                    sql, list(projects), to_datetime(start), to_datetime(end), cap
                )
    return n


def _sql(filters: int, group_by: Sequence[str], uniques: bool) -> str:
    where = "".join(f" AND dims->>${6 + 2 * n} = ANY(${7 + 2 * n}::text[])" for n in range(filters))
    groups = "".join(f", dims->>'{g}'" for g in group_by)  # names match [a-z0-9_]
    select = "".join(f", dims->>'{g}' AS g{i}" for i, g in enumerate(group_by))
    uid = ", uid" if uniques else ""
    return (
        f"SELECT width_bucket(ts, $5::timestamptz[]) AS i{select}{uid},"
        f" count(*) AS n, coalesce(sum(value_micros), 0)::bigint AS s FROM {RAW_TABLE}"
        f" WHERE project = ANY($1::text[]) AND name = $2 AND ts >= $3 AND ts < $4{where}"
        f" GROUP BY i{groups}{uid}"
    )


async def aggregate_raw(
    pool: asyncpg.Pool,
    projects: Sequence[str],
    scope: RawScope,
    fold: Callable[[list[RawGroupRow]], None],
    *,
    timeout: float,
    hint: str,
) -> list[str]:
    """Per period (starts[i] .. the next start, the last up to end), per group of group_by
    values (None where an event lacks the dim) and, for uniques, per uid: count and sum of
    the matching events in Postgres of all the projects together, handed to `fold`
    FETCH_ROWS at a time; returns each project's copy cursor (in order) of the same
    snapshot. Each statement runs at most `timeout` seconds; over
    it, or a shape Postgres refuses, is a 400 saying `hint`."""
    uniques = scope.uniques
    args: list[Any] = [
        list(projects),
        scope.name,
        to_datetime(scope.starts[0]),
        to_datetime(scope.end),
        [to_datetime(s) for s in scope.starts],
    ]
    for dim, values in scope.filters.items():
        args += (dim, list(values))
    sql = _sql(len(scope.filters), scope.group_by, uniques)
    n = len(scope.group_by)
    with read_postgres(hint):
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await statement_timeout(conn, timeout)
                states = await load_states(conn, list(projects))
                rows = await conn.cursor(sql, *args)
                while chunk := await rows.fetch(FETCH_ROWS):
                    fold(
                        [
                            RawGroupRow(
                                r["i"] - 1,
                                tuple(r[f"g{i}"] for i in range(n)),
                                r["uid"] if uniques else None,
                                r["n"],
                                r["s"],
                            )
                            for r in chunk
                        ]
                    )
    return [states[p].raw_stream_id for p in projects]
