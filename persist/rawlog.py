"""SQL of the raw log (raw_events, partitioned by UTC day): rows from stream entries, COPY,
partition creation and dropping, and the reads rebuild makes."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Iterable
from datetime import timedelta
from typing import Any

import msgspec

from counters.core.buckets import EPOCH, from_datetime, to_datetime
from counters.core.models import RawEvent
from persist.db import Conn
from persist.schema import (
    PARTITION_LOCK,
    RAW_COLUMNS,
    RAW_DIMS_TABLE,
    RAW_TABLE,
    STREAM_ORDER_SQL,
    partition_day,
    partition_end,
    partition_name,
    stream_order,
)

Record = tuple[Any, ...]
"""One raw-log row in RAW_COLUMNS order."""

_json = msgspec.json.Encoder()
_dims = msgspec.json.Decoder(dict[str, str])


def raw_record(project: str, ev: RawEvent, stream_id: str, seq: int) -> Record:
    """The raw-log row of one event: entry stream_id, position seq within the entry."""
    return (
        project,
        to_datetime(ev.ts),
        ev.name,
        ev.id,
        _json.encode(ev.dims).decode(),
        ev.value,
        ev.uid,
        to_datetime(ev.received),
        stream_id,
        seq,
    )


def raw_records(project: str, events: list[RawEvent], stream_id: str) -> list[Record]:
    """The raw-log rows of one stream entry's events, in order (seq = position): the same
    as raw_record of each, with one datetime per distinct arrival time (a batch has one)."""
    out: list[Record] = []
    add = out.append
    encode = _json.encode
    received_ms = -1
    received = to_datetime(0)
    for seq, ev in enumerate(events):
        if ev.received != received_ms:
            received_ms = ev.received
            received = to_datetime(received_ms)
        dims = ev.dims
        add(
            (
                project,
                EPOCH + timedelta(milliseconds=ev.ts),
                ev.name,
                ev.id,
                encode(dims).decode() if dims else "{}",
                ev.value,
                ev.uid,
                received,
                stream_id,
                seq,
            )
        )
    return out


async def create_partitions(conn: Conn, days: Iterable[int]) -> None:
    """The partitions of these UTC days (epoch ms of their starts) exist afterwards; safe to
    run from many processes at once."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
        for day in days:
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {RAW_TABLE}"
                f" FOR VALUES FROM ('{to_datetime(day).isoformat()}') TO"
                f" ('{to_datetime(partition_end(day)).isoformat()}')"
            )


async def copy_raw_rows(conn: Conn, records: list[Record]) -> None:
    """Appends rows to the raw log (their partitions must exist)."""
    await conn.copy_records_to_table(RAW_TABLE, records=records, columns=list(RAW_COLUMNS))


async def partitions(conn: Conn) -> dict[str, int]:
    """Every raw-log partition: name -> start (epoch ms) of the UTC day it holds."""
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1",
        RAW_TABLE,
    )
    out: dict[str, int] = {}
    for row in rows:
        day = partition_day(row["relname"])
        if day is not None:
            out[row["relname"]] = day
    return out


async def drop_partition(conn: Conn, day_ms: int) -> str:
    """Drops the partition of the UTC day starting at day_ms; returns its name."""
    name = partition_name(day_ms)
    await conn.execute(f"DROP TABLE IF EXISTS {name}")
    return name


async def count_raw(conn: Conn, project: str, start: int, end: int, name: str | None) -> int:
    """Raw events of the project in [start, end) (of one event name, if given)."""
    sql = f"SELECT count(*) FROM {RAW_TABLE} WHERE project = $1 AND ts >= $2 AND ts < $3"
    args: list[Any] = [project, to_datetime(start), to_datetime(end)]
    if name:
        sql += " AND name = $4"
        args.append(name)
    n: int = await conn.fetchval(sql, *args)
    return n


async def raw_batches(
    conn: Conn,
    project: str,
    start: int,
    end: int,
    upto_stream_id: str,
    name: str | None,
    *,
    rows: int,
) -> AsyncGenerator[list[RawEvent], None]:
    """The raw events of [start, end) stored up to (and including) stream id upto_stream_id,
    in batches of up to `rows`, through a server-side cursor (memory stays flat). The caller
    holds a transaction (REPEATABLE READ for one consistent snapshot). `received` is 0."""
    sql = (
        f"SELECT name, ts, event_id, dims::text AS dims, value_micros, uid FROM {RAW_TABLE}"
        f" WHERE project = $1 AND ts >= $2 AND ts < $3 AND {STREAM_ORDER_SQL}"
        " <= ($4::bigint, $5::bigint)" + (" AND name = $6" if name else "")
    )
    ms, seq = stream_order(upto_stream_id)
    args: list[Any] = [project, to_datetime(start), to_datetime(end), ms, seq]
    if name:
        args.append(name)
    cursor = await conn.cursor(sql, *args)
    while True:
        batch = await cursor.fetch(rows)
        if not batch:
            return
        yield [
            RawEvent(
                r["name"],
                from_datetime(r["ts"]),
                r["event_id"],
                _dims.decode(r["dims"]),
                r["value_micros"],
                r["uid"],
                0,
            )
            for r in batch
        ]


async def count_raw_days(
    conn: Conn, project: str, start: int, end: int, name: str | None
) -> dict[int, int]:
    """Raw events of the project in [start, end) (of one event name, if given) per UTC day:
    day start (epoch ms) -> count; days without events are absent. One query grouped by
    partition (each holds one UTC day), about as fast as count_raw: a day computed per row
    from ts costs 4-7 times more."""
    where = "project = $1 AND ts >= $2 AND ts < $3" + (" AND name = $4" if name else "")
    args: list[Any] = [project, to_datetime(start), to_datetime(end)]
    if name:
        args.append(name)
    rows = await conn.fetch(
        f"SELECT c.relname, t.n FROM (SELECT tableoid, count(*) AS n FROM {RAW_TABLE}"
        f" WHERE {where} GROUP BY tableoid) t JOIN pg_class c ON c.oid = t.tableoid",
        *args,
    )
    out: dict[int, int] = {}
    for row in rows:
        day = partition_day(row["relname"])
        if day is not None:  # every partition is a day's (persist.schema.partition_name)
            out[day] = int(row["n"])
    return out


async def record_dims(conn: Conn, project: str, pairs: Iterable[tuple[int, str]]) -> None:
    """Adds (UTC day start, dim name) pairs to the catalog (those present stay)."""
    days: list[int] = []
    names: list[str] = []
    for day, dim in pairs:
        days.append(day)
        names.append(dim)
    if not days:
        return
    args: list[Any] = [project, days, names]
    await conn.execute(
        f"INSERT INTO {RAW_DIMS_TABLE} (project, day, dim)"
        " SELECT $1, d, n FROM unnest($2::bigint[], $3::text[]) AS t(d, n)"
        " ON CONFLICT DO NOTHING",
        *args,
    )
