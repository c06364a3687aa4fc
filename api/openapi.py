"""The OpenAPI 3.1 document, generated from the msgspec models and the route table
(api/routes.py): every documented route contributes its own operation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from counters.core.keys import KeyRecord, NewKey
from counters.core.measures import MEASURES
from counters.core.models import (
    DIM_NAME_PATTERN,
    DIM_VALUE_PATTERN,
    NAME_PATTERN,
    EventIn,
    IngestReply,
)
from counters.core.periods import PRECISIONS
from counters.engines.read.batch import KINDS, MAX_ID_CHARS, MAX_QUERIES
from counters.engines.read.catalog import Catalog, WhoAmI
from counters.engines.read.parse import COMPARES
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


TAGS = {
    "ingest": "Count events",
    "read": "Series, totals and breakdowns",
    "catalog": "What a key and a project hold",
    "keys": "API keys (admin)",
    "ops": "Health and metrics",
    "sdks": "PostHog and Segment SDK capture routes (their own wire formats)",
}
MODELS: list[Any] = [
    EventIn,
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


ENUMS: dict[str, list[str]] = {
    "Measure": list(MEASURES),
    "Precision": list(PRECISIONS),
    "Grain": ["minute", "hour", "day"],
    "Format": ["json", "csv", "long"],
    "Compare": list(COMPARES),
}
"""Shared enum components, each named once and referenced by every parameter using it."""
NAME_SCHEMA = {"type": "string", "pattern": NAME_PATTERN}
DIM_FILTERS = {
    "name": "d",
    "in": "query",
    "style": "deepObject",
    "explode": True,
    "schema": {
        "type": "object",
        "propertyNames": {"pattern": DIM_NAME_PATTERN},
        "additionalProperties": {"type": "string", "pattern": DIM_VALUE_PATTERN},
    },
    "description": "Dim filters, sent as d.<dim>=<value> (e.g. d.country=DE); taken even for"
    " a dim never seen (it then matches nothing). A bare <dim>=<value> works for a dim the"
    " project has seen; any other unknown parameter is a 400. A repeated filter means any"
    " of its values (d.source=google&d.source=bing: both; at most 20 values per dim and 64"
    " combinations per read).",
}
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "schema": {"type": "string"},
    "description": "The ETag of a previous reply: 304 when unchanged",
}
READ_PARAMS = [
    query(
        "name",
        {"type": "array", "items": NAME_SCHEMA, "minItems": 1, "maxItems": 20},
        "Event name (repeat for several)",
        required=True,
        style="form",
        explode=True,
    ),
    query("measure", ref("Measure"), "count, sum or uniques"),
    query("grain", ref("Grain"), "Alias of precision 1m, 1h, 1d"),
    query(
        "precision",
        ref("Precision"),
        "Bucket size: any whole number of minutes dividing the day (2m, 10m, 30m, 2h, 6h,"
        " 12h; 120m is read as 2h, 1440m as 1d), or 1d, 1w, 1mo",
    ),
    query("tz", {"type": "string"}, "IANA time zone (default UTC)"),
    query(
        "from",
        {"type": "string"},
        "Start: RFC 3339 or epoch ms, 1970..9999 (rounded down); a number below 10^11"
        " (epoch seconds) is refused",
    ),
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
    query("format", ref("Format"), "Reply shape: json (default), csv or long"),
    query(
        "compare",
        ref("Compare"),
        "Add the same read over the range just before (previous_period: as many periods)"
        " or a calendar year earlier in tz (previous_year) as `comparison`; JSON only, not"
        " with group_by",
    ),
    DIM_FILTERS,
    IF_NONE_MATCH,
]
TOTAL_PARAMS = [p for p in READ_PARAMS if p["name"] not in ("group_by", "limit")]
PROJECTS_PARAMS = [p for p in READ_PARAMS if p["name"] != "compare"]
"""GET /v1/series across projects takes no compare."""
PROJECT = {"name": "project", "in": "path", "required": True, "schema": {"type": "string"}}
BEARER: list[dict[str, list[str]]] = [{"bearer": []}]
QUERY_KEY: list[dict[str, list[str]]] = [{"queryKey": []}]
ETAG_HEADER = {
    "ETag": {"description": "Send it back in If-None-Match", "schema": {"type": "string"}}
}


PARAM_VALUE = {
    "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    "description": "A read parameter's value; a list is the parameter repeated",
}
SCHEMAS: dict[str, Any] = {
    "BatchQuery": {
        "type": "object",
        "description": "One query: id, kind and the read parameters of GET /series or /total"
        " (catalog takes none); they override common's, key by key",
        "required": ["id", "kind"],
        "properties": {
            "id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
            "kind": {"type": "string", "enum": list(KINDS)},
        },
        "additionalProperties": PARAM_VALUE,
    },
    "BatchRequest": {
        "type": "object",
        "description": "Several reads in one request (POST body, or GET ?q=<this as JSON>)",
        "required": ["queries"],
        "properties": {
            "common": {
                "type": "object",
                "description": "Read parameters every query starts from",
                "additionalProperties": PARAM_VALUE,
            },
            "queries": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_QUERIES,
                "items": {"$ref": "#/components/schemas/BatchQuery"},
            },
        },
        "additionalProperties": False,
    },
    "BatchReply": {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "object",
                "description": "Per query id, exactly the JSON its single route answers",
                "additionalProperties": {
                    "anyOf": [
                        {"$ref": f"#/components/schemas/{n}"}
                        for n in (
                            "SeriesReply",
                            "MultiSeriesReply",
                            "TotalReply",
                            "MultiTotalReply",
                            "Catalog",
                        )
                    ]
                },
            }
        },
    },
}
"""Components written by hand (shapes no msgspec model describes)."""


class Operation(msgspec.Struct, frozen=True, kw_only=True):
    """What the document says about one route: summary, parameters, replies, errors."""

    summary: str
    operation_id: str
    tags: tuple[str, ...] = ()
    ok: str
    """Description of the success reply."""
    ok_status: int = 200
    """Status of the success reply (201 created, 204 no content)."""
    ok_schema: dict[str, Any] | None = None
    """JSON schema of the 200 body (None when ok_content says otherwise)."""
    ok_content: dict[str, Any] | None = None
    secured: bool = False
    security: tuple[dict[str, list[str]], ...] | None = None
    """Security requirements other than the bearer key (e.g. the pixel's query key)."""
    params: tuple[dict[str, Any], ...] = ()
    request_body: dict[str, Any] | None = None
    not_modified: bool = False
    """Answers 304 to If-None-Match."""
    errors: tuple[int, ...] = ()
    extra_responses: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        """The OpenAPI operation object."""
        op: dict[str, Any] = {"summary": self.summary, "operationId": self.operation_id}
        if self.tags:
            op["tags"] = list(self.tags)
        if self.security is not None:
            op["security"] = list(self.security)
        elif self.secured:
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
        if self.not_modified:
            ok["headers"] = ETAG_HEADER
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


def ecma_patterns(schema: Any) -> Any:
    """The document with every Python pattern written for ECMA-262 (JSON Schema's dialect):
    the end anchor `\\Z` becomes `$`. Python keeps `\\Z` internally (its `$` also matches
    before a final newline); ECMA's `$` without the m flag matches only at the end."""
    if isinstance(schema, dict):
        return {
            k: (
                v[:-2] + "$"
                if k == "pattern" and isinstance(v, str) and v.endswith("\\Z")
                else ecma_patterns(v)
            )
            for k, v in schema.items()
        }
    if isinstance(schema, list):
        return [ecma_patterns(v) for v in schema]
    return schema


def build(routes: Sequence[RouteSpec]) -> dict[str, Any]:
    """The whole document: components from the models, paths from the documented routes."""
    (_, components) = msgspec.json.schema_components(
        MODELS, ref_template="#/components/schemas/{name}"
    )
    components = decimals_as_numbers(components)
    for enum, values in ENUMS.items():
        components[enum] = {"type": "string", "enum": values}
    components.update(SCHEMAS)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.operation is not None:
            paths.setdefault(route.path, {})[route.method.lower()] = route.operation.document()
    doc: dict[str, Any] = ecma_patterns(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "counters",
                "version": "1",
                "description": "Real-time counters on Redis with Postgres rollups.",
            },
            "components": {
                "schemas": components,
                "securitySchemes": {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "queryKey": {
                        "type": "apiKey",
                        "in": "query",
                        "name": "key",
                        "description": "An ingest key in the query (pixel, sendBeacon)",
                    },
                },
            },
            "servers": [{"url": "/", "description": "This server"}],
            "tags": [{"name": t, "description": d} for t, d in TAGS.items()],
            "paths": paths,
        }
    )
    return doc
