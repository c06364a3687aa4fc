"""The raw log of one project over [start, end) as NDJSON lines, read through a server-side
cursor (a few thousand rows in memory at a time, whatever the range's size)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from counters.core.buckets import format_ts, from_datetime
from counters.core.measures import micros_to_decimal
from persist.db import Conn
from persist.schema import RAW_TABLE, STREAM_ORDER_SQL

PREFETCH_ROWS = 2_000
"""Rows the cursor fetches per round trip (what one chunk of the stream holds)."""
_encoder = msgspec.json.Encoder(decimal_format="number")
_SQL = (
    f"SELECT ts, name, event_id, dims::text AS dims, value_micros, uid, received_at"
    f" FROM {RAW_TABLE} WHERE project = $1 AND ts >= $2 AND ts < $3"
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


async def export_lines(
    conn: Conn, project: str, start: datetime, end: datetime, names: Sequence[str]
) -> AsyncIterator[bytes]:
    """NDJSON lines of the project's raw events in [start, end) (of `names` when given),
    in event-time order; `conn` must be inside a transaction (the cursor lives in it)."""
    sql, args = _SQL, [project, start, end]
    if names:
        sql += " AND name = ANY($4::text[])"
        args.append(list(names))
    sql += f" ORDER BY ts, {STREAM_ORDER_SQL}, seq"
    chunk: list[bytes] = []
    async for row in conn.cursor(sql, *args, prefetch=PREFETCH_ROWS):
        chunk.append(_line(row))
        if len(chunk) >= PREFETCH_ROWS:
            yield b"".join(chunk)
            chunk = []
    if chunk:
        yield b"".join(chunk)
