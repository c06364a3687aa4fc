"""Read parameters -> a frozen ReadQuery: each parameter checked by its own small validator,
a 400 naming the first bad one."""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Collection, Mapping
from zoneinfo import ZoneInfo

import msgspec

from counters.core.buckets import GRAIN_BY_NAME, Grain, parse_ts
from counters.core.errors import BadRequest
from counters.core.measures import MEASURES
from counters.core.models import DIM_NAME_PATTERN, DIM_VALUE_PATTERN, NAME_PATTERN
from counters.core.periods import (
    GRAIN_ALIASES,
    PRECISIONS,
    canonical_precision,
    ceil,
    floor,
    periods_back,
    zone,
)
from counters.core.rollups import Rollup, is_stored, rollup_for_filters
from counters.engines.read.plan import check_range_retention

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
    "format",
    "compare",
}
FILTER_PREFIX = "d."
"""`d.<dim>=<value>`: a dim filter in the explicit form, taken even for a dim never seen."""
MIN_EPOCH_MS = 10**11
"""A `from`/`to` number below this (1973-03-03 in ms) is taken for epoch seconds: refused."""
MAX_NAMES = 20
DEFAULT_BUCKETS = 30
DEFAULT_LIMIT = 10
MAX_LIMIT = 1_000
MAX_FILTER_BYTES = 256
MAX_GROUP_BY = 3
"""Dims one breakdown may group by (each more multiplies the tuples a read must rank)."""
MAX_FILTERS = 8
"""Dim filters one read may carry."""
MAX_FILTER_VALUES = 20
"""Values one dim filter may list (`source=google&source=bing`: any of them)."""
MAX_FILTER_COMBINATIONS = 64
"""Product of the filters' value counts: each combination is one rollup field a read adds up."""
MIN_TS = 0
"""1970-01-01T00:00:00Z: the earliest `from`/`to` a read takes."""
MAX_TS = 253_402_300_799_999
"""9999-12-31T23:59:59.999Z: the latest `from`/`to` a read takes (datetime's own limit)."""
_name_re = re.compile(NAME_PATTERN)
_dim_re = re.compile(DIM_NAME_PATTERN)
_value_re = re.compile(DIM_VALUE_PATTERN)
_GRAIN_OF_PRECISION = {p: GRAIN_BY_NAME[g] for g, p in GRAIN_ALIASES.items()}


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
    """Where the answer comes from: "rollups", or "raw" when no rollup covers the dims (for a
    breakdown, also when the filters' own rollup, which `__none__` needs, is not stored)."""
    any_of: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """Dims filtered on several values (a repeated filter: any of them, SQL `IN`), sorted;
    `filters` holds the dims filtered on one value. A dim is in one of the two, never both."""
    compare: str | None = None
    """previous_period or previous_year: the reply adds the same read of that range."""

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
        return _GRAIN_OF_PRECISION.get(self.precision) if self.tz_name == "UTC" else None

    @property
    def values(self) -> tuple[str, ...]:
        """Filter values in rollup order (when there is no breakdown and no any-of filter)."""
        f = dict(self.filters)
        return tuple(f[d] for d in self.rollup)

    @property
    def filter_sets(self) -> dict[str, tuple[str, ...]]:
        """Every filtered dim and the values it may take (one, or several for any-of)."""
        return {**{d: (v,) for d, v in self.filters}, **dict(self.any_of)}

    @property
    def reply_dims(self) -> dict[str, str | list[str]]:
        """The filters as a reply shows them: a value, or the list of any-of values."""
        return {**dict(self.filters), **{d: list(vs) for d, vs in self.any_of}}

    def expand(self) -> list[ReadQuery]:
        """One query per combination of any-of values (each with one value per filtered dim),
        whose answers add up (counts, sums) or unite (sketches) to this query's; [self] when
        no filter has several values."""
        if not self.any_of:
            return [self]
        dims = [d for d, _ in self.any_of]
        return [
            msgspec.structs.replace(
                self,
                filters=tuple(sorted([*self.filters, *zip(dims, combo, strict=True)])),
                any_of=(),
            )
            for combo in itertools.product(*(vs for _, vs in self.any_of))
        ]


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_parameter")


def _bool(text: str, param: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise _bad(f"{param} must be true or false")


def parse_names(params: Mapping[str, str]) -> tuple[str, ...]:
    """The distinct names asked for (repeatable `name`), 1..MAX_NAMES, each valid."""
    getlist = getattr(params, "getlist", None)
    names = getlist("name") if getlist is not None else [params.get("name")]
    found = tuple(dict.fromkeys(n for n in names if n))
    if not found:
        raise _bad("name is required (e.g. name=click)")
    if len(found) > MAX_NAMES:
        raise _bad(f"at most {MAX_NAMES} names per request")
    for n in found:
        if not _name_re.match(n):
            raise _bad(f"name must match {NAME_PATTERN}")
    return found


def parse_measure(params: Mapping[str, str]) -> str:
    """count (default), sum or uniques."""
    measure = params.get("measure", "count")
    if measure not in MEASURES:
        raise _bad(f"measure must be one of {', '.join(MEASURES)}")
    return measure


def parse_precision(params: Mapping[str, str]) -> tuple[str, str | None]:
    """(precision, grain alias used): `grain` is an alias of 1m/1h/1d; default 1h."""
    alias = params.get("grain")
    if alias is not None and alias not in GRAIN_ALIASES:
        raise _bad("grain must be minute, hour or day")
    precision = params.get("precision")
    if precision is None:
        return GRAIN_ALIASES["hour" if alias is None else alias], alias
    canonical = canonical_precision(precision)
    if canonical is None:
        raise _bad(
            f"precision must be a whole number of minutes dividing the day (e.g. 1m, 2m, 10m,"
            f" 30m, 1h, 2h, 12h) or 1d, 1w, 1mo (canonical: {', '.join(PRECISIONS)})"
        )
    precision = canonical
    if alias is not None and GRAIN_ALIASES[alias] != precision:
        raise _bad(f"grain={alias} and precision={precision} disagree (grain is an alias)")
    return precision, alias


FORMATS = ("json", "long", "csv")
"""Reply formats of a read: the JSON reply, long rows (one object per point), CSV rows."""


def parse_format(params: Mapping[str, str], accept: str | None = None) -> str:
    """The reply format: `format` if given (json, long or csv), else csv when the Accept
    header asks for text/csv, else json."""
    fmt = params.get("format")
    if fmt is None:
        accepted = [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]
        return "csv" if "text/csv" in accepted else "json"
    if fmt not in FORMATS:
        raise _bad(f"format must be one of {', '.join(FORMATS)}")
    return fmt


def parse_zone(params: Mapping[str, str]) -> ZoneInfo:
    """The IANA zone of `tz` (UTC by default)."""
    try:
        return zone(params.get("tz"))
    except ValueError as exc:
        raise _bad(str(exc)) from exc


def parse_range(
    params: Mapping[str, str], now_ms: int, precision: str, tz: ZoneInfo
) -> tuple[int, int]:
    """The period-aligned [start, end): `to` rounded up and capped at the current period
    (or the next one with excluding_current=false), `from` rounded down, by default
    DEFAULT_BUCKETS periods back from the end."""
    excluding_current = _bool(params.get("excluding_current", "true"), "excluding_current")
    limit = floor(now_ms, precision, tz) if excluding_current else ceil(now_ms + 1, precision, tz)
    raw_end = _bounded_ts(params, "to")
    raw_start = _bounded_ts(params, "from")
    if raw_start is not None and raw_end is not None and raw_start > raw_end:
        raise _bad("from must be before to")
    # cap before rounding: rounding a far-future `to` up could leave datetime's range
    end = limit if raw_end is None else ceil(min(raw_end, limit), precision, tz)
    if raw_start is None:
        return periods_back(end, DEFAULT_BUCKETS, precision, tz), end
    start = floor(raw_start, precision, tz)
    if start > end:
        raise _bad(
            "from is after the last bucket that can be read (to stops at the current bucket)"
        )
    return start, end


def _bounded_ts(params: Mapping[str, str], param: str) -> int | None:
    """The epoch ms of `from` or `to` (None when absent), refused (400) outside 1970..9999
    before any date arithmetic can overflow."""
    if param not in params:
        return None
    text = params[param]
    try:
        ts = parse_ts(text)
    except ValueError as exc:
        raise _bad(f"from/to: {param}: {exc}") from exc
    if text.strip().isdigit() and ts < MIN_EPOCH_MS:
        raise _bad(f"{param}={text} looks like epoch seconds; send milliseconds or RFC 3339")
    if not MIN_TS <= ts <= MAX_TS:
        raise _bad(
            f"{param} must be between 1970-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z"
            f" (epoch ms {MIN_TS}..{MAX_TS})"
        )
    return ts


def _all_items(params: Mapping[str, str]) -> list[tuple[str, str]]:
    multi = getattr(params, "multi_items", None)
    return list(multi()) if multi is not None else list(params.items())


def filter_dim(key: str) -> tuple[str, bool]:
    """(dim, explicit) of a filter parameter: `d.<dim>` and OpenAPI's deepObject
    `d[<dim>]` are explicit; a bare `<dim>` is not."""
    if key.startswith(FILTER_PREFIX):
        return key[len(FILTER_PREFIX) :], True
    if key.startswith("d[") and key.endswith("]"):
        return key[2:-1], True
    return key, False


def parse_filters(
    params: Mapping[str, str], known_dims: Collection[str] | None = None
) -> dict[str, tuple[str, ...]]:
    """Every non-reserved parameter is a dim filter: `d.<dim>=v` always, a bare `<dim>=v`
    only for a dim in known_dims (the project's catalog; None takes any), else 400
    `unknown parameter`; a valid dim name, 1..256 byte values. A repeated dim means any of
    its values (distinct, in order): at most MAX_FILTER_VALUES per dim, MAX_FILTERS dims
    and MAX_FILTER_COMBINATIONS combinations of values."""
    filters: dict[str, list[str]] = {}
    for key, value in _all_items(params):
        if key in RESERVED:
            continue
        dim, explicit = filter_dim(key)
        if not _dim_re.match(dim):
            raise _bad(f"unknown parameter {key!r} (dimension names match {DIM_NAME_PATTERN})")
        if not explicit and known_dims is not None and dim not in known_dims:
            raise _bad(
                f"unknown parameter {key!r}: neither a read parameter nor a dimension this"
                f" project has seen (filter on a new dim with d.{dim}=...)"
            )
        if not _value_re.match(value) or len(value.encode()) > MAX_FILTER_BYTES:
            raise _bad(f"filter {dim} must be 1..256 bytes without control characters")
        if dim in filters:
            if value not in filters[dim]:
                if len(filters[dim]) == MAX_FILTER_VALUES:
                    raise _bad(f"filter {dim}: at most {MAX_FILTER_VALUES} values (any of them)")
                filters[dim].append(value)
            continue
        if len(filters) == MAX_FILTERS:
            raise _bad(
                f"at most {MAX_FILTERS} dim filters per read (got more, e.g. {key!r}):"
                " filter on fewer dims"
            )
        filters[dim] = [value]
    combinations = math.prod(len(vs) for vs in filters.values())
    if combinations > MAX_FILTER_COMBINATIONS:
        raise _bad(
            f"filters: {combinations} combinations of values (each repeated filter multiplies"
            f" them); at most {MAX_FILTER_COMBINATIONS}"
        )
    return {d: tuple(vs) for d, vs in filters.items()}


def parse_group_by(params: Mapping[str, str], filters: Collection[str]) -> tuple[str, ...]:
    """The comma-separated breakdown dims (distinct, in order, at most MAX_GROUP_BY), none
    of them filtered on; refused before any of them reaches a query."""
    group_by = tuple(dict.fromkeys(d for d in (params.get("group_by") or "").split(",") if d))
    if len(group_by) > MAX_GROUP_BY:
        raise _bad(f"group_by: at most {MAX_GROUP_BY} dims (got {len(group_by)})")
    for d in group_by:
        if not _dim_re.match(d):
            raise _bad(f"group_by: {d!r} is not a dimension name")
        if d in filters:
            raise _bad(f"group_by: {d} is also filtered on")
    return group_by


def parse_limit(params: Mapping[str, str]) -> int:
    """Top N tuples of a breakdown: 1..MAX_LIMIT, DEFAULT_LIMIT by default."""
    try:
        top = int(params.get("limit", DEFAULT_LIMIT))
    except ValueError as exc:
        raise _bad("limit must be a whole number") from exc
    if not 1 <= top <= MAX_LIMIT:
        raise _bad(f"limit must be 1..{MAX_LIMIT}")
    return top


COMPARES = ("previous_period", "previous_year")
"""What `compare` may ask for: the range just before, or the same range a year earlier."""


def parse_compare(params: Mapping[str, str], group_by: tuple[str, ...]) -> str | None:
    """The comparison asked for (None when none): one of COMPARES, never with group_by."""
    compare = params.get("compare")
    if compare is None:
        return None
    if compare not in COMPARES:
        raise _bad(f"compare must be one of {', '.join(COMPARES)}")
    if group_by:
        raise _bad("compare: not with group_by")
    return compare


def parse_read(
    params: Mapping[str, str],
    now_ms: int,
    crosstabs: tuple[Rollup, ...],
    *,
    oldest_minute: int | None = None,
    known_dims: Collection[str] | None = None,
) -> ReadQuery:
    """Validates read parameters; 400 naming the first bad one (minute buckets before
    oldest_minute are past retention; a bare parameter that is no read parameter and not
    in known_dims is unknown)."""
    names = parse_names(params)
    measure = parse_measure(params)
    precision, alias = parse_precision(params)
    tz = parse_zone(params)
    start, end = parse_range(params, now_ms, precision, tz)
    filters = parse_filters(params, known_dims)
    group_by = parse_group_by(params, filters)
    top = parse_limit(params)
    compare = parse_compare(params, group_by)
    rollup = rollup_for_filters([*filters, *group_by])
    # a breakdown's __none__ needs the filters' own rollup too (what the tuples add up to)
    stored = is_stored(rollup, crosstabs) and is_stored(rollup_for_filters(filters), crosstabs)
    source = "rollups" if stored else "raw"
    q = ReadQuery(
        names,
        measure,
        precision,
        tz.key,
        start,
        end,
        tuple(sorted((d, vs[0]) for d, vs in filters.items() if len(vs) == 1)),
        group_by,
        top,
        rollup,
        alias,
        source,
        tuple(sorted((d, vs) for d, vs in filters.items() if len(vs) > 1)),
        compare=compare,
    )
    if oldest_minute is not None and source == "rollups":
        check_range_retention(q, oldest_minute)
    return q
