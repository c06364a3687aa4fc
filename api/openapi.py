"""The OpenAPI 3.1 document, generated from the msgspec models and the route table."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.catalog import Catalog, WhoAmI
from api.reads import (
    MEASURES,
    MultiSeriesReply,
    MultiTotalReply,
    ProjectsReply,
    SeriesReply,
    TotalReply,
)
from counters.core.models import EventIn, IngestReply
from counters.core.periods import PRECISIONS


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class ErrorReply(msgspec.Struct):
    error: ErrorBody


class HealthReply(msgspec.Struct):
    status: str
    checks: dict[str, str]
    error: ErrorBody | None = None


MODELS: list[Any] = [
    list[EventIn],
    IngestReply,
    SeriesReply,
    MultiSeriesReply,
    TotalReply,
    MultiTotalReply,
    ProjectsReply,
    ErrorReply,
    HealthReply,
    WhoAmI,
    Catalog,
]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad parameter",
        401: "No or unknown key",
        403: "Key not for this project or scope",
        404: "Unknown project",
        413: "Body or batch too large",
        415: "Unsupported media type",
        422: "An event is invalid",
        503: "Redis or Postgres unavailable (see Retry-After)",
    }
    return {str(c): {"description": text[c], **_json(_ref("ErrorReply"))} for c in codes}


def _query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


READ_PARAMS = [
    _query(
        "name",
        {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
        "Event name (repeat for several)",
        required=True,
    ),
    _query("measure", {"type": "string", "enum": list(MEASURES)}, "count, sum or uniques"),
    _query(
        "grain",
        {"type": "string", "enum": ["minute", "hour", "day"]},
        "Alias of precision 1m, 1h, 1d",
    ),
    _query("precision", {"type": "string", "enum": list(PRECISIONS)}, "Bucket size"),
    _query("tz", {"type": "string"}, "IANA time zone (default UTC)"),
    _query("from", {"type": "string"}, "Start: RFC 3339 or epoch ms (rounded down)"),
    _query("to", {"type": "string"}, "End, exclusive: RFC 3339 or epoch ms (rounded up)"),
    _query("excluding_current", {"type": "boolean"}, "Drop the in-progress bucket (default)"),
    _query("group_by", {"type": "string"}, "Dims to break down by, comma-separated"),
    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Top N tuples"),
]
TOTAL_PARAMS = [p for p in READ_PARAMS if p["name"] not in ("group_by", "limit")]
PROJECT = {"name": "project", "in": "path", "required": True, "schema": {"type": "string"}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


def build() -> dict[str, Any]:
    """The whole document."""
    (_, components) = msgspec.json.schema_components(
        MODELS, ref_template="#/components/schemas/{name}"
    )
    series_reply = {"oneOf": [_ref("SeriesReply"), _ref("MultiSeriesReply")]}
    total_reply = {"oneOf": [_ref("TotalReply"), _ref("MultiTotalReply")]}
    read_errors = _errors(400, 401, 403, 404, 503)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "counters",
            "version": "1",
            "description": "Real-time counters on Redis with Postgres rollups.",
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/events": {
                "post": {
                    "summary": "Count a batch of events (all or nothing)",
                    "security": BEARER,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {"type": "array", "items": _ref("EventIn")}
                            },
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "200": {"description": "Counted", **_json(_ref("IngestReply"))},
                        **_errors(400, 401, 403, 413, 422, 503),
                    },
                }
            },
            "/v1/pixel.gif": {
                "get": {
                    "summary": "Count one event; always a 1x1 GIF",
                    "parameters": [
                        _query("key", {"type": "string"}, "Ingest key"),
                        _query("name", {"type": "string"}, "Event name"),
                        _query("uid", {"type": "string"}, "Who, for uniques"),
                        _query("id", {"type": "string"}, "Idempotency key"),
                        _query("value", {"type": "string"}, "Number"),
                        _query("ts", {"type": "string"}, "RFC 3339 or epoch ms"),
                    ],
                    "responses": {
                        "200": {
                            "description": "The GIF",
                            "content": {"image/gif": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/v1/projects/{project}/series": {
                "get": {
                    "summary": "Values per bucket (zero-padded), or a breakdown",
                    "security": BEARER,
                    "parameters": [PROJECT, *READ_PARAMS],
                    "responses": {
                        "200": {"description": "Series", **_json(series_reply)},
                        "304": {"description": "Not modified (If-None-Match)"},
                        **read_errors,
                    },
                }
            },
            "/v1/projects/{project}/total": {
                "get": {
                    "summary": "One value over the range",
                    "security": BEARER,
                    "parameters": [PROJECT, *TOTAL_PARAMS],
                    "responses": {
                        "200": {"description": "Total", **_json(total_reply)},
                        "304": {"description": "Not modified (If-None-Match)"},
                        **read_errors,
                    },
                }
            },
            "/v1/series": {
                "get": {
                    "summary": "One series per project plus their union",
                    "security": BEARER,
                    "parameters": [
                        _query("project", {"type": "string"}, "Project (repeat)", required=True),
                        *READ_PARAMS,
                    ],
                    "responses": {
                        "200": {"description": "Series", **_json(_ref("ProjectsReply"))},
                        "304": {"description": "Not modified (If-None-Match)"},
                        **read_errors,
                    },
                }
            },
            "/v1/whoami": {
                "get": {
                    "summary": "The projects and scope of the presented key",
                    "security": BEARER,
                    "responses": {
                        "200": {"description": "The key", **_json(_ref("WhoAmI"))},
                        **_errors(401, 503),
                    },
                }
            },
            "/v1/projects/{project}/catalog": {
                "get": {
                    "summary": "Event names of the last 30 days and their dims",
                    "security": BEARER,
                    "parameters": [PROJECT],
                    "responses": {
                        "200": {"description": "Catalog", **_json(_ref("Catalog"))},
                        **_errors(401, 403, 404, 503),
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Redis and Postgres reachable",
                    "responses": {
                        "200": {"description": "Up", **_json(_ref("HealthReply"))},
                        "503": {"description": "A backend is down", **_json(_ref("HealthReply"))},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {
                        "200": {
                            "description": "Text exposition",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
    }


_document = msgspec.json.encode(build())


async def openapi(request: Request) -> Response:
    """GET /openapi.json."""
    return Response(_document, media_type="application/json")
