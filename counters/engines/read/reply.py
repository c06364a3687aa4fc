"""The read replies (msgspec structs, the JSON the API sends) and building them from a
query and its values."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Annotated

import msgspec

from counters.core.buckets import format_ts
from counters.core.measures import Measured
from counters.core.periods import FIXED_MS, GRAIN_ALIASES, label, periods, zone
from counters.engines.read.parse import ReadQuery

Value = Measured
"""A count or uniques (int), or an exact sum (Decimal, sent as a JSON number)."""
_ALIAS_OF = {v: k for k, v in GRAIN_ALIASES.items()}


PARTIAL = "true on the bucket still in progress (its period ends after now); absent otherwise"
SERIES_COMPARISON = "With compare only: the same series over the compared range"
TOTAL_COMPARISON = "With compare only: the same total over the compared range"


class Point(msgspec.Struct, gc=False, omit_defaults=True):
    """One labelled value. It holds only a string, a number and a flag, so it can be in no
    reference cycle and the GC need not track it (a 720-point reply would wake it)."""

    bucket: str
    value: Value
    partial: Annotated[bool, msgspec.Meta(description=PARTIAL)] = False
    """True on the bucket still in progress (its period ends after now); left out when
    false, so only that point carries the key."""


class SeriesComparison(msgspec.Struct, rename={"from_": "from"}):
    """The same series over the range `compare` names: its own bucket labels, as many
    points as the series (never partial: that range ended before the series began)."""

    from_: str
    to: str
    data: list[Point]


class TotalComparison(msgspec.Struct, rename={"from_": "from"}):
    """The same total over the range `compare` names."""

    from_: str
    to: str
    value: Value


SeriesComparisonField = Annotated[
    SeriesComparison | None, msgspec.Meta(description=SERIES_COMPARISON)
]
TotalComparisonField = Annotated[TotalComparison | None, msgspec.Meta(description=TOTAL_COMPARISON)]


class SeriesReply(msgspec.Struct, rename={"from_": "from"}, omit_defaults=True):
    name: str
    measure: str
    grain: str
    precision: str
    tz: str
    from_: str
    to: str
    source: str
    data: list[Point]
    comparison: SeriesComparisonField = None
    """With compare only (the key is left out otherwise)."""


DimValues = dict[str, str | list[str]]
"""A series' dims: a value each, or for an any-of filter the list of its values."""


class NamedSeries(msgspec.Struct, omit_defaults=True):
    name: str
    dims: DimValues
    total: Value
    data: list[Point]
    comparison: SeriesComparisonField = None
    """With compare only (the key is left out otherwise)."""


class MultiSeriesReply(msgspec.Struct, rename={"from_": "from"}):
    measure: str
    precision: str
    tz: str
    from_: str
    to: str
    source: str
    series: list[NamedSeries]


class TotalReply(msgspec.Struct, rename={"from_": "from"}, omit_defaults=True):
    name: str
    measure: str
    from_: str
    to: str
    value: Value
    comparison: TotalComparisonField = None
    """With compare only (the key is left out otherwise)."""


class NamedTotal(msgspec.Struct, omit_defaults=True):
    name: str
    value: Value
    comparison: TotalComparisonField = None
    """With compare only (the key is left out otherwise)."""


class UnionTotal(msgspec.Struct, omit_defaults=True):
    """Uniques across every name asked (a uid seen under two names counts once)."""

    value: Value
    comparison: TotalComparisonField = None


class MultiTotalReply(msgspec.Struct, rename={"from_": "from"}, omit_defaults=True):
    measure: str
    from_: str
    to: str
    totals: list[NamedTotal]
    union: UnionTotal | None = None
    """measure=uniques only: the union of every name's sketches (what a "unique visitors"
    headline shows; the per-name values never add up to it)."""


class ProjectSeries(msgspec.Struct):
    project: str
    name: str
    total: Value
    data: list[Point]


class UnionSeries(msgspec.Struct):
    name: str
    total: Value
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


def points(q: ReadQuery, data: Sequence[Value]) -> list[Point]:
    """One labelled point per output period of the query (labels in the query's zone)."""
    names = labels(q.start, q.end, q.precision, q.tz_name)
    if len(names) != len(data):
        raise ValueError(f"{len(data)} values for {len(names)} periods")
    return list(map(Point, names, data))


@functools.lru_cache(maxsize=1024)
def labels(start: int, end: int, precision: str, tz_name: str) -> tuple[str, ...]:
    """The label of each output period of [start, end) at this precision, in the zone
    (memoized: polled dashboards ask the same range again and again)."""
    tz = zone(tz_name)
    size = FIXED_MS.get(precision)
    starts: Sequence[int] = (
        range(start, end, size)
        if size is not None
        else [s for s, _ in periods(start, end, precision, tz)]
    )
    if tz.key == "UTC":
        return tuple(format_ts(s) for s in starts)
    return tuple(label(s, tz) for s in starts)


def grain_label(q: ReadQuery) -> str:
    """The `grain` a single-series reply names: the alias asked for, or the precision's."""
    return q.alias or _ALIAS_OF.get(q.precision, q.precision)


def series_reply(q: ReadQuery, out: list[NamedSeries]) -> SeriesReply | MultiSeriesReply:
    """The single-series shape for one name without breakdown, else the multi-series one."""
    tz = q.tz
    start, end = label(q.start, tz), label(q.end, tz)
    if len(q.names) == 1 and not q.group_by:
        return SeriesReply(
            q.name,
            q.measure,
            grain_label(q),
            q.precision,
            q.tz_name,
            start,
            end,
            q.source,
            out[0].data,
            out[0].comparison,
        )
    return MultiSeriesReply(q.measure, q.precision, q.tz_name, start, end, q.source, out)


def total_reply(
    q: ReadQuery, values: list[NamedTotal], union: UnionTotal | None = None
) -> TotalReply | MultiTotalReply:
    """One value for one name, else one per name (and, for uniques, their union)."""
    tz = q.tz
    start, end = label(q.start, tz), label(q.end, tz)
    if len(values) == 1:
        return TotalReply(q.name, q.measure, start, end, values[0].value, values[0].comparison)
    return MultiTotalReply(q.measure, start, end, values, union)


def mark_partial(series: Sequence[Sequence[Point]], q: ReadQuery, now_ms: int | None) -> None:
    """Flags the last point of each series partial when its period ends after now_ms (only
    the last can: a read's range ends at most at the end of the current period)."""
    if now_ms is None or q.end <= now_ms:
        return
    for data in series:
        if data:
            data[-1].partial = True


def series_comparison(q: ReadQuery, data: list[Point]) -> SeriesComparison:
    """The comparison field of a series: q is the read of the compared range."""
    tz = q.tz
    return SeriesComparison(label(q.start, tz), label(q.end, tz), data)


def total_comparison(q: ReadQuery, value: Value) -> TotalComparison:
    """The comparison field of a total: q is the read of the compared range."""
    tz = q.tz
    return TotalComparison(label(q.start, tz), label(q.end, tz), value)


def projects_reply(
    q: ReadQuery, projects: list[str], series: list[ProjectSeries], union: list[UnionSeries]
) -> ProjectsReply:
    """Per-project series and their union."""
    tz = q.tz
    return ProjectsReply(
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
