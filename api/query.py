"""GET /v1/projects/{project}/query?q=<JSON> and POST /v1/projects/{project}/query: a
dashboard's reads in one request, one ETag for the whole answer (a quiet dashboard
revalidates with If-None-Match and gets one 304 per poll).

Authorized once; every query parsed by the same parse_read as the single routes and
checked against the same read limits before anything is read, so a bad query is a 400
naming it and nothing else is read; the whole batch, one reply, is held to max_points.
The queries then run one after another (they share the request's clock read, so every
range is computed from the same now)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize, bearer_key, etag_response, read_context
from api.ingest import read_body
from api.reads import parse_for
from api.state import AppState
from counters.core.errors import BadRequest
from counters.engines.read.batch import BatchQuery, BatchReply, decode_batch, parse_batch
from counters.engines.read.catalog import read_catalog
from counters.engines.read.context import ReadContext
from counters.engines.read.engine import check_query, read_series, read_total
from counters.engines.read.limits import reply_points
from counters.engines.read.parse import ReadQuery

MAX_BATCH_BYTES = 64 * 1024
"""Largest POST body (50 queries of a dashboard take a few KB)."""


@contextlib.contextmanager
def naming(bq: BatchQuery) -> Iterator[None]:
    """A 400 raised inside the block names the query: `queries[2] (id "x"): <message>`."""
    try:
        yield
    except BadRequest as exc:
        raise BadRequest(f"{bq.where}: {exc.message}", code=exc.code) from exc


async def _plan(
    state: AppState, ctx: ReadContext, now: int, bq: BatchQuery
) -> tuple[BatchQuery, ReadQuery | None]:
    """The parsed and checked query (None for a catalog), exactly as its single route
    parses and checks it."""
    if bq.kind == "catalog":
        return bq, None
    with naming(bq):
        q = await parse_for(state, ctx, now, bq.params)
        check_query(ctx, q, total=bq.kind == "total")
    return bq, q


def check_batch_points(planned: list[tuple[BatchQuery, ReadQuery | None]], max_points: int) -> None:
    """400 too_many_points when the queries together may answer more than max_points
    points (the batch is one reply: the same bound as one read; 0 = no limit)."""
    asked = sum(reply_points(q, total=bq.kind == "total") for bq, q in planned if q is not None)
    if max_points and asked > max_points:
        raise BadRequest(
            f"this batch asks for up to {asked:,} points in all; at most {max_points:,} per"
            " reply (max_points): split it, or ask fewer names, smaller limits, coarser"
            " precisions or shorter ranges",
            code="too_many_points",
        )


async def _run(ctx: ReadContext, now: int, bq: BatchQuery, q: ReadQuery | None) -> Any:
    with naming(bq):
        if q is None:
            return await read_catalog(ctx, now)
        if bq.kind == "total":
            return await read_total(ctx, q)
        return await read_series(ctx, q)


async def _answer(request: Request, project: str, data: bytes | str) -> Response:
    state = app_state(request)
    queries = parse_batch(decode_batch(data))
    now = state.clock.now_ms()
    ctx = read_context(state, project, now)
    planned = [await _plan(state, ctx, now, bq) for bq in queries]
    check_batch_points(planned, ctx.limits.max_points)
    results = {bq.id: await _run(ctx, now, bq, q) for bq, q in planned}
    return etag_response(request, BatchReply(results))


async def _project(request: Request) -> str:
    return await authorize(
        app_state(request),
        bearer_key(request),
        scope="read",
        project=request.path_params["project"],
    )


async def query_get(request: Request) -> Response:
    """GET ?q=<the batch as JSON>: cacheable, revalidated with If-None-Match (304)."""
    project = await _project(request)
    params = request.query_params
    extra = [k for k in params if k != "q"]
    if extra:
        raise BadRequest(
            f"unknown parameter {extra[0]!r}: the whole batch travels in q=<JSON>",
            code="bad_parameter",
        )
    if len(params.getlist("q")) != 1:
        raise BadRequest("q is required (once): the batch as JSON", code="bad_parameter")
    return await _answer(request, project, params["q"])


async def query_post(request: Request) -> Response:
    """POST with the batch as the JSON body: the same answer and ETag as the GET (and a
    304 to If-None-Match too: a pragmatic choice, the body is a read)."""
    project = await _project(request)
    return await _answer(request, project, await read_body(request, MAX_BATCH_BYTES))
