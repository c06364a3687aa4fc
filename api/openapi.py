"""The OpenAPI 3.1 document, generated from the msgspec models and the route table
(api/routes.py): every documented route contributes its own operation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from counters.core.keys import KeyRecord, NewKey
from counters.core.measures import MEASURES
from counters.core.models import EventIn, IngestReply
from counters.core.periods import PRECISIONS
from counters.engines.read.catalog import Catalog, WhoAmI
from counters.engines.read.reply import (
    MultiSeriesReply,
    MultiTotalReply,
    ProjectsReply,
    SeriesReply,
    TotalReply,
)

if TYPE_CHECKING:
    from api.routes import RouteSpec


class ErrorBody(msgspec.Struct):
    code: str
    message: str


class ErrorReply(msgspec.Struct):
    error: ErrorBody


class HealthReply(msgspec.Struct):
    status: str
    checks: dict[str, str] | None = None
    """Per backend "ok"/"down"; left out without the metrics token when one is set."""
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
    list[KeyRecord],
    NewKey,
]
ERROR_TEXT = {
    400: "Bad parameter",
    401: "No or unknown key",
    403: "Key not for this project or scope",
    404: "Unknown project (or one the key does not cover)",
    409: "Conflict (e.g. a key revoking itself)",
    413: "Body or batch too large",
    415: "Unsupported media type",
    422: "An event is invalid",
    429: "Over a rate limit (see Retry-After, RateLimit and RateLimit-Policy)",
    503: "Redis or Postgres unavailable (see Retry-After)",
}
READ_ERRORS = (400, 401, 403, 404, 429, 503)


def ref(name: str) -> dict[str, str]:
    """A reference to a component schema."""
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON body of this schema."""
    return {"content": {"application/json": {"schema": schema}}}


def one_of(*names: str) -> dict[str, Any]:
    """Either of these component schemas."""
    return {"oneOf": [ref(n) for n in names]}


def query(name: str, schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    """A query parameter."""
    return {"name": name, "in": "query", "schema": schema, "description": description, **extra}


READ_PARAMS = [
    query(
        "name",
        {"type": "string", "pattern": "^[a-z0-9_.-]{1,64}$"},
        "Event name (repeat for several)",
        required=True,
    ),
    query("measure", {"type": "string", "enum": list(MEASURES)}, "count, sum or uniques"),
    query(
        "grain",
        {"type": "string", "enum": ["minute", "hour", "day"]},
        "Alias of precision 1m, 1h, 1d",
    ),
    query("precision", {"type": "string", "enum": list(PRECISIONS)}, "Bucket size"),
    query("tz", {"type": "string"}, "IANA time zone (default UTC)"),
    query("from", {"type": "string"}, "Start: RFC 3339 or epoch ms, 1970..9999 (rounded down)"),
    query(
        "to", {"type": "string"}, "End, exclusive: RFC 3339 or epoch ms, 1970..9999 (rounded up)"
    ),
    query("excluding_current", {"type": "boolean"}, "Drop the in-progress bucket (default)"),
    query("group_by", {"type": "string"}, "Dims to break down by, comma-separated (at most 3)"),
    query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000},
        "Top N tuples (limit + 2 series x buckets x names <= max_points)",
    ),
]
TOTAL_PARAMS = [p for p in READ_PARAMS if p["name"] not in ("group_by", "limit")]
PROJECT = {"name": "project", "in": "path", "required": True, "schema": {"type": "string"}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """What the document says about one route: summary, parameters, replies, errors."""

    summary: str
    ok: str
    """Description of the success reply."""
    ok_status: int = 200
    """Status of the success reply (201 created, 204 no content)."""
    ok_schema: dict[str, Any] | None = None
    """JSON schema of the 200 body (None when ok_content says otherwise)."""
    ok_content: dict[str, Any] | None = None
    secured: bool = False
    params: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None
    not_modified: bool = False
    """Answers 304 to If-None-Match."""
    errors: tuple[int, ...] = ()
    extra_responses: dict[str, Any] | None = None
    operation_id: str | None = None

    def document(self) -> dict[str, Any]:
        """The OpenAPI operation object."""
        op: dict[str, Any] = {"summary": self.summary}
        if self.operation_id is not None:
            op["operationId"] = self.operation_id
        if self.secured:
            op["security"] = BEARER
        if self.params:
            op["parameters"] = list(self.params)
        if self.request_body is not None:
            op["requestBody"] = self.request_body
        ok: dict[str, Any] = {"description": self.ok}
        if self.ok_schema is not None:
            ok.update(json_content(self.ok_schema))
        if self.ok_content is not None:
            ok["content"] = self.ok_content
        responses: dict[str, Any] = {str(self.ok_status): ok}
        if self.not_modified:
            responses["304"] = {"description": "Not modified (If-None-Match)"}
        for code in self.errors:
            responses[str(code)] = {
                "description": ERROR_TEXT[code],
                **json_content(ref("ErrorReply")),
            }
        responses.update(self.extra_responses or {})
        op["responses"] = responses
        return op


DECIMAL_SCHEMA = {"type": "string", "format": "decimal"}
"""What msgspec says of a Decimal; the API encodes them as JSON numbers instead."""


def decimals_as_numbers(schema: Any) -> Any:
    """The schema with every Decimal described as what the API sends: a JSON number (exact
    sums are encoded with decimal_format="number", see api/common.py)."""
    if schema == DECIMAL_SCHEMA:
        return {"type": "number"}
    if isinstance(schema, dict):
        return {k: decimals_as_numbers(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [decimals_as_numbers(v) for v in schema]
    return schema


def build(routes: Sequence[RouteSpec]) -> dict[str, Any]:
    """The whole document: components from the models, paths from the documented routes."""
    (_, components) = msgspec.json.schema_components(
        MODELS, ref_template="#/components/schemas/{name}"
    )
    components = decimals_as_numbers(components)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.operation is not None:
            paths.setdefault(route.path, {})[route.method.lower()] = route.operation.document()
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
        "paths": paths,
    }
