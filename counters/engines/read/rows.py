"""Read replies flattened into long rows, one per (series, bucket): what Grafana's Infinity
plugin, BI tools and CSV files take without reshaping. A row is the bucket label, the event
name, the series' dims and the value."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from counters.engines.read.reply import (
    DimValues,
    MultiSeriesReply,
    MultiTotalReply,
    NamedSeries,
    SeriesReply,
    TotalReply,
    Value,
)

FIXED_COLUMNS = ("time", "bucket", "name", "value", "partial")
"""Names a long row or a CSV header uses itself; a dim of one of these names is written
as `d.<dim>` so it can never overwrite them."""


class Row(msgspec.Struct, frozen=True):
    """One value: its bucket label (RFC 3339 in the read's zone), name, dims and value."""

    bucket: str
    name: str
    dims: DimValues
    value: Value
    partial: bool = False
    """The bucket is still in progress (see Point.partial)."""


def dim_text(value: str | list[str]) -> str:
    """A dim's value as one text (a CSV cell, a label): an any-of filter's values joined
    by `|`."""
    return value if isinstance(value, str) else "|".join(value)


def column(dim: str) -> str:
    """The column (or long-row key) a dim is written under."""
    return f"d.{dim}" if dim in FIXED_COLUMNS else dim


def _series(s: NamedSeries) -> Iterator[Row]:
    for p in s.data:
        yield Row(p.bucket, s.name, s.dims, p.value, p.partial)


def reply_rows(
    reply: SeriesReply | MultiSeriesReply | TotalReply | MultiTotalReply,
    filters: DimValues,
) -> Iterator[Row]:
    """Every value of a series, breakdown or total reply as a row (a total's bucket is the
    range's start); `filters` are the read's dim filters, the dims of a plain series."""
    if isinstance(reply, SeriesReply):
        for p in reply.data:
            yield Row(p.bucket, reply.name, filters, p.value, p.partial)
    elif isinstance(reply, MultiSeriesReply):
        for s in reply.series:
            yield from _series(s)
    elif isinstance(reply, TotalReply):
        yield Row(reply.from_, reply.name, filters, reply.value)
    else:
        for t in reply.totals:
            yield Row(reply.from_, t.name, filters, t.value)


def dim_columns(rows: list[Row]) -> list[str]:
    """The dims any row carries, in first-seen order (the breakdown's order)."""
    return list(dict.fromkeys(d for r in rows for d in r.dims))


def long_rows(rows: list[Row], *, with_name: bool) -> list[dict[str, object]]:
    """`[{"time", "value", <dim>: ...}]`, plus "name" when the read asked for several and
    `"partial": true` on a bucket still in progress."""
    out: list[dict[str, object]] = []
    for r in rows:
        row: dict[str, object] = {"time": r.bucket, "value": r.value}
        if with_name:
            row["name"] = r.name
        for d, v in r.dims.items():
            row[column(d)] = v
        if r.partial:
            row["partial"] = True
        out.append(row)
    return out
