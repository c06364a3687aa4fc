"""Reads of Postgres rollup history for one dims tuple, inside one snapshot with the
persister state. Buckets go in as timestamptz and come out as epoch ms computed in SQL
(persist.schema.epoch_ms_sql)."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import msgspec

from counters.core.buckets import Grain, to_datetime
from persist.read_errors import read_postgres
from persist.schema import ROLLUP_TABLE, epoch_ms_sql
from persist.state import PersistState, load_state


class HistoryRow(msgspec.Struct, array_like=True):
    bucket: int
    count: int
    sum_micros: int
    hll: bytes | None


class Snapshot(msgspec.Struct):
    """Postgres rows plus the watermarks they were read with (one REPEATABLE READ snapshot)."""

    state: PersistState
    rows: list[dict[int, HistoryRow]]
    """Per requested piece: bucket start -> row, for buckets before that grain's watermark."""


_SQL = {
    (grain, with_hll): f"SELECT {epoch_ms_sql('bucket')} AS ms, count, sum_micros,"
    f" {'hll' if with_hll else 'NULL::bytea'} AS hll FROM {table}"
    " WHERE project = $1 AND name = $2 AND rollup = $3 AND dims = $4"
    " AND bucket >= $5 AND bucket < $6"
    for grain, table in ROLLUP_TABLE.items()
    for with_hll in (False, True)
}


async def read_history(
    pool: asyncpg.Pool,
    project: str,
    name: str,
    rollup: str,
    values: Sequence[str],
    pieces: Sequence[tuple[Grain, Sequence[int]]],
    *,
    with_hll: bool,
) -> Snapshot:
    """Rows for each (grain, buckets) piece that Postgres is authoritative for, read in the
    same snapshot as the watermarks, so that with the Redis part no bucket is missing or
    counted twice. A query shape Postgres refuses is a 400; any other Postgres failure
    raises Unavailable("postgres")."""
    with read_postgres("ask for fewer buckets or a shorter range"):
        async with pool.acquire() as conn:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                state = await load_state(conn, project, create=False)
                out: list[dict[int, HistoryRow]] = []
                for grain, buckets in pieces:
                    until = state.until(grain)
                    wanted = [b for b in buckets if b < until]
                    rows: dict[int, HistoryRow] = {}
                    if wanted:
                        records = await conn.fetch(
                            _SQL[(grain, with_hll)],
                            project,
                            name,
                            rollup,
                            list(values),
                            to_datetime(wanted[0]),
                            to_datetime(min(wanted[-1] + grain.value, until)),
                        )
                        for r in records:
                            b = r["ms"]
                            rows[b] = HistoryRow(b, r["count"], r["sum_micros"], r["hll"])
                    out.append(rows)
    return Snapshot(state, out)
