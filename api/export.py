"""A read reply in the format asked for: the JSON reply, long rows (`format=long`) or CSV
(`format=csv` or `Accept: text/csv`), each with an ETag (304 when unchanged)."""

from __future__ import annotations

import csv
import io

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import etag_response, tagged_response
from counters.engines.read.parse import ReadQuery
from counters.engines.read.reply import MultiSeriesReply, MultiTotalReply, SeriesReply, TotalReply
from counters.engines.read.rows import Row, column, dim_columns, dim_text, long_rows, reply_rows

CSV_TYPE = "text/csv; charset=utf-8"
_encoder = msgspec.json.Encoder(decimal_format="number")
_VARY = {"Vary": "Accept"}


def csv_text(rows: list[Row]) -> str:
    """`bucket,name,<dims...>,value` with a header line, quoted as RFC 4180 (stdlib csv);
    a row lacking a dim has it empty."""
    dims = dim_columns(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(["bucket", "name", *(column(d) for d in dims), "value"])
    for r in rows:
        w.writerow([r.bucket, r.name, *(dim_text(r.dims.get(d, "")) for d in dims), str(r.value)])
    return out.getvalue()


def render(
    request: Request,
    q: ReadQuery,
    reply: SeriesReply | MultiSeriesReply | TotalReply | MultiTotalReply,
    fmt: str,
) -> Response:
    """The reply as JSON (fmt json), long rows (long) or CSV (csv), ETag-revalidated."""
    if fmt == "json":
        return etag_response(request, reply)
    rows = list(reply_rows(reply, q.reply_dims))
    if fmt == "long":
        data = _encoder.encode(long_rows(rows, with_name=len(q.names) > 1))
        return tagged_response(request, data, "application/json", _VARY)
    return tagged_response(request, csv_text(rows).encode(), CSV_TYPE, _VARY)
