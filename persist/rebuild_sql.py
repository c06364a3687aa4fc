"""SQL of the columnar rebuild: the raw events and the stored rollup rows of a bucket range
streamed out with COPY as CSV (read into Arrow tables by pyarrow's C++ reader, never one
Python object per row), and the catalog of dim names per raw-log day (migration 011) that
says which dims to read out of the raw rows' JSON."""

from __future__ import annotations

import io
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from counters.core.buckets import DAY_MS, Grain, to_datetime
from persist.db import Conn
from persist.rawlog import record_dims
from persist.schema import RAW_DIMS_TABLE, RAW_TABLE, ROLLUP_TABLE, STREAM_ORDER_SQL, stream_order

_EPOCH_MS = "(date_part('epoch', {col}) * 1000)::bigint"
US_SQL = "chr(31)"


def _literal(value: str) -> str:
    """A SQL string literal (COPY takes no bind parameters)."""
    return "'" + value.replace("'", "''") + "'"


def _ts(ms: int) -> str:
    return _literal(to_datetime(ms).isoformat()) + "::timestamptz"


async def _copy_csv(
    conn: Conn,
    sql: str,
    columns: list[str],
    types: dict[str, pa.DataType],
    *,
    quoted: bool = True,
) -> pa.Table:
    """The query's rows as an Arrow table. quoted: every non-NULL value is quoted, so an
    unquoted empty field is NULL and a quoted one the empty string; else no string is NULL."""
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    await conn.copy_from_query(sql, output=sink, format="csv", force_quote=quoted or None)
    if not any(chunks):
        return pa.table({c: pa.array([], types[c]) for c in columns})
    return pcsv.read_csv(
        io.BytesIO(b"".join(chunks)),
        read_options=pcsv.ReadOptions(column_names=columns, use_threads=False),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=types, strings_can_be_null=quoted, quoted_strings_can_be_null=False
        ),
    )


def raw_columns(dims: list[str]) -> list[str]:
    """Column names of raw_slice's table: ts, name, value, uid, then one per dim (d0..)."""
    return ["ts", "name", "value", "uid", *(f"d{i}" for i in range(len(dims)))]


async def raw_slice(
    conn: Conn,
    project: str,
    start: int,
    end: int,
    upto_stream_id: str,
    name: str | None,
    dims: list[str],
) -> pa.Table:
    """The raw events of [start, end) stored up to (and including) stream id upto_stream_id:
    ts (epoch ms), name, value (micros), uid (null when none) and the value of each of `dims`
    (null where the event lacks it). Run inside the caller's snapshot transaction."""
    ms, seq = stream_order(upto_stream_id)
    picks = ", ".join(f"dims->>{_literal(d)}" for d in dims)
    sql = (
        f"SELECT {_EPOCH_MS.format(col='ts')}, name, value_micros, uid"
        + (f", {picks}" if picks else "")
        + f" FROM {RAW_TABLE} WHERE project = {_literal(project)}"
        f" AND ts >= {_ts(start)} AND ts < {_ts(end)}"
        f" AND {STREAM_ORDER_SQL} <= ({ms}::bigint, {seq}::bigint)"
        + (f" AND name = {_literal(name)}" if name else "")
    )
    types: dict[str, pa.DataType] = {"ts": pa.int64(), "name": pa.string(), "value": pa.int64()}
    types.update({c: pa.string() for c in raw_columns(dims)[3:]})
    return await _copy_csv(conn, sql, raw_columns(dims), types)


async def hour_counts(conn: Conn, project: str, day: int, name: str | None) -> dict[int, int]:
    """Raw events per hour (epoch ms of its start) of one UTC day, all stream ids (a plan:
    the rebuild reads up to its cut). One count per hour over the (project, ts) index: half
    the time of one GROUP BY over the day's rows, which also rounded an event in an hour's
    last half second into the next."""
    sql = (
        "SELECT (date_part('epoch', h) * 1000)::bigint AS hour, (SELECT count(*)"
        f" FROM {RAW_TABLE} WHERE project = $1 AND ts >= h AND ts < h + interval '1 hour'"
        + (" AND name = $4" if name else "")
        + ") AS n FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 hour',"
        " interval '1 hour') AS h"
    )
    args: list[Any] = [project, to_datetime(day), to_datetime(day + DAY_MS)]
    if name:
        args.append(name)
    return {int(r["hour"]): int(r["n"]) for r in await conn.fetch(sql, *args) if r["n"]}


STORED_COLUMNS = ["bucket", "field", "count", "sum", "hll"]


async def stored_rows(
    conn: Conn, project: str, grain: Grain, low: int, high: int, name: str | None
) -> pa.Table:
    """The stored rollup rows of buckets [low, high): bucket (epoch ms), field (as
    counters.core.rollups.encode_field spells it), count, sum (micros) and the sketch as hex
    of its first 5 bytes and its body (null when none; sketches.short_blob's form)."""
    sql = (
        f"SELECT {_EPOCH_MS.format(col='bucket')}, {_STORED_FIELD}, count, sum_micros,"
        " encode(substr(hll, 1, 5) || substr(hll, 17), 'hex')"
        f" FROM {ROLLUP_TABLE[grain]} WHERE project = {_literal(project)}"
        f" AND bucket >= {_ts(low)} AND bucket < {_ts(high)}"
        + (f" AND name = {_literal(name)}" if name else "")
    )
    types = {c: pa.string() for c in STORED_COLUMNS}
    types.update(bucket=pa.int64(), count=pa.int64(), sum=pa.int64())
    # no NULL but the sketch's, which is then the empty string: strings are never null, so
    # COPY need not quote (the cheapest CSV Postgres writes)
    rows = await _copy_csv(conn, sql, STORED_COLUMNS, types, quoted=False)
    hll = rows.column("hll")
    hll = pc.if_else(pc.equal(hll, ""), pa.scalar(None, pa.string()), hll)
    return rows.set_column(STORED_COLUMNS.index("hll"), "hll", hll)


async def day_dims(conn: Conn, project: str, day: int) -> list[str] | None:
    """The dim names the raw events of one UTC day carry, as the catalog holds them; None
    when the catalog has nothing for that day (see discover_day_dims)."""
    rows = await conn.fetch(
        f"SELECT dim FROM {RAW_DIMS_TABLE} WHERE project = $1 AND day = $2 ORDER BY dim",
        project,
        day,
    )
    return [r["dim"] for r in rows] or None


async def discover_day_dims(conn: Conn, project: str, day: int) -> list[str]:
    """The dim names in the raw events of one UTC day, read off the rows themselves (a scan
    of the day), recorded in the catalog for the next time."""
    rows = await conn.fetch(
        f"SELECT DISTINCT jsonb_object_keys(dims) AS dim FROM {RAW_TABLE}"
        " WHERE project = $1 AND ts >= $2 AND ts < $3",
        project,
        to_datetime(day),
        to_datetime(day + DAY_MS),
    )
    found = sorted(r["dim"] for r in rows)
    await record_dims(conn, project, ((day, d) for d in found))
    return found


_STAGE_WRITE = "stage_rebuild_rows"
_STAGE_DELETE = "stage_rebuild_gone"
# the field of counters.core.rollups.encode_field in SQL, both ways: spelled from a rollup
# row's columns, and split back into them from a staged row's `field`
_STORED_FIELD = (
    f"CASE WHEN rollup = '' THEN name || {US_SQL} ELSE name || {US_SQL} || rollup || {US_SQL}"
    f" || array_to_string(dims, {US_SQL}) END"
)
_NAME = f"split_part(s.field, {US_SQL}, 1)"
_ROLLUP = f"split_part(s.field, {US_SQL}, 2)"
_DIMS = (
    f"CASE WHEN {_ROLLUP} = '' THEN '{{}}'::text[] ELSE regexp_split_to_array("
    f"substr(s.field, length({_NAME}) + length({_ROLLUP}) + 3), {US_SQL}) END"
)
_BUCKET = "'epoch'::timestamptz + s.bucket * interval '1 millisecond'"


async def _stage_csv(conn: Conn, stage: str, columns: str, tables: list[pa.Table]) -> None:
    await conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ({columns}) ON COMMIT DROP")
    out = io.BytesIO()
    for table in tables:
        pcsv.write_csv(table, out, pcsv.WriteOptions(include_header=False))
    out.seek(0)
    try:
        await conn.copy_to_table(stage, source=out, format="csv")
    finally:
        # asyncpg's reader of a file-like source is a class made per call, a reference
        # cycle that keeps the whole buffer until the cyclic GC runs: free it now
        out.close()


_COLUMNS = "(project, name, rollup, dims, bucket, count, sum_micros, hll)"
_STAGE_COLUMNS = "field text, bucket bigint, count bigint, sum_micros bigint, hll text"


_SELECT_STAGE = (
    f" SELECT $1::text, {_NAME}, {_ROLLUP}, {_DIMS}, {_BUCKET}, s.count,"
    f" s.sum_micros, decode(s.hll, 'hex') FROM {_STAGE_WRITE} s"
)
"""The staged rows as rollup rows of project $1."""


async def _upsert_stage(conn: Conn, project: str, grain: Grain) -> None:
    """The staged rows upserted into the grain's table (absolute values)."""
    await conn.execute(
        f"INSERT INTO {ROLLUP_TABLE[grain]} AS r {_COLUMNS}{_SELECT_STAGE}"
        " ON CONFLICT (project, name, rollup, dims, bucket) DO UPDATE SET"
        " count = EXCLUDED.count, sum_micros = EXCLUDED.sum_micros, hll = EXCLUDED.hll",
        project,
    )


async def write_rows(conn: Conn, project: str, grain: Grain, tables: list[pa.Table]) -> None:
    """Inside the caller's transaction: the rows of `tables` (field, bucket in epoch ms,
    count, sum in micros, the whole sketch as hex or null) hold exactly these values."""
    if not any(t.num_rows for t in tables):
        return
    await _stage_csv(conn, _STAGE_WRITE, _STAGE_COLUMNS, tables)
    await _upsert_stage(conn, project, grain)
    await conn.execute(f"TRUNCATE {_STAGE_WRITE}")


async def insert_rows(conn: Conn, project: str, grain: Grain, tables: list[pa.Table]) -> None:
    """As write_rows, for rows the caller found nothing stored for: a plain INSERT (a third
    cheaper than the upsert, which probes the unique index first); should one of them exist
    after all, the statement is undone to a savepoint and the rows are upserted instead."""
    if not any(t.num_rows for t in tables):
        return
    await _stage_csv(conn, _STAGE_WRITE, _STAGE_COLUMNS, tables)
    try:
        async with conn.transaction():  # a savepoint inside the caller's transaction
            await conn.execute(
                f"INSERT INTO {ROLLUP_TABLE[grain]} {_COLUMNS}{_SELECT_STAGE}", project
            )
    except asyncpg.UniqueViolationError:
        await _upsert_stage(conn, project, grain)
    await conn.execute(f"TRUNCATE {_STAGE_WRITE}")


async def delete_rows(conn: Conn, project: str, grain: Grain, tables: list[pa.Table]) -> None:
    """Inside the caller's transaction: deletes the rows of `tables` (field, bucket)."""
    if not any(t.num_rows for t in tables):
        return
    await _stage_csv(conn, _STAGE_DELETE, "field text, bucket bigint", tables)
    await conn.execute(
        f"DELETE FROM {ROLLUP_TABLE[grain]} r USING {_STAGE_DELETE} s"
        f" WHERE r.project = {_literal(project)} AND r.name = {_NAME}"
        f" AND r.rollup = {_ROLLUP} AND r.dims = {_DIMS} AND r.bucket = {_BUCKET}"
    )
    await conn.execute(f"TRUNCATE {_STAGE_DELETE}")
