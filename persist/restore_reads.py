"""What a restore after a Redis loss reads from Postgres, in one REPEATABLE READ snapshot:
the persister state, the rollup rows of a bucket range (server-side cursor, in chunks) and
the event ids the raw log received lately (for the dedupe markers)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg
import msgspec

from counters.core.buckets import Grain, to_datetime
from counters.core.rollups import encode_field, parse_rollup_id
from persist.db import Conn, postgres_unavailable
from persist.schema import RAW_TABLE, ROLLUP_TABLE, epoch_ms_sql
from persist.state import PersistState, load_state


class StoredRow(msgspec.Struct, array_like=True, frozen=True):
    """One rollup row: bucket start (epoch ms), rollup field, count, sum, uniques sketch."""

    bucket: int
    field: str
    count: int
    sum_micros: int
    hll: bytes | None


class RecentId(msgspec.Struct, array_like=True, frozen=True):
    """An event id the raw log holds, its event's name, and when it was received (epoch ms)."""

    event_id: str
    received_ms: int
    name: str


@contextlib.asynccontextmanager
async def restore_snapshot(
    pool: asyncpg.Pool, project: str
) -> AsyncIterator[tuple[Conn, PersistState]]:
    """A read-only REPEATABLE READ transaction and the project's state read in it (all zero
    when the project never persisted), so the rows read in it are exactly those below its
    watermarks. A Postgres failure inside raises Unavailable("postgres")."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield conn, await load_state(conn, project, create=False)


async def rollup_rows(
    conn: Conn, project: str, grain: Grain, low: int, high: int, chunk: int
) -> AsyncIterator[list[StoredRow]]:
    """Every row of the grain's buckets in [low, high), `chunk` rows at a time (a cursor:
    memory stays flat). Runs inside the caller's transaction."""
    if low >= high:
        return
    sql = (
        f"SELECT name, rollup, dims, {epoch_ms_sql('bucket')} AS b, count, sum_micros, hll"
        f" FROM {ROLLUP_TABLE[grain]} WHERE project = $1 AND bucket >= $2 AND bucket < $3"
    )
    cursor = await conn.cursor(sql, project, to_datetime(low), to_datetime(high))
    while rows := await cursor.fetch(chunk):
        yield [
            StoredRow(
                r["b"],
                encode_field(r["name"], parse_rollup_id(r["rollup"]), r["dims"]),
                r["count"],
                r["sum_micros"],
                r["hll"],
            )
            for r in rows
        ]


async def recent_event_ids(
    conn: Conn, project: str, received_since: int, ts_since: int, chunk: int
) -> AsyncIterator[list[RecentId]]:
    """Event ids of raw events received at or after received_since (epoch ms), `chunk` at a
    time. ts_since (no accepted event with such a receipt is older) prunes the daily
    partitions; the BRIN index on received_at (migration 007) narrows each one. Runs inside
    the caller's transaction."""
    sql = (
        f"SELECT event_id, name, {epoch_ms_sql('received_at')} AS r FROM {RAW_TABLE}"
        " WHERE project = $1 AND ts >= $2 AND received_at >= $3 AND event_id IS NOT NULL"
    )
    cursor = await conn.cursor(sql, project, to_datetime(ts_since), to_datetime(received_since))
    while rows := await cursor.fetch(chunk):
        yield [RecentId(r["event_id"], r["r"], r["name"]) for r in rows]
