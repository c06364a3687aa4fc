"""GET /v1/projects/{project}/series and /total: any precision, any IANA time zone,
uniques over any range, breakdowns, several names; ETag and 304 for pollers."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from typing import NoReturn, cast
from zoneinfo import ZoneInfo

import msgspec
from redis.exceptions import RedisError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize, bearer_key
from api.state import AppState
from counters.core.buckets import GRAIN_BY_NAME, Grain, format_ts, parse_ts
from counters.core.errors import BadRequest, Unavailable
from counters.core.models import DIM_NAME_PATTERN, DIM_VALUE_PATTERN, NAME_PATTERN, VALUE_SCALE
from counters.core.periods import (
    FIXED_MS,
    GRAIN_ALIASES,
    PRECISIONS,
    ceil,
    floor,
    label,
    periods,
    zone,
)
from counters.core.rollups import Rollup
from counters.engines.read.breakdown import Breakdown, TupleCells, read_breakdown, read_ranked
from counters.engines.read.query import BucketValues, count_uniques, decompose, read_buckets
from counters.engines.read.raw import Acc, read_raw
from counters.engines.retention import minute_edge
from lua.keys import ProjectKeys

MEASURES = ("count", "sum", "uniques")
RESERVED = {
    "name",
    "measure",
    "grain",
    "precision",
    "tz",
    "from",
    "to",
    "excluding_current",
    "group_by",
    "limit",
    "project",
}
MAX_SERIES_BUCKETS = 10_000
MAX_NAMES = 20
DEFAULT_BUCKETS = 30
DEFAULT_LIMIT = 10
MAX_LIMIT = 1_000
OTHER = "__other__"
_name_re = re.compile(NAME_PATTERN)
_dim_re = re.compile(DIM_NAME_PATTERN)
_value_re = re.compile(DIM_VALUE_PATTERN)

Cell = tuple[Grain, int]


class ReadQuery(msgspec.Struct, frozen=True):
    """A parsed read: names, measure, precision and zone, the period-aligned [start, end),
    dim filters, breakdown dims, and the rollup that covers filters and breakdown."""

    names: tuple[str, ...]
    measure: str
    precision: str
    tz_name: str
    start: int
    end: int
    filters: tuple[tuple[str, str], ...]
    group_by: tuple[str, ...]
    limit: int
    rollup: Rollup
    alias: str | None = None
    """The `grain` name the caller used, if any."""
    source: str = "rollups"
    """Where the answer comes from: "rollups", or "raw" when no rollup covers the dims."""

    @property
    def name(self) -> str:
        """The first (often the only) name."""
        return self.names[0]

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.tz_name)

    @property
    def grain(self) -> Grain | None:
        """The stored grain this precision is (UTC only), else None."""
        for grain_name, precision in GRAIN_ALIASES.items():
            if precision == self.precision and self.tz_name == "UTC":
                return GRAIN_BY_NAME[grain_name]
        return None

    @property
    def values(self) -> tuple[str, ...]:
        """Filter values in rollup order (when there is no breakdown)."""
        f = dict(self.filters)
        return tuple(f[d] for d in self.rollup)


class Point(msgspec.Struct):
    bucket: str
    value: int | float


class SeriesReply(msgspec.Struct, rename={"from_": "from"}):
    name: str
    measure: str
    grain: str
    precision: str
    tz: str
    from_: str
    to: str
    source: str
    data: list[Point]


class NamedSeries(msgspec.Struct):
    name: str
    dims: dict[str, str]
    total: int | float
    data: list[Point]


class MultiSeriesReply(msgspec.Struct, rename={"from_": "from"}):
    measure: str
    precision: str
    tz: str
    from_: str
    to: str
    source: str
    series: list[NamedSeries]


class TotalReply(msgspec.Struct, rename={"from_": "from"}):
    name: str
    measure: str
    from_: str
    to: str
    value: int | float


class NamedTotal(msgspec.Struct):
    name: str
    value: int | float


class MultiTotalReply(msgspec.Struct, rename={"from_": "from"}):
    measure: str
    from_: str
    to: str
    totals: list[NamedTotal]


def _bool(text: str, param: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise BadRequest(f"{param} must be true or false", code="bad_parameter")


def _names(params: Mapping[str, str]) -> tuple[str, ...]:
    names = params.getlist("name") if isinstance(params, QueryParams) else [params.get("name")]
    found = tuple(dict.fromkeys(n for n in names if n))
    if not found:
        raise BadRequest("name is required (e.g. name=click)", code="bad_parameter")
    if len(found) > MAX_NAMES:
        raise BadRequest(f"at most {MAX_NAMES} names per request", code="bad_parameter")
    for n in found:
        if not _name_re.match(n):
            raise BadRequest(f"name must match {NAME_PATTERN}", code="bad_parameter")
    return found


def _step_back(end: int, n: int, precision: str, tz: ZoneInfo) -> int:
    size = FIXED_MS.get(precision)
    if size is not None:
        return end - n * size
    start = end
    for _ in range(n):
        start = floor(start - 1, precision, tz)
    return start


def parse_read(
    params: Mapping[str, str],
    now_ms: int,
    crosstabs: tuple[Rollup, ...],
    *,
    oldest_minute: int | None = None,
) -> ReadQuery:
    """Validates read parameters; 400 naming the first bad one (minute buckets before
    oldest_minute are past retention)."""
    names = _names(params)
    measure = params.get("measure", "count")
    if measure not in MEASURES:
        raise BadRequest(f"measure must be one of {', '.join(MEASURES)}", code="bad_parameter")
    alias = params.get("grain")
    if alias is not None and alias not in GRAIN_ALIASES:
        raise BadRequest("grain must be minute, hour or day", code="bad_parameter")
    precision = params.get("precision")
    if precision is None:
        precision = GRAIN_ALIASES["hour" if alias is None else alias]
    elif precision not in PRECISIONS:
        raise BadRequest(f"precision must be one of {', '.join(PRECISIONS)}", code="bad_parameter")
    elif alias is not None and GRAIN_ALIASES[alias] != precision:
        raise BadRequest(
            f"grain={alias} and precision={precision} disagree (grain is an alias)",
            code="bad_parameter",
        )
    try:
        tz = zone(params.get("tz"))
    except ValueError as exc:
        raise BadRequest(str(exc), code="bad_parameter") from exc
    excluding_current = _bool(params.get("excluding_current", "true"), "excluding_current")
    current = floor(now_ms, precision, tz)
    limit = current if excluding_current else ceil(now_ms + 1, precision, tz)
    try:
        raw_end = parse_ts(params["to"]) if "to" in params else None
        raw_start = parse_ts(params["from"]) if "from" in params else None
    except ValueError as exc:
        raise BadRequest(f"from/to: {exc}", code="bad_parameter") from exc
    if raw_start is not None and raw_end is not None and raw_start > raw_end:
        raise BadRequest("from must be before to", code="bad_parameter")
    end = limit if raw_end is None else min(ceil(raw_end, precision, tz), limit)
    if raw_start is None:
        start = _step_back(end, DEFAULT_BUCKETS, precision, tz)
    else:
        start = floor(raw_start, precision, tz)
        if start > end:
            raise BadRequest(
                "from is after the last bucket that can be read (to stops at the current bucket)",
                code="bad_parameter",
            )
    filters: dict[str, str] = {}
    for key, value in params.items():
        if key in RESERVED:
            continue
        if not _dim_re.match(key):
            raise BadRequest(
                f"unknown parameter {key!r} (dimension names match {DIM_NAME_PATTERN})",
                code="bad_parameter",
            )
        if not _value_re.match(value) or len(value.encode()) > 256:
            raise BadRequest(
                f"filter {key} must be 1..256 bytes without control characters",
                code="bad_parameter",
            )
        filters[key] = value
    group_by = tuple(d for d in (params.get("group_by") or "").split(",") if d)
    for d in group_by:
        if not _dim_re.match(d):
            raise BadRequest(f"group_by: {d!r} is not a dimension name", code="bad_parameter")
        if d in filters:
            raise BadRequest(f"group_by: {d} is also filtered on", code="bad_parameter")
    try:
        top = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise BadRequest("limit must be a whole number", code="bad_parameter") from exc
    if not 1 <= top <= MAX_LIMIT:
        raise BadRequest(f"limit must be 1..{MAX_LIMIT}", code="bad_parameter")
    rollup = tuple(sorted({*filters, *group_by}))
    source = "raw" if len(rollup) > 1 and rollup not in crosstabs else "rollups"
    q = ReadQuery(
        names,
        measure,
        precision,
        tz.key,
        start,
        end,
        tuple(sorted(filters.items())),
        tuple(dict.fromkeys(group_by)),
        top,
        rollup,
        alias,
        source,
    )
    if oldest_minute is not None and source == "rollups":
        if q.precision in ("1m", "5m", "15m") and q.start < oldest_minute:
            raise_past_retention(oldest_minute)
        _check_retention([_whole(q)], oldest_minute)
    return q


def raise_past_retention(oldest_minute: int) -> NoReturn:
    """400 naming the oldest minute bucket still kept."""
    raise BadRequest(
        f"minute buckets past retention: the oldest available minute is"
        f" {format_ts(oldest_minute)} (use a coarser precision, or a whole-hour time zone,"
        " further back)",
        code="past_retention",
    )


def _whole(q: ReadQuery) -> list[Cell]:
    """The fewest stored buckets tiling the whole range."""
    lo, hi = q.start - q.start % 60_000, q.end - q.end % 60_000
    return [(g, b) for g, bs in decompose(lo, hi) for b in bs]


def series_plan(q: ReadQuery, oldest_minute: int) -> list[list[Cell]]:
    """plan(q), refused (400) when it has too many periods or needs minute buckets past
    retention; the period count is bounded before any period is built."""
    shortest = (
        FIXED_MS.get(q.precision) or {"1d": 23, "1w": 167, "1mo": 671}[q.precision] * 3_600_000
    )
    if (q.end - q.start) // shortest > MAX_SERIES_BUCKETS:
        raise BadRequest(
            f"too many buckets asked for: at most {MAX_SERIES_BUCKETS} per series (use a coarser"
            " precision or a shorter range)",
            code="too_many_buckets",
        )
    cells = plan(q)
    if len(cells) > MAX_SERIES_BUCKETS:
        raise BadRequest(
            f"{len(cells)} buckets asked for; at most {MAX_SERIES_BUCKETS} per series",
            code="too_many_buckets",
        )
    if q.source == "rollups":
        _check_retention(cells, oldest_minute)
    return cells


def _check_retention(cells: Sequence[Sequence[Cell]], oldest_minute: int) -> None:
    if cells and cells[0] and cells[0][0][0] is not Grain.minute and len(cells[0]) == 1:
        if all(len(p) == 1 for p in cells):
            return  # one non-minute bucket per period: nothing to check
    for period in cells:
        for grain, b in period:
            if grain is Grain.minute and b < oldest_minute:
                raise_past_retention(oldest_minute)


_STORED = {g.value: g for g in Grain}
_ONE_CELL = {"1m": Grain.minute, "1h": Grain.hour, "1d": Grain.day}


def plan(q: ReadQuery) -> list[list[Cell]]:
    """The stored buckets composing each output period."""
    grain = _ONE_CELL.get(q.precision)
    if grain is not None and (grain is not Grain.day or q.tz_name == "UTC"):
        if q.start % grain.value == 0:  # every period is one stored bucket
            return [[(grain, b)] for b in range(q.start, q.end, grain.value)]
    out: list[list[Cell]] = []
    for s, e in periods(q.start, q.end, q.precision, q.tz):
        grain = _STORED.get(e - s)
        if grain is not None and s % grain.value == 0:  # the period is one stored bucket
            out.append([(grain, s)])
        else:
            out.append([(g, b) for g, bs in decompose(s - s % 60_000, e - e % 60_000) for b in bs])
    return out


def _need(cells: Sequence[Sequence[Cell]]) -> dict[Grain, list[int]]:
    need: dict[Grain, set[int]] = {}
    for period in cells:
        for g, b in period:
            need.setdefault(g, set()).add(b)
    return {g: sorted(bs) for g, bs in need.items()}


def _value(measure: str, count: int, total: int) -> int | float:
    return count if measure == "count" else total / VALUE_SCALE


def etag_response(request: Request, body: bytes) -> Response:
    """200 with an ETag, or 304 when the caller already holds this exact answer."""
    tag = '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'
    headers = {"ETag": tag, "Cache-Control": "no-cache"}
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(body, 200, headers, media_type="application/json")


_encoder = msgspec.json.Encoder()


async def _authorized(request: Request) -> tuple[AppState, ReadQuery, ProjectKeys]:
    state = app_state(request)
    project = await authorize(
        state, bearer_key(request), scope="read", project=request.path_params["project"]
    )
    now = state.clock.now_ms()
    q = parse_read(
        request.query_params,
        now,
        state.settings.crosstabs,
        oldest_minute=minute_edge(now, state.settings.minute_retention_days),
    )
    return state, q, ProjectKeys(state.settings.key_prefix, project)


class _Cells:
    """count, sum and sketch keys of every stored bucket of one series."""

    def __init__(self, values: BucketValues, need: dict[Grain, list[int]]) -> None:
        self.values = values
        self.at: dict[Cell, tuple[int, int]] = {}
        for p, (grain, buckets) in enumerate(need.items()):
            for i, b in enumerate(buckets):
                self.at[(grain, b)] = (p, i)

    def count(self, cells: Sequence[Cell]) -> int:
        return sum(self.values.counts[p][i] for p, i in map(self.at.__getitem__, cells))

    def sum(self, cells: Sequence[Cell]) -> int:
        return sum(self.values.sums[p][i] for p, i in map(self.at.__getitem__, cells))

    def hlls(self, cells: Sequence[Cell]) -> list[str]:
        return [k for p, i in map(self.at.__getitem__, cells) for k in self.values.hll_keys[p][i]]


async def _read_cells(
    state: AppState, keys: ProjectKeys, q: ReadQuery, name: str, cells: list[list[Cell]]
) -> _Cells:
    """Every stored bucket the periods need, for one name, merged as of now."""
    need = _need(cells)
    values = await read_buckets(
        state.pool,
        state.redis,
        state.scripts,
        keys,
        name,
        q.rollup,
        q.values,
        list(need.items()),
        uniques=q.measure == "uniques",
    )
    return _Cells(values, need)


async def _values(
    state: AppState, q: ReadQuery, c: _Cells, cells: list[list[Cell]]
) -> tuple[list[int | float], int | float]:
    """Per-period values and the whole-range value (uniques: unions, never sums)."""
    if q.measure == "uniques":
        groups = [c.hlls(p) for p in cells]
        union = [k for g in groups for k in g]
        counted = await count_uniques(state.redis, c.values, [*groups, union])
        return list(counted[:-1]), counted[-1]
    if all(len(p) == 1 for p in cells):  # one stored bucket per period: no sums to make
        at = c.at
        source = c.values.counts if q.measure == "count" else c.values.sums
        raw = [source[pi][i] for pi, i in (at[p[0]] for p in cells)]
        fast: list[int | float] = (
            list(raw) if q.measure == "count" else [v / VALUE_SCALE for v in raw]
        )
        return fast, (sum(raw) if q.measure == "count" else sum(raw) / VALUE_SCALE)
    series = [_value(q.measure, c.count(p), c.sum(p)) for p in cells]
    everything = [cell for p in cells for cell in p]
    return series, _value(q.measure, c.count(everything), c.sum(everything))


async def _one_series(
    state: AppState, keys: ProjectKeys, q: ReadQuery, name: str, cells: list[list[Cell]]
) -> tuple[list[int | float], int | float]:
    """Per-period values and the whole-range value of one name (no breakdown)."""
    return await _values(state, q, await _read_cells(state, keys, q, name, cells), cells)


async def _ranked_series(
    state: AppState, keys: ProjectKeys, q: ReadQuery, name: str, cells: list[list[Cell]]
) -> list[NamedSeries]:
    """Breakdown by count or sum: ranked in Postgres, only the top tuples' rows read."""
    filters = dict(q.filters)
    ranked = await read_ranked(
        state.pool,
        state.redis,
        state.scripts,
        keys,
        name,
        q.rollup,
        filters,
        _need(cells),
        by_sum=q.measure == "sum",
        limit=q.limit,
    )
    group_pos = [q.rollup.index(d) for d in q.group_by]
    everything = [cell for p in cells for cell in p]

    def series_of(t: TupleCells) -> list[int | float]:
        return [
            _value(q.measure, sum(t.counts.get(x, 0) for x in p), sum(t.sums.get(x, 0) for x in p))
            for p in cells
        ]

    def whole(t: TupleCells) -> int | float:
        return _value(
            q.measure,
            sum(t.counts.get(x, 0) for x in everything),
            sum(t.sums.get(x, 0) for x in everything),
        )

    out: list[NamedSeries] = []
    rest = TupleCells(dict(ranked.all_tuples.counts), dict(ranked.all_tuples.sums))
    for values, t in ranked.top:
        dims = {d: values[pos] for d, pos in zip(q.group_by, group_pos, strict=True)}
        out.append(NamedSeries(name, {**filters, **dims}, whole(t), _points(q, series_of(t))))
        for c, v in t.counts.items():
            rest.counts[c] = rest.counts.get(c, 0) - v
        for c, v in t.sums.items():
            rest.sums[c] = rest.sums.get(c, 0) - v
    other_dims = {**filters, **{d: OTHER for d in q.group_by}}
    out.append(NamedSeries(name, other_dims, whole(rest), _points(q, series_of(rest))))
    return out


async def _breakdown_series(
    state: AppState, keys: ProjectKeys, q: ReadQuery, name: str, cells: list[list[Cell]]
) -> list[NamedSeries]:
    """Top `limit` dims tuples by the measure over the range, then __other__."""
    need = _need(cells)
    uniques = q.measure == "uniques"
    filters = dict(q.filters)
    if not uniques:
        return await _ranked_series(state, keys, q, name, cells)
    bd: Breakdown = await read_breakdown(
        state.pool, state.redis, state.scripts, keys, name, q.rollup, filters, need, uniques=uniques
    )
    everything = [cell for p in cells for cell in p]
    items = list(bd.tuples.items())

    def cell_keys(t: TupleCells, cs: Sequence[Cell]) -> list[str]:
        return [k for cell in cs for k in t.hlls.get(cell, [])]

    totals: list[int | float]
    if uniques:
        totals = list(
            await count_uniques(
                state.redis, _blobs(bd), [cell_keys(t, everything) for _, t in items]
            )
            if items
            else []
        )
    else:
        totals = [
            _value(
                q.measure,
                sum(t.counts.get(x, 0) for x in everything),
                sum(t.sums.get(x, 0) for x in everything),
            )
            for _, t in items
        ]
    ranked = sorted(range(len(items)), key=lambda i: (-totals[i], items[i][0]))
    top, rest = ranked[: q.limit], ranked[q.limit :]
    group_pos = [q.rollup.index(d) for d in q.group_by]
    out: list[NamedSeries] = []
    data: list[int | float]
    other_data: list[int | float]
    if uniques:
        groups: list[list[str]] = []
        for i in top:
            groups.extend(cell_keys(items[i][1], p) for p in cells)
        for p in cells:
            groups.append([k for i in rest for k in cell_keys(items[i][1], p)])
        groups.append([k for i in rest for k in cell_keys(items[i][1], everything)])
        counted: list[int | float] = list(await count_uniques(state.redis, _blobs(bd), groups))
        n = len(cells)
        for j, i in enumerate(top):
            dims = {d: items[i][0][pos] for d, pos in zip(q.group_by, group_pos, strict=True)}
            data = counted[j * n : (j + 1) * n]
            out.append(NamedSeries(name, {**filters, **dims}, totals[i], _points(q, data)))
        other_data = counted[len(top) * n : len(top) * n + n]
        other_total: int | float = counted[-1]
    else:
        for i in top:
            t = items[i][1]
            dims = {d: items[i][0][pos] for d, pos in zip(q.group_by, group_pos, strict=True)}
            data = [
                _value(
                    q.measure, sum(t.counts.get(x, 0) for x in p), sum(t.sums.get(x, 0) for x in p)
                )
                for p in cells
            ]
            out.append(NamedSeries(name, {**filters, **dims}, totals[i], _points(q, data)))
        rest_t = [items[i][1] for i in rest]
        other_data = [
            _value(
                q.measure,
                sum(t.counts.get(x, 0) for t in rest_t for x in p),
                sum(t.sums.get(x, 0) for t in rest_t for x in p),
            )
            for p in cells
        ]
        other_total = _value(
            q.measure,
            sum(t.counts.get(x, 0) for t in rest_t for x in everything),
            sum(t.sums.get(x, 0) for t in rest_t for x in everything),
        )
    other_dims = {**filters, **{d: OTHER for d in q.group_by}}
    out.append(NamedSeries(name, other_dims, other_total, _points(q, list(other_data))))
    return out


async def _raw_series(
    state: AppState, keys: ProjectKeys, q: ReadQuery, name: str
) -> list[NamedSeries]:
    """The same answers from the raw log: one series, or the top tuples and __other__."""
    spans = periods(q.start, q.end, q.precision, q.tz)
    filters = dict(q.filters)
    uniques = q.measure == "uniques"
    groups = await read_raw(
        state.pool, state.redis, keys, name, spans, filters, q.group_by, uniques=uniques
    )
    if not q.group_by:
        groups.setdefault((), [Acc() for _ in spans])

    def measure(accs: Sequence[Acc]) -> int | float:
        if uniques:
            return len(set().union(*(a.uids or set() for a in accs)))
        return _value(q.measure, sum(a.count for a in accs), sum(a.sum_micros for a in accs))

    def series_of(per_group: Sequence[Sequence[Acc]]) -> list[int | float]:
        return [measure([accs[i] for accs in per_group]) for i in range(len(spans))]

    if not q.group_by:
        accs = groups[()]
        return [NamedSeries(name, filters, measure(accs), _points(q, series_of([accs])))]
    items = sorted(groups.items(), key=lambda kv: (-measure(kv[1]), kv[0]))
    top, rest = items[: q.limit], items[q.limit :]
    out = [
        NamedSeries(
            name,
            {**filters, **dict(zip(q.group_by, g, strict=True))},
            measure(accs),
            _points(q, series_of([accs])),
        )
        for g, accs in top
    ]
    rest_accs = [accs for _, accs in rest]
    out.append(
        NamedSeries(
            name,
            {**filters, **{d: OTHER for d in q.group_by}},
            measure([a for accs in rest_accs for a in accs]),
            _points(q, series_of(rest_accs)),
        )
    )
    return out


def _blobs(bd: Breakdown) -> BucketValues:
    return BucketValues([], [], [], bd.tmp_blobs)


def _points(q: ReadQuery, data: Sequence[int | float]) -> list[Point]:
    tz = q.tz
    size = FIXED_MS.get(q.precision)
    starts: Sequence[int] = (
        range(q.start, q.end, size)
        if size is not None
        else [s for s, _ in periods(q.start, q.end, q.precision, tz)]
    )
    if tz.key == "UTC":
        return [Point(format_ts(s), v) for s, v in zip(starts, data, strict=True)]
    return [Point(label(s, tz), v) for s, v in zip(starts, data, strict=True)]


def _grain_label(q: ReadQuery) -> str:
    return q.alias or {v: k for k, v in GRAIN_ALIASES.items()}.get(q.precision, q.precision)


async def series(request: Request) -> Response:
    """Zero-padded values per period; with group_by, the top tuples and __other__."""
    state, q, keys = await _authorized(request)
    cells = series_plan(q, minute_edge(state.clock.now_ms(), state.settings.minute_retention_days))
    tz = q.tz
    out: list[NamedSeries] = []
    for name in q.names:
        if q.source == "raw":
            out.extend(await _raw_series(state, keys, q, name))
        elif q.group_by:
            out.extend(await _breakdown_series(state, keys, q, name, cells))
        else:
            data, whole = await _one_series(state, keys, q, name, cells)
            out.append(NamedSeries(name, dict(q.filters), whole, _points(q, data)))
    start, end = label(q.start, tz), label(q.end, tz)
    reply: msgspec.Struct
    if len(q.names) == 1 and not q.group_by:
        reply = SeriesReply(
            q.name,
            q.measure,
            _grain_label(q),
            q.precision,
            q.tz_name,
            start,
            end,
            q.source,
            out[0].data,
        )
    else:
        reply = MultiSeriesReply(q.measure, q.precision, q.tz_name, start, end, q.source, out)
    return etag_response(request, _encoder.encode(reply))


async def total(request: Request) -> Response:
    """One value over the whole range; uniques are the union of every bucket's sketch."""
    state, q, keys = await _authorized(request)
    if q.group_by:
        raise BadRequest(
            "group_by: total answers one value; ask series for a breakdown",
            code="bad_parameter",
        )
    values: list[NamedTotal] = []
    if q.source == "raw":
        for name in q.names:
            values.append(NamedTotal(name, (await _raw_series(state, keys, q, name))[0].total))
    else:
        whole = [_whole(q)]
        for name in q.names:
            _, value = await _one_series(state, keys, q, name, whole)
            values.append(NamedTotal(name, value))
    tz = q.tz
    reply: msgspec.Struct
    if len(values) == 1:
        reply = TotalReply(q.name, q.measure, label(q.start, tz), label(q.end, tz), values[0].value)
    else:
        reply = MultiTotalReply(q.measure, label(q.start, tz), label(q.end, tz), values)
    return etag_response(request, _encoder.encode(reply))


class ProjectSeries(msgspec.Struct):
    project: str
    name: str
    total: int | float
    data: list[Point]


class UnionSeries(msgspec.Struct):
    name: str
    total: int | float
    data: list[Point]


class ProjectsReply(msgspec.Struct, rename={"from_": "from"}):
    measure: str
    precision: str
    tz: str
    from_: str
    to: str
    source: str
    projects: list[str]
    series: list[ProjectSeries]
    union: list[UnionSeries]


MAX_PROJECTS = 20


async def _union_uniques(
    state: AppState, per_project: list[tuple[ProjectKeys, _Cells]], cells: list[list[Cell]]
) -> tuple[list[int], int]:
    """Uniques of the union across projects: every sketch is copied into scratch keys in
    one slot (projects live in different Redis Cluster slots), then counted together."""
    home = per_project[0][0]
    blobs: dict[str, bytes] = {}
    renamed: dict[tuple[int, str], str] = {}
    try:
        for n, (_, c) in enumerate(per_project):
            resident = sorted({k for p in cells for k in c.hlls(p) if k not in c.values.tmp_blobs})
            fetched = cast(list[bytes | None], await state.redis.mget(resident) if resident else [])
            found = dict(zip(resident, fetched, strict=True))
            found.update(c.values.tmp_blobs)
            for k, blob in found.items():
                if blob is not None:
                    new = home.tmp(uuid.uuid4().hex)
                    blobs[new] = blob
                    renamed[(n, k)] = new
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    groups = [
        [
            renamed[(n, k)]
            for n, (_, c) in enumerate(per_project)
            for k in c.hlls(p)
            if (n, k) in renamed
        ]
        for p in cells
    ]
    union = [k for g in groups for k in g]
    counted = await count_uniques(state.redis, BucketValues([], [], [], blobs), [*groups, union])
    return list(counted[:-1]), counted[-1]


async def projects_series(request: Request) -> Response:
    """GET /v1/series?project=a&project=b&...: one series per project plus their union
    (uniques merged across projects, never summed)."""
    state = app_state(request)
    projects = list(dict.fromkeys(request.query_params.getlist("project")))
    if not projects:
        raise BadRequest("project is required (repeat it for several)", code="bad_parameter")
    if len(projects) > MAX_PROJECTS:
        raise BadRequest(f"at most {MAX_PROJECTS} projects per request", code="bad_parameter")
    key = bearer_key(request)
    for project in projects:
        await authorize(state, key, scope="read", project=project)
    now = state.clock.now_ms()
    q = parse_read(
        request.query_params,
        now,
        state.settings.crosstabs,
        oldest_minute=minute_edge(now, state.settings.minute_retention_days),
    )
    if q.group_by or q.source == "raw":
        raise BadRequest(
            "across projects, reads take filters that a rollup covers and no group_by",
            code="bad_parameter",
        )
    cells = series_plan(q, minute_edge(state.clock.now_ms(), state.settings.minute_retention_days))
    series: list[ProjectSeries] = []
    union: list[UnionSeries] = []
    for name in q.names:
        per_project: list[tuple[ProjectKeys, _Cells]] = []
        sums: list[int | float] = [0] * len(cells)
        whole: int | float = 0
        for project in projects:
            keys = ProjectKeys(state.settings.key_prefix, project)
            c = await _read_cells(state, keys, q, name, cells)
            if q.measure == "uniques":
                per_project.append((keys, c))
            data, total_value = await _values(state, q, c, cells)
            series.append(ProjectSeries(project, name, total_value, _points(q, data)))
            if q.measure != "uniques":
                sums = [a + b for a, b in zip(sums, data, strict=True)]
                whole += total_value
        if q.measure == "uniques":
            counted, union_total = await _union_uniques(state, per_project, cells)
            union.append(UnionSeries(name, union_total, _points(q, list(counted))))
        else:
            union.append(UnionSeries(name, whole, _points(q, sums)))
    tz = q.tz
    reply = ProjectsReply(
        q.measure,
        q.precision,
        q.tz_name,
        label(q.start, tz),
        label(q.end, tz),
        "rollups",
        projects,
        series,
        union,
    )
    return etag_response(request, _encoder.encode(reply))
