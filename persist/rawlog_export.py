"""The raw log of one project over [start, end) as NDJSON lines, read through a server-side
cursor (a few thousand rows in memory at a time, whatever the range's size). A split
project's rows are those of every shard's stored name (counters/core/shards.py): one
cursor a shard, each in its index's order, merged in Python (a sort over `project =
ANY(...)` would read the whole range before the first line)."""

from __future__ import annotations

import heapq
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from counters.core.buckets import format_ts, from_datetime
from counters.core.measures import micros_to_decimal
from persist.db import Conn
from persist.schema import RAW_TABLE, STREAM_ORDER_SQL, stream_order

PREFETCH_ROWS = 2_000
"""Rows the cursor fetches per round trip (what one chunk of the stream holds)."""
_encoder = msgspec.json.Encoder(decimal_format="number")
_SQL = (
    f"SELECT ts, name, event_id, dims::text AS dims, value_micros, uid, received_at,"
    f" stream_id, seq FROM {RAW_TABLE} WHERE project = $1 AND ts >= $2 AND ts < $3"
)


class ExportedEvent(msgspec.Struct, omit_defaults=True):
    """One raw event as exported: the uid as stored (a keyed hash), the value exact."""

    ts: str
    name: str
    dims: msgspec.Raw
    value: Decimal
    received: str
    id: str | None = None
    uid: str | None = None


def _ts(dt: datetime) -> str:
    return format_ts(from_datetime(dt))


def _line(row: Any) -> bytes:
    ev = ExportedEvent(
        _ts(row["ts"]),
        row["name"],
        msgspec.Raw(row["dims"].encode()),
        micros_to_decimal(row["value_micros"]),
        _ts(row["received_at"]),
        row["event_id"],
        row["uid"],
    )
    return _encoder.encode(ev) + b"\n"


def _rows(
    conn: Conn, project: str, start: datetime, end: datetime, names: Sequence[str]
) -> AsyncIterator[Any]:
    """One stored project's raw rows in [start, end) (of `names` when given), in
    event-time order (ts, then stream order), through a server-side cursor."""
    sql, args = _SQL, [project, start, end]
    if names:
        sql += " AND name = ANY($4::text[])"
        args.append(list(names))
    sql += f" ORDER BY ts, {STREAM_ORDER_SQL}, seq"
    return conn.cursor(sql, *args, prefetch=PREFETCH_ROWS).__aiter__()


def _order(row: Any) -> tuple[datetime, tuple[int, int], int]:
    """The ORDER BY of _rows, in Python."""
    return row["ts"], stream_order(row["stream_id"]), row["seq"]


async def _merged(streams: Sequence[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """The rows of every stream (each in _order), in _order (ties: the earlier stream's
    first), holding one row a stream."""
    heap: list[tuple[tuple[datetime, tuple[int, int], int], int, Any]] = []
    for i, stream in enumerate(streams):
        row = await anext(stream, None)
        if row is not None:
            heap.append((_order(row), i, row))
    heapq.heapify(heap)
    while heap:
        _, i, row = heap[0]
        yield row
        row = await anext(streams[i], None)
        if row is None:
            heapq.heappop(heap)
        else:
            heapq.heapreplace(heap, (_order(row), i, row))


async def export_lines(
    conn: Conn, projects: Sequence[str], start: datetime, end: datetime, names: Sequence[str]
) -> AsyncIterator[bytes]:
    """NDJSON lines of the raw events of the stored projects (a project's shards, shard 0
    first) in [start, end) (of `names` when given), in event-time order; `conn` must be
    inside a transaction (the cursors live in it, one snapshot for every shard)."""
    streams = [_rows(conn, p, start, end, names) for p in projects]
    rows = streams[0] if len(streams) == 1 else _merged(streams)
    chunk: list[bytes] = []
    async for row in rows:
        chunk.append(_line(row))
        if len(chunk) >= PREFETCH_ROWS:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
