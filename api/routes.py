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

from api import catalog, ingest, keys, links, ops, pixel, reads
from api.openapi import (
    PROJECT,
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


def _read(summary: str, params: tuple[dict[str, Any], ...], ok: str, schema: Any) -> Operation:
    """The operation of a read route: secured, ETag-revalidated, the read errors."""
    return Operation(
        summary=summary,
        secured=True,
        params=params,
        ok=ok,
        ok_schema=schema,
        not_modified=True,
        errors=READ_ERRORS,
    )


ROUTES: list[RouteSpec] = [
    RouteSpec(
        "/v1/events",
        "POST",
        ingest.post_events,
        Operation(
            summary="Count a batch of events (all or nothing)",
            secured=True,
            params=(query("key", {"type": "string"}, "Ingest key, for navigator.sendBeacon"),),
            request_body={
                "required": True,
                "content": {
                    "application/json": {"schema": {"type": "array", "items": ref("EventIn")}},
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
            params=(
                query("key", {"type": "string"}, "Ingest key"),
                query("name", {"type": "string"}, "Event name"),
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
            "One value over the range",
            (PROJECT, *TOTAL_PARAMS),
            "Total",
            one_of("TotalReply", "MultiTotalReply"),
        ),
    ),
    RouteSpec(
        "/v1/series",
        "GET",
        reads.projects_series,
        _read(
            "One series per project plus their union",
            (query("project", {"type": "string"}, "Project (repeat)", required=True), *READ_PARAMS),
            "Series",
            ref("ProjectsReply"),
        ),
    ),
    RouteSpec(
        "/v1/whoami",
        "GET",
        catalog.whoami,
        Operation(
            summary="The projects and scope of the presented key",
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
            secured=True,
            params=(PROJECT,),
            ok="Catalog",
            ok_schema=ref("Catalog"),
            errors=(401, 403, 404, 429, 503),
        ),
    ),
    RouteSpec(
        "/v1/projects/{project}/keys",
        "GET",
        keys.list_keys,
        Operation(
            summary="The project's keys (admin key; never a secret)",
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
    RouteSpec("/openapi.json", "GET", openapi, None),
    RouteSpec(
        "/healthz",
        "GET",
        ops.healthz,
        Operation(
            summary="Redis and Postgres reachable",
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
