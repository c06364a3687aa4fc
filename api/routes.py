"""The route table: one entry per HTTP route (path, method, handler and what the OpenAPI
document says about it). The app serves these routes and /openapi.json documents them, so
a new route is one entry here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import catalog, events, ingest, keys, links, ops, pixel, prom, reads, sdks
from api.openapi import (
    IF_NONE_MATCH,
    PROJECT,
    PROJECTS_PARAMS,
    QUERY_KEY,
    READ_ERRORS,
    READ_PARAMS,
    TOTAL_PARAMS,
    Operation,
    build,
    json_content,
    one_of,
    query,
    ref,
)
from api.query import query_get, query_post

Handler = Callable[[Request], Awaitable[Response]]


class RouteSpec(msgspec.Struct, frozen=True):
    """One HTTP route; operation None leaves it out of the document."""

    path: str
    method: str
    handler: Handler
    operation: Operation | None


async def openapi(request: Request) -> Response:
    """GET /openapi.json."""
    return Response(_document, media_type="application/json")


LONG_ROWS = {
    "type": "array",
    "description": "format=long: one row per point (time, value, name when several, dims)",
    "items": {
        "type": "object",
        "required": ["value"],
        "properties": {"time": {"type": "string"}, "value": {"type": "number"}},
        "additionalProperties": {"type": ["string", "number"]},
    },
}
"""The reply of format=long (api/export.py)."""


def _read(
    operation_id: str,
    summary: str,
    params: tuple[dict[str, Any], ...],
    ok: str,
    schema: Any,
    *,
    formats: bool = True,
) -> Operation:
    """The operation of a read route: secured, ETag-revalidated, the read errors; with
    formats, the reply may also be long rows (format=long) or CSV (format=csv, Accept)."""
    content = None
    if formats:
        content = {
            "application/json": {"schema": {"oneOf": [schema, LONG_ROWS]}},
            "text/csv": {"schema": {"type": "string"}},
        }
    return Operation(
        summary=summary,
        operation_id=operation_id,
        tags=("read",),
        secured=True,
        params=params,
        ok=ok,
        ok_schema=None if formats else schema,
        ok_content=content,
        not_modified=True,
        errors=READ_ERRORS,
    )


def _batch(
    operation_id: str,
    summary: str,
    params: tuple[dict[str, Any], ...],
    request_body: dict[str, Any] | None = None,
) -> Operation:
    """The operation of a batched read: secured, ETag-revalidated (304), the read errors."""
    return Operation(
        summary=summary,
        operation_id=operation_id,
        tags=("read",),
        secured=True,
        params=params,
        request_body=request_body,
        ok="Every query's reply by its id",
        ok_schema=ref("BatchReply"),
        not_modified=True,
        errors=(*READ_ERRORS, 413) if request_body is not None else READ_ERRORS,
    )


ROUTES: list[RouteSpec] = [
    RouteSpec(
        "/v1/events",
        "POST",
        ingest.post_events,
        Operation(
            summary="Count a batch of events (all or nothing)",
            operation_id="ingestEvents",
            tags=("ingest",),
            secured=True,
            params=(query("key", {"type": "string"}, "Ingest key, for navigator.sendBeacon"),),
            request_body={
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "oneOf": [
                                ref("EventIn"),
                                {"type": "array", "items": ref("EventIn")},
                            ]
                        }
                    },
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/plain": {"schema": {"type": "string"}},
                },
            },
            ok="Counted",
            ok_schema=ref("IngestReply"),
            errors=(400, 401, 403, 413, 422, 429, 503),
        ),
    ),
    RouteSpec(
        "/v1/pixel.gif",
        "GET",
        pixel.pixel,
        Operation(
            summary="Count one event; always a 1x1 GIF",
            security=(*QUERY_KEY, {}),
            operation_id="trackPixel",
            tags=("ingest",),
            params=(
                query("name", {"type": "string"}, "Event name (an invalid one is not counted)"),
                query("uid", {"type": "string"}, "Who, for uniques"),
                query("id", {"type": "string"}, "Idempotency key"),
                query("value", {"type": "string"}, "Number"),
                query("ts", {"type": "string"}, "RFC 3339 or epoch ms"),
            ),
            ok="The GIF",
            ok_content={"image/gif": {"schema": {"type": "string"}}},
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/series",
        "GET",
        reads.series,
        _read(
            "getSeries",
            "Values per bucket (zero-padded), or a breakdown",
            (PROJECT, *READ_PARAMS),
            "Series",
            one_of("SeriesReply", "MultiSeriesReply"),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/total",
        "GET",
        reads.total,
        _read(
            "getTotal",
            "One value over the range",
            (PROJECT, *TOTAL_PARAMS),
            "Total",
            one_of("TotalReply", "MultiTotalReply"),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/query",
        "GET",
        query_get,
        _batch(
            "queryBatch",
            "Several series, totals and catalogs in one request, one ETag (q=<JSON>)",
            (
                PROJECT,
                query(
                    "q",
                    {"type": "string"},
                    "The batch as JSON (the BatchRequest schema)",
                    required=True,
                ),
                IF_NONE_MATCH,
            ),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/query",
        "POST",
        query_post,
        _batch(
            "queryBatchPost",
            "Several series, totals and catalogs in one request (the batch as the body)",
            (PROJECT, IF_NONE_MATCH),
            request_body={"required": True, **json_content(ref("BatchRequest"))},
        ),
    ),
    RouteSpec(
        "/v1/series",
        "GET",
        reads.projects_series,
        _read(
            "getSeriesAcrossProjects",
            "One series per project plus their union",
            (
                query("project", {"type": "string"}, "Project (repeat)", required=True),
                *PROJECTS_PARAMS,
            ),
            "Series",
            ref("ProjectsReply"),
            formats=False,
        ),
    ),
    RouteSpec(
        "/v1/whoami",
        "GET",
        catalog.whoami,
        Operation(
            summary="The projects and scope of the presented key",
            operation_id="whoami",
            tags=("catalog",),
            secured=True,
            ok="The key",
            ok_schema=ref("WhoAmI"),
            errors=(401, 429, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/catalog",
        "GET",
        catalog.catalog,
        Operation(
            summary="Event names of the last 30 days and their dims",
            operation_id="getCatalog",
            tags=("catalog",),
            secured=True,
            params=(PROJECT, IF_NONE_MATCH),
            ok="Catalog",
            ok_schema=ref("Catalog"),
            not_modified=True,
            errors=(401, 403, 404, 429, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/keys",
        "GET",
        keys.list_keys,
        Operation(
            summary="The project's keys (admin key; never a secret)",
            operation_id="listKeys",
            tags=("keys",),
            secured=True,
            params=(PROJECT,),
            ok="Keys",
            ok_schema={"type": "array", "items": ref("KeyRecord")},
            errors=(401, 403, 404, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/keys",
        "POST",
        keys.create_key,
        Operation(
            summary="Create a key of the project (admin key); the secret is shown once",
            operation_id="createKey",
            tags=("keys",),
            secured=True,
            params=(PROJECT,),
            request_body={"required": True, **json_content(keys.KEY_REQUEST_SCHEMA)},
            ok="Created",
            ok_status=201,
            ok_schema=ref("NewKey"),
            errors=(400, 401, 403, 404, 413, 422, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/keys/{key_id}",
        "DELETE",
        keys.revoke_key,
        Operation(
            summary="Revoke a key of the project (admin key); honoured within a second",
            operation_id="revokeKey",
            tags=("keys",),
            secured=True,
            params=(
                PROJECT,
                {"name": "key_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ),
            ok="Revoked",
            ok_status=204,
            errors=(401, 403, 404, 409, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/events",
        "GET",
        events.export_events,
        Operation(
            operation_id="exportEvents",
            tags=("read",),
            summary="The raw event log over [from, to) as NDJSON (uids as stored: hashed)",
            secured=True,
            params=(
                PROJECT,
                query("from", {"type": "string"}, "RFC 3339 or epoch ms", required=True),
                query("to", {"type": "string"}, "RFC 3339 or epoch ms", required=True),
                query("name", {"type": "string"}, "Event name (repeat; default every name)"),
            ),
            ok="One JSON object per line",
            ok_content={"application/x-ndjson": {"schema": {"type": "string"}}},
            errors=(400, 401, 404, 429, 503),
        ),
    ),
    RouteSpec("/openapi.json", "GET", openapi, None),
    # the Prometheus HTTP API subset (Prometheus' own shapes, so not in this document)
    *(
        RouteSpec(f"/prom/api/v1/{path}", method, handler, None)
        for path, handler in (
            ("query_range", prom.query_range),
            ("query", prom.query),
            ("labels", prom.labels),
            ("label/{label}/values", prom.label_values),
            ("series", prom.series),
            ("status/buildinfo", prom.buildinfo),
            ("metadata", prom.metadata),
        )
        for method in ("GET", "POST")
    ),
    RouteSpec(
        "/healthz",
        "GET",
        ops.healthz,
        Operation(
            summary="Redis and Postgres reachable",
            operation_id="health",
            tags=("ops",),
            ok="Up",
            ok_schema=ref("HealthReply"),
            extra_responses={
                "503": {"description": "A backend is down", **json_content(ref("HealthReply"))}
            },
        ),
    ),
    RouteSpec(
        "/metrics",
        "GET",
        ops.metrics,
        Operation(
            summary="Prometheus metrics",
            operation_id="metrics",
            tags=("ops",),
            ok="Text exposition",
            ok_content={"text/plain": {"schema": {"type": "string"}}},
            errors=(401,),
        ),
    ),
    RouteSpec(
        "/r/{id}",
        "GET",
        links.follow_link,
        Operation(
            summary="Follow a click-tracking link: count one click, 302 to its target",
            operation_id="followLink",
            tags=("ingest",),
            params=(
                {
                    "name": "id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[a-z0-9]{12}$"},
                },
                query("utm_source", {"type": "string"}, "Counted as a dim (any utm_*)"),
            ),
            ok_status=302,
            ok="Redirect to the link's registered target (Location)",
            extra_responses={
                "404": {
                    "description": "Unknown or disabled link (an HTML page)",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
                "503": {
                    "description": "Links not loaded yet (an HTML page; Retry-After)",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                },
            },
        ),
    ),
]


def _sdk(summary: str, body_desc: str, error: dict[str, Any]) -> Operation:
    """The operation of an SDK capture route: the key travels in the body (or Basic auth),
    refusals come in the SDK's own error shape."""
    errors = {
        str(code): {"description": "Refused", **json_content(error)}
        for code in (400, 401, 403, 408, 413, 422, 429, 503)
    }
    return Operation(
        operation_id="",  # one per path: _at
        tags=("sdks",),
        summary=summary,
        request_body={"required": True, "description": body_desc, **json_content({})},
        ok="Counted",
        ok_schema={"type": "object"},
        extra_responses=errors,
    )


_POSTHOG = _sdk(
    "PostHog SDK capture (`api_key` in the body is an ingest key)",
    "PostHog capture body: {batch: [...]}, one event, or an array",
    {
        "type": "object",
        "required": ["type", "code", "detail"],
        "properties": {
            "type": {"type": "string"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
)
_SEG_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
}


def _at(path: str, operation: Operation) -> Operation:
    """operation with the operationId of an SDK path: /segment/v1/t -> segmentV1T."""
    words = [w for w in path.replace("/", " ").replace("_", " ").split() if w]
    op_id = words[0] + "".join(w[:1].upper() + w[1:] for w in words[1:])
    return msgspec.structs.replace(operation, operation_id=op_id)


def _segment(what: str, short: str) -> Operation:
    """The operation of /segment/v1/<short>."""
    return _at(f"/segment/v1/{short}", _sdk_segment(what))


def _sdk_segment(what: str) -> Operation:
    return _sdk(
        f"Segment SDK {what} (write key = an ingest key: Basic user or `writeKey`)",
        "Segment message (or {batch: [...]})",
        _SEG_ERROR,
    )


ROUTES += [
    *(
        RouteSpec(path, "POST", sdks.posthog_capture, _at(path, _POSTHOG))
        for path in ("/posthog/batch/", "/posthog/capture/", "/posthog/i/v0/e/", "/posthog/e/")
    ),
    *(
        RouteSpec(f"/segment/v1/{p}", "POST", sdks.segment_batch, _segment("batch", p))
        for p in ("batch", "b")
    ),
    *(
        RouteSpec(f"/segment/v1/{p}", "POST", sdks.segment_track, _segment("track", p))
        for p in ("track", "t")
    ),
    *(
        RouteSpec(f"/segment/v1/{p}", "POST", sdks.segment_page, _segment("page", p))
        for p in ("page", "p")
    ),
    *(
        RouteSpec(f"/segment/v1/{p}", "POST", sdks.segment_screen, _segment("screen", p))
        for p in ("screen", "s")
    ),
    *(
        RouteSpec(
            f"/segment/v1/{p}",
            "POST",
            sdks.segment_other,
            _segment("identify/group/alias (ignored)", p),
        )
        for p in ("identify", "i", "group", "g", "alias", "a")
    ),
]


def document() -> dict[str, object]:
    """The OpenAPI document of ROUTES."""
    return build(ROUTES)


def starlette_routes() -> list[Route]:
    """The Starlette routes of ROUTES: one Route per path, so a 405 names in `Allow` every
    method the path has (routes sharing a path are dispatched by method)."""
    by_path: dict[str, dict[str, Handler]] = {}
    for r in ROUTES:
        by_path.setdefault(r.path, {})[r.method] = r.handler
    routes = []
    for path, handlers in by_path.items():
        if len(handlers) == 1:
            ((method, handler),) = handlers.items()
            routes.append(Route(path, handler, methods=[method]))
        else:
            routes.append(Route(path, _by_method(handlers), methods=list(handlers)))
    return routes


def _by_method(handlers: dict[str, Handler]) -> Handler:
    """One endpoint for the handlers of one path (HEAD goes to GET's)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return endpoint


_document = msgspec.json.encode(document())
