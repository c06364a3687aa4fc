"""SQL of the rollup tables: staged COPY + upsert (absolute or additive), the sketch of one
row and minute-row retention (rebuild's bulk reads and writes are persist/rebuild_sql.py)."""

from __future__ import annotations

from typing import Any

from counters.core.buckets import Grain, to_datetime
from counters.core.rollups import decode_field
from persist.db import Conn
from persist.schema import ROLLUP_COLUMNS, ROLLUP_TABLE, STAGE_TABLE

Record = tuple[Any, ...]
"""One rollup row in ROLLUP_COLUMNS order."""
RowKey = tuple[int, str]
"""(bucket start, rollup field) of a row within one grain."""
RowValue = tuple[int, int, bytes | None]
"""(count, sum_micros, hll) of a row."""


def rollup_record(
    project: str, field: str, bucket: int, count: int, total: int, hll: bytes | None
) -> Record:
    """One rollup row, in ROLLUP_COLUMNS order."""
    name, rollup, values = decode_field(field)
    return (project, name, ",".join(rollup), list(values), to_datetime(bucket), count, total, hll)


async def _stage(conn: Conn, records: list[Record]) -> None:
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ("
        " project text, name text, rollup text, dims text[], bucket timestamptz,"
        " count bigint, sum_micros bigint, hll bytea) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table(STAGE_TABLE, records=records, columns=list(ROLLUP_COLUMNS))


async def upsert_rollups(
    conn: Conn, grain: Grain, records: list[Record], *, additive: bool
) -> None:
    """Writes rollup rows inside the caller's transaction: absolute values (a sealed bucket's
    copy) or added to what is there (late deltas; hll is then the already-merged sketch)."""
    if not records:
        return
    await _stage(conn, records)
    if additive:
        update = (
            "count = r.count + EXCLUDED.count, sum_micros = r.sum_micros + EXCLUDED.sum_micros,"
            " hll = COALESCE(EXCLUDED.hll, r.hll)"
        )
    else:
        update = "count = EXCLUDED.count, sum_micros = EXCLUDED.sum_micros, hll = EXCLUDED.hll"
    await conn.execute(
        f"INSERT INTO {ROLLUP_TABLE[grain]} AS r SELECT * FROM {STAGE_TABLE}"
        f" ON CONFLICT (project, name, rollup, dims, bucket) DO UPDATE SET {update}"
    )
    await conn.execute(f"TRUNCATE {STAGE_TABLE}")


async def rollup_hll(
    conn: Conn, project: str, grain: Grain, bucket: int, field: str
) -> bytes | None:
    """The stored uniques sketch of one row (None when the row or its sketch is missing)."""
    name, rollup, values = decode_field(field)
    blob: bytes | None = await conn.fetchval(
        f"SELECT hll FROM {ROLLUP_TABLE[grain]} WHERE project = $1 AND name = $2 AND rollup = $3"
        " AND dims = $4 AND bucket = $5",
        project,
        name,
        ",".join(rollup),
        list(values),
        to_datetime(bucket),
    )
    return blob


async def rollup_hlls(
    conn: Conn, project: str, grain: Grain, cells: list[RowKey]
) -> dict[RowKey, bytes]:
    """The stored uniques sketch of every row among cells (bucket, field) that has one, in
    one query (rows or sketches that are missing are left out)."""
    if not cells:
        return {}
    names, rollups, dims, sizes, buckets = [], [], [], [], []
    for bucket, field in cells:
        name, rollup, values = decode_field(field)
        names.append(name)
        rollups.append(",".join(rollup))
        dims.append(_DIMS_SEP.join(values))
        sizes.append(len(values))
        buckets.append(to_datetime(bucket))
    rows = await conn.fetch(
        "SELECT k.i, r.hll FROM unnest($2::text[], $3::text[], $4::text[], $5::int[],"
        " $6::timestamptz[]) WITH ORDINALITY AS k(name, rollup, dims, n, bucket, i)"
        f" JOIN {ROLLUP_TABLE[grain]} r ON r.project = $1 AND r.name = k.name"
        " AND r.rollup = k.rollup AND r.bucket = k.bucket"
        # values joined by US, split back (the trailing US keeps a lone '' value)
        " AND r.dims = (string_to_array(k.dims || E'\\x1f', E'\\x1f'))[1:k.n]"
        " WHERE r.hll IS NOT NULL",
        project,
        names,
        rollups,
        dims,
        sizes,
        buckets,
    )
    return {cells[r["i"] - 1]: r["hll"] for r in rows}


_DIMS_SEP = "\x1f"


async def delete_minutes_before(conn: Conn, edge_ms: int) -> int:
    """Deletes minute rows of buckets before edge_ms; returns how many."""
    status = await conn.execute(
        f"DELETE FROM {ROLLUP_TABLE[Grain.minute]} WHERE bucket < $1", to_datetime(edge_ms)
    )
    return int(status.split()[-1])
