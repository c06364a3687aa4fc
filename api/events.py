"""GET /v1/projects/{project}/events?from&to[&name]: the raw log streamed as NDJSON from
Postgres (a server-side cursor in a read-only transaction, so memory stays bounded), for
warehouses; a split project's events are every shard's. Uids are exported as stored:
keyed hashes, never the uid sent."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator

import asyncpg
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from api.common import app_state, authorize, bearer_key
from counters.core.buckets import DAY_MS, parse_ts, to_datetime
from counters.core.errors import BadRequest
from counters.core.models import NAME_PATTERN
from counters.core.shards import shard_projects
from persist.db import postgres_unavailable
from persist.rawlog_export import export_lines

log = logging.getLogger("counters.api")
MAX_EXPORT_DAYS = 31
"""Longest range one export request may span (ask again for the next one)."""
MAX_EXPORT_NAMES = 20
PARAMS = {"from", "to", "name"}
_name_re = re.compile(NAME_PATTERN)


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_parameter")


def _ts(request: Request, param: str) -> int:
    text = request.query_params.get(param)
    if text is None:
        raise _bad(f"{param} is required (RFC 3339 or epoch ms)")
    try:
        ts = parse_ts(text)
    except ValueError as exc:
        raise _bad(f"{param}: {exc}") from exc
    if ts < 10**11:
        raise _bad(f"{param} looks like epoch seconds; send milliseconds or RFC 3339")
    return ts


def parse_export(request: Request) -> tuple[int, int, list[str]]:
    """[from, to) in epoch ms and the names asked for (none: every name); 400 naming the
    first bad parameter, an unknown one, a reversed or over-long range."""
    for key in request.query_params:
        if key not in PARAMS:
            raise _bad(f"unknown parameter {key!r} (events takes from, to and name)")
    start, end = _ts(request, "from"), _ts(request, "to")
    if start >= end:
        raise _bad("from must be before to")
    if end - start > MAX_EXPORT_DAYS * DAY_MS:
        raise _bad(f"from/to: at most {MAX_EXPORT_DAYS} days per export (split the range)")
    names = list(dict.fromkeys(request.query_params.getlist("name")))
    if len(names) > MAX_EXPORT_NAMES:
        raise _bad(f"at most {MAX_EXPORT_NAMES} names per export")
    for n in names:
        if not _name_re.match(n):
            raise _bad(f"name must match {NAME_PATTERN}")
    return start, end, names


async def export_events(request: Request) -> Response:
    """The project's raw events in [from, to) as NDJSON (event-time order). Postgres down
    before the first row is a 503; a failure mid-stream ends the stream early (the last
    line is then incomplete or missing: a client checks the count it expected)."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    start, end, names = parse_export(request)
    shards = shard_projects(project, state.services.shards.known(project).span)
    with postgres_unavailable():
        conn = await state.pool.acquire()
    try:
        with postgres_unavailable():
            tx = conn.transaction(readonly=True, isolation="repeatable_read")
            await tx.start()
    except BaseException:
        await state.pool.release(conn)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in export_lines(
                conn, shards, to_datetime(start), to_datetime(end), names
            ):
                yield chunk
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("events export of %s ended early: %s", project, exc)
        finally:
            try:
                await tx.rollback()
            except (asyncpg.PostgresError, OSError):
                pass
            finally:
                await state.pool.release(conn)

    return StreamingResponse(
        body(), media_type="application/x-ndjson", headers={"Cache-Control": "no-store"}
    )
