"""GET /v1/projects/{project}/series and /total, and GET /v1/series across projects: each
handler is authorize -> parse -> read engine -> reply (with an ETag, 304 for pollers)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize, bearer_key, etag_response, read_context
from api.export import render
from api.state import AppState
from counters.core.errors import BadRequest
from counters.engines.read.context import ReadContext
from counters.engines.read.engine import MAX_PROJECTS, read_projects, read_series, read_total
from counters.engines.read.parse import ReadQuery, parse_format, parse_read
from counters.engines.read.seen_dims import bare_dims


async def parse_for(
    state: AppState, ctx: ReadContext, now: int, params: Mapping[str, str]
) -> ReadQuery:
    """The read one project's parameters ask for, strictly: a bare parameter must be a dim
    the project has seen (its catalog, cached), the range within minute retention."""
    known = await state.seen_dims.get(ctx, now, bare_dims(params))
    return parse_read(
        params,
        now,
        state.settings.crosstabs,
        oldest_minute=ctx.oldest_minute,
        known_dims=known,
    )


async def _read(request: Request) -> tuple[ReadContext, ReadQuery]:
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    now = state.clock.now_ms()
    ctx = read_context(state, project, now)
    return ctx, await parse_for(state, ctx, now, request.query_params)


def _format(request: Request, q: ReadQuery) -> str:
    """The reply format; compare is JSON only (400 with format long or csv)."""
    fmt = parse_format(request.query_params, request.headers.get("accept"))
    if q.compare is not None and fmt != "json":
        raise BadRequest(
            f"compare: the reply is JSON only (not format {fmt}); read the compared range"
            " with its own from/to for rows",
            code="bad_parameter",
        )
    return fmt


async def series(request: Request) -> Response:
    """Zero-padded values per period; with group_by, the top tuples and __other__."""
    ctx, q = await _read(request)
    fmt = _format(request, q)
    return render(request, q, await read_series(ctx, q), fmt)


async def total(request: Request) -> Response:
    """One value over the whole range; uniques are the union of every bucket's sketch."""
    ctx, q = await _read(request)
    fmt = _format(request, q)
    return render(request, q, await read_total(ctx, q), fmt)


def _projects(request: Request) -> list[str]:
    projects = list(dict.fromkeys(request.query_params.getlist("project")))
    if not projects:
        raise BadRequest("project is required (repeat it for several)", code="bad_parameter")
    if len(projects) > MAX_PROJECTS:
        raise BadRequest(f"at most {MAX_PROJECTS} projects per request", code="bad_parameter")
    return projects


async def projects_series(request: Request) -> Response:
    """GET /v1/series?project=a&project=b&...: one series per project plus their union
    (uniques merged across projects, never summed)."""
    if parse_format(request.query_params) != "json":
        raise BadRequest(
            "format: across projects the reply is JSON only (read each project for long or csv)",
            code="bad_parameter",
        )
    state = app_state(request)
    projects = _projects(request)
    key = bearer_key(request)
    for project in projects:
        await authorize(state, key, scope="read", project=project)
    now = state.clock.now_ms()
    ctxs = [read_context(state, project, now) for project in projects]
    wanted = bare_dims(request.query_params)
    known: set[str] | None = None
    for ctx in ctxs:
        dims = await state.seen_dims.get(ctx, now, wanted)
        if dims is not None:
            known = set(dims) if known is None else known | dims
    q = parse_read(
        request.query_params,
        now,
        state.settings.crosstabs,
        oldest_minute=ctxs[0].oldest_minute,
        known_dims=known,
    )
    return etag_response(request, await read_projects(ctxs, q))
