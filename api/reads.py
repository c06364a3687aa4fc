"""GET /v1/projects/{project}/series and /total."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NoReturn

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize, bearer_key, json_response
from api.query import count_uniques, decompose, read_buckets
from counters.buckets import GRAIN_BY_NAME, Grain, bucket_ceil, bucket_start, format_ts, parse_ts
from counters.errors import BadRequest
from counters.keys import ProjectKeys
from counters.models import DIM_NAME_PATTERN, NAME_PATTERN, VALUE_SCALE
from counters.rollups import Rollup
from persist.retention import minute_edge

MEASURES = ("count", "sum", "uniques")
RESERVED = {"name", "measure", "grain", "from", "to", "excluding_current"}
MAX_SERIES_BUCKETS = 10_000
DEFAULT_BUCKETS = 30
_name_re = re.compile(NAME_PATTERN)
_dim_re = re.compile(DIM_NAME_PATTERN)


class ReadQuery(msgspec.Struct, frozen=True):
    """A parsed read: one name, measure, grain, bucket-aligned [start, end), dim filters."""

    name: str
    measure: str
    grain: Grain
    start: int
    end: int
    rollup: Rollup
    values: tuple[str, ...]


class Point(msgspec.Struct):
    bucket: str
    value: int | float


class SeriesReply(msgspec.Struct, rename={"from_": "from"}):
    name: str
    measure: str
    grain: str
    from_: str
    to: str
    data: list[Point]


class TotalReply(msgspec.Struct, rename={"from_": "from"}):
    name: str
    measure: str
    from_: str
    to: str
    value: int | float


def _bool(text: str, param: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"{param} must be true or false", code="bad_parameter")


def parse_read(
    params: Mapping[str, str],
    now_ms: int,
    crosstabs: tuple[Rollup, ...],
    *,
    oldest_minute: int | None = None,
) -> ReadQuery:
    """Validates read parameters; 400 naming the first bad one (minute buckets before
    oldest_minute are past retention)."""
    name = params.get("name")
    if not name:
        raise BadRequest("name is required (e.g. name=click)", code="bad_parameter")
    if not _name_re.match(name):
        raise BadRequest(f"name must match {NAME_PATTERN}", code="bad_parameter")
    measure = params.get("measure", "count")
    if measure not in MEASURES:
        raise BadRequest(f"measure must be one of {', '.join(MEASURES)}", code="bad_parameter")
    grain_name = params.get("grain", "hour")
    grain = GRAIN_BY_NAME.get(grain_name)
    if grain is None:
        raise BadRequest("grain must be minute, hour or day", code="bad_parameter")
    excluding_current = _bool(params.get("excluding_current", "true"), "excluding_current")
    current = bucket_start(now_ms, grain)
    limit = current if excluding_current else current + grain.value
    try:
        raw_end = parse_ts(params["to"]) if "to" in params else None
        raw_start = parse_ts(params["from"]) if "from" in params else None
    except ValueError as exc:
        raise BadRequest(f"from/to: {exc}", code="bad_parameter") from exc
    if raw_start is not None and raw_end is not None and raw_start > raw_end:
        raise BadRequest("from must be before to", code="bad_parameter")
    end = limit if raw_end is None else min(bucket_ceil(raw_end, grain), limit)
    if raw_start is None:
        start = end - DEFAULT_BUCKETS * grain.value
    else:
        start = bucket_start(raw_start, grain)
        if start > end:
            raise BadRequest(
                "from is after the last bucket that can be read (to stops at the current bucket)",
                code="bad_parameter",
            )
    if grain is Grain.minute and oldest_minute is not None and start < oldest_minute:
        raise_past_retention(oldest_minute)
    filters: dict[str, str] = {}
    for key, value in params.items():
        if key in RESERVED:
            continue
        if not _dim_re.match(key):
            raise BadRequest(
                f"unknown parameter {key!r} (dimension names match {DIM_NAME_PATTERN})",
                code="bad_parameter",
            )
        if not value or len(value.encode()) > 256:
            raise BadRequest(f"filter {key} must be 1..256 bytes", code="bad_parameter")
        filters[key] = value
    rollup = tuple(sorted(filters))
    if len(rollup) > 1 and rollup not in crosstabs:
        raise BadRequest(
            f"no rollup covers dims {', '.join(rollup)}; declare the cross-tab in config"
            " (crosstabs) to filter on them together",
            code="no_rollup",
        )
    return ReadQuery(name, measure, grain, start, end, rollup, tuple(filters[d] for d in rollup))


def raise_past_retention(oldest_minute: int) -> NoReturn:
    """400 naming the oldest minute bucket still kept."""
    raise BadRequest(
        f"minute buckets past retention: the oldest available minute is"
        f" {format_ts(oldest_minute)} (use grain=hour or day further back)",
        code="past_retention",
    )


def _oldest_minute(request: Request) -> int:
    state = app_state(request)
    return minute_edge(state.clock.now_ms(), state.settings.minute_retention_days)


def _value(measure: str, count: int, total: int) -> int | float:
    return count if measure == "count" else total / VALUE_SCALE


async def series(request: Request) -> Response:
    """Zero-padded values of one measure per bucket."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    q = parse_read(
        request.query_params,
        state.clock.now_ms(),
        state.settings.crosstabs,
        oldest_minute=_oldest_minute(request),
    )
    buckets = list(range(q.start, q.end, q.grain.value))
    if len(buckets) > MAX_SERIES_BUCKETS:
        raise BadRequest(
            f"{len(buckets)} buckets asked for; at most {MAX_SERIES_BUCKETS} per series",
            code="too_many_buckets",
        )
    keys = ProjectKeys(state.settings.key_prefix, project)
    uniques = q.measure == "uniques"
    values = await read_buckets(
        state.pool,
        state.redis,
        keys,
        q.name,
        q.rollup,
        q.values,
        [(q.grain, buckets)],
        uniques=uniques,
    )
    if uniques:
        numbers: list[int | float] = list(
            await count_uniques(state.redis, values, values.hll_keys[0])
        )
    else:
        numbers = [
            _value(q.measure, c, s) for c, s in zip(values.counts[0], values.sums[0], strict=True)
        ]
    data = [Point(format_ts(b), v) for b, v in zip(buckets, numbers, strict=True)]
    return json_response(
        SeriesReply(q.name, q.measure, q.grain.name, format_ts(q.start), format_ts(q.end), data)
    )


async def total(request: Request) -> Response:
    """One value over the whole range; uniques are the union of every bucket's sketch."""
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    q = parse_read(request.query_params, state.clock.now_ms(), state.settings.crosstabs)
    pieces = decompose(q.start, q.end)
    oldest = _oldest_minute(request)
    if any(g is Grain.minute and b and b[0] < oldest for g, b in pieces):
        raise_past_retention(oldest)
    keys = ProjectKeys(state.settings.key_prefix, project)
    uniques = q.measure == "uniques"
    values = await read_buckets(
        state.pool, state.redis, keys, q.name, q.rollup, q.values, pieces, uniques=uniques
    )
    value: int | float
    if uniques:
        union = [k for piece in values.hll_keys for bucket in piece for k in bucket]
        (value,) = await count_uniques(state.redis, values, [union])
    else:
        value = _value(
            q.measure,
            sum(sum(p) for p in values.counts),
            sum(sum(p) for p in values.sums),
        )
    return json_response(TotalReply(q.name, q.measure, format_ts(q.start), format_ts(q.end), value))
