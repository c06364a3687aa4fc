"""SQL of the rollup check: the rows of a coarse grain (hour, day) beside the sum of the
finer rows they are made of (minutes, or hours), and deleting rows by key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from counters.core.buckets import Grain, to_datetime
from counters.core.rollups import decode_field, encode_field, parse_rollup_id
from persist.db import Conn
from persist.schema import ROLLUP_TABLE, epoch_ms_sql


class PartsRow(msgspec.Struct, frozen=True):
    """One (bucket, field) of the coarse grain: what its parts add up to (counts and sums
    summed; sketches listed, not merged) and what the stored row holds (None: no row)."""

    bucket: int
    field: str
    part_count: int
    part_sum: int
    part_hlls: list[bytes]
    has_parts: bool
    stored: tuple[int, int, bytes | None] | None


def _filter(name: str | None) -> str:
    return " AND name = $5" if name else ""


async def rows_beside_parts(
    conn: Conn,
    project: str,
    whole: Grain,
    part: Grain,
    low: int,
    high: int,
    name: str | None = None,
) -> list[PartsRow]:
    """Every (bucket, field) of grain `whole` in [low, high) (bucket starts, aligned to
    `whole`) that has a stored row or parts: the parts' count and sum added up in SQL, their
    sketches, and the stored row. Bucket boundaries are UTC (date_bin from the epoch)."""
    named = _filter(name)
    bucket = epoch_ms_sql("coalesce(p.b, w.bucket)")
    sql = (
        "SELECT coalesce(p.name, w.name) AS name, coalesce(p.rollup, w.rollup) AS rollup,"
        f" coalesce(p.dims, w.dims) AS dims, {bucket} AS bucket, p.c, p.s, p.hlls,"
        " w.count, w.sum_micros, w.hll FROM"
        " (SELECT name, rollup, dims, date_bin($4::interval, bucket, 'epoch'::timestamptz) AS b,"
        " sum(count)::bigint AS c, sum(sum_micros)::bigint AS s,"
        " array_agg(hll) FILTER (WHERE hll IS NOT NULL) AS hlls"
        f" FROM {ROLLUP_TABLE[part]} WHERE project = $1 AND bucket >= $2 AND bucket < $3{named}"
        " GROUP BY 1, 2, 3, 4) p"
        " FULL JOIN (SELECT name, rollup, dims, bucket, count, sum_micros, hll"
        f" FROM {ROLLUP_TABLE[whole]} WHERE project = $1 AND bucket >= $2 AND bucket < $3{named}"
        ") w ON w.name = p.name AND w.rollup = p.rollup AND w.dims = p.dims AND w.bucket = p.b"
    )
    args: list[Any] = [
        project,
        to_datetime(low),
        to_datetime(high),
        timedelta(milliseconds=whole.value),
    ]
    if name:
        args.append(name)
    out: list[PartsRow] = []
    for r in await conn.fetch(sql, *args):
        has_parts = r["c"] is not None
        stored = None if r["count"] is None else (r["count"], r["sum_micros"], r["hll"])
        out.append(
            PartsRow(
                r["bucket"],
                encode_field(r["name"], parse_rollup_id(r["rollup"]), r["dims"]),
                r["c"] or 0,
                r["s"] or 0,
                list(r["hlls"] or ()),
                has_parts,
                stored,
            )
        )
    return out


async def delete_rollup_rows(
    conn: Conn, project: str, grain: Grain, rows: list[tuple[int, str]]
) -> None:
    """Deletes the rows of these (bucket, field) keys (inside the caller's transaction)."""
    if not rows:
        return
    args = []
    for bucket, field in rows:
        name, rollup, values = decode_field(field)
        args.append((project, name, ",".join(rollup), list(values), to_datetime(bucket)))
    await conn.executemany(
        f"DELETE FROM {ROLLUP_TABLE[grain]} WHERE project = $1 AND name = $2 AND rollup = $3"
        " AND dims = $4 AND bucket = $5",
        args,
    )
