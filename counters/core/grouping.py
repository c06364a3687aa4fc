"""Grouping a batch of events into per-bucket field totals, and rolling minutes up.

The one statement in Python of how events become counts, sums and uniques per
(grain, bucket, field):

    group_minutes(events)  -> per minute: count, sum (micros) and uids of every field
    roll_up(minutes)       -> the same totals at every grain: a minute as it is, an hour or a
                              day as the sum of the minutes in it (bucket_start)

Live ingest sends the minutes to lua/ingest.lua, and lua/seal.lua merges each sealed minute
into its hour and day in Redis; the property test in tests/test_grouping_redis.py runs both
(and lua/read_hot.lua) on random batches against roll_up. Rebuild recomputes the same rows
from the raw log column at a time (counters/engines/recompute.py, the same rules over Arrow
arrays); tests/test_rebuild_columnar.py holds it to what live ingest built (invariant 3).
Also here: what live ingest plans before its script call (plan_batch), dedupe inside one
batch and folding over-cap dim values into OTHER.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, NamedTuple

import msgspec

from counters.core.buckets import DAY_MS, GRAINS, MINUTE_MS, Grain, bucket_start
from counters.core.models import RawEvent
from counters.core.rollups import OTHER, Rollup, fields_for, single_dim_values

MinuteGroup = list[Any]
"""lua/ingest.lua's group: [minute start (str), field, count, sum in micros (str), uids]."""
LateCell = list[Any]
"""lua/ingest.lua's late cell: [grain (m, h or d), bucket start (str), field, count, sum in
micros (str), uids]: the totals of a batch's sealed minutes in one (grain, bucket, field)."""


class Totals:
    """Counts, sums (micros) and uids per rollup field, for one bucket. A field missing from
    sums has sum 0; one missing from uids has no uid."""

    __slots__ = ("counts", "sums", "uids")

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.sums: dict[str, int] = {}
        self.uids: dict[str, set[str]] = {}

    def add(self, other: Totals) -> None:
        """Adds other's counts and sums and unites its uids into these (other unchanged)."""
        self.counts.update(other.counts)
        sums = self.sums
        for f, s in other.sums.items():
            sums[f] = sums.get(f, 0) + s
        uids = self.uids
        for f, u in other.uids.items():
            known = uids.get(f)
            if known is None:
                uids[f] = set(u)
            else:
                known |= u


Buckets = dict[int, Totals]
"""Bucket start (epoch ms) -> the totals of that bucket."""


class Cell(NamedTuple):
    """The totals of one field in one (grain, bucket)."""

    grain: Grain
    bucket: int
    field: str
    events: int
    """How many events the field counts (its count)."""
    sum_micros: int
    uids: set[str]


def group_minutes(events: Iterable[RawEvent], crosstabs: Sequence[Rollup]) -> Buckets:
    """Per minute bucket the events fall in: the count, sum and uids of every field each
    event contributes to (fields_for). Applying these equals applying every event."""
    out: Buckets = {}
    size = MINUTE_MS  # bucket_start(ts, Grain.minute) inlined, with a local: runs per event
    for ev in events:
        ts = ev.ts
        minute = ts - ts % size
        acc = out.get(minute)
        if acc is None:
            acc = out[minute] = Totals()
        fields = fields_for(ev.name, ev.dims, crosstabs)
        acc.counts.update(fields)
        value = ev.value
        if value:
            sums = acc.sums
            for f in fields:
                sums[f] = sums.get(f, 0) + value
        uid = ev.uid
        if uid is not None:
            uids = acc.uids
            for f in fields:
                known = uids.get(f)
                if known is None:
                    uids[f] = {uid}
                else:
                    known.add(uid)
    return out


class RollUp:
    """The totals of one batch at every grain, from its minutes. Hours and days are
    computed on first use (live ingest needs only the minutes and the days' field names)."""

    __slots__ = ("minutes", "_buckets", "_fields")

    def __init__(self, minutes: Buckets) -> None:
        self.minutes = minutes
        self._buckets: dict[Grain, Buckets] = {Grain.minute: minutes}
        self._fields: dict[Grain, dict[int, AbstractSet[str]]] = {}

    def buckets(self, grain: Grain) -> Mapping[int, Totals]:
        """Per bucket of this grain: the sum of the minutes whose bucket_start it is.
        For the minute grain these are the minutes themselves (not copied)."""
        known = self._buckets.get(grain)
        if known is None:
            known = self._buckets[grain] = {}
            for minute, totals in self.minutes.items():
                bucket = bucket_start(minute, grain)
                acc = known.get(bucket)
                if acc is None:
                    acc = known[bucket] = Totals()
                acc.add(totals)
        return known

    def fields(self, grain: Grain) -> Mapping[int, AbstractSet[str]]:
        """Per bucket of this grain: the fields it holds (cheaper than buckets(grain))."""
        known = self._fields.get(grain)
        if known is None:
            known = self._fields[grain] = {}
            for minute, totals in self.minutes.items():
                bucket = bucket_start(minute, grain)
                names = known.get(bucket)
                if names is None:
                    known[bucket] = totals.counts.keys()  # a view: most days hold one minute
                else:
                    if not isinstance(names, set):
                        names = known[bucket] = set(names)
                    names.update(totals.counts)
        return known

    def cells(self, grains: Iterable[Grain] = GRAINS) -> Iterator[Cell]:
        """One Cell per (grain, bucket, field) the batch touches, for these grains."""
        for grain in grains:
            for bucket, totals in self.buckets(grain).items():
                sums = totals.sums
                uids = totals.uids
                for f, n in totals.counts.items():
                    yield Cell(grain, bucket, f, n, sums.get(f, 0), uids.get(f) or set())


def roll_up(minutes: Buckets) -> RollUp:
    """The per-(grain, bucket, field) totals of these per-minute totals: a minute as it is;
    an hour and a day the sum of counts and sums and the union of uids of the minutes in it
    (bucket_start). lua/seal.lua merging sealed minutes into hours and days gives the same."""
    return RollUp(minutes)


class Plan(NamedTuple):
    """What lua/ingest.lua takes for one batch."""

    groups: list[MinuteGroup]
    """One per (minute, field): the minute grain of the batch's roll_up."""
    dim_values: list[list[str]]
    """Every distinct [dim, day start (str), value] of the batch other than OTHER, sorted;
    empty unless asked for (the dim cardinality cap is on)."""
    names: list[list[str]] = []
    """Every distinct [day start (str), event name], in batch order; empty unless asked for."""
    dim_names: list[list[str]] = []
    """Every distinct [day start (str), dim name], sorted per day; empty unless asked for."""
    uid_entries: int = 0
    """Uids over all groups and late cells (the PFADD arguments the script will pass)."""
    late_cells: list[LateCell] = []
    """One per (grain, bucket, field) of the minutes before plan_batch's late_before."""


def day_names(events: Iterable[RawEvent]) -> tuple[list[list[str]], list[list[str]]]:
    """The distinct [day start (str), event name] pairs in batch order, and the distinct
    [day start (str), dim name] pairs (sorted per day), by the events' UTC days."""
    names: dict[tuple[int, str], None] = {}
    dims: dict[int, set[str]] = {}
    for ev in events:
        ts = ev.ts
        day = ts - ts % DAY_MS
        names[(day, ev.name)] = None
        if ev.dims:
            known = dims.get(day)
            if known is None:
                known = dims[day] = set()
            known.update(ev.dims)
    return (
        [[str(day), name] for day, name in names],
        [[str(day), d] for day, ds in dims.items() for d in sorted(ds)],
    )


def plan_batch(
    events: Iterable[RawEvent],
    crosstabs: Sequence[Rollup],
    *,
    dim_values: bool = True,
    names: bool = False,
    late_before: int = 0,
    minute_from: int = 0,
) -> Plan:
    """The batch's minute groups for lua/ingest.lua and, when dim_values, every distinct
    (dim, UTC day, value) in it, read off the day grain's fields rather than every event;
    when names, the distinct event names and dim names per UTC day (day_names).
    Minutes before late_before (the caller knows them sealed) are not groups but late
    cells, already rolled up per (grain, bucket, field) (late_cells): one cell per hour
    and day however many of the batch's minutes fall in it, and none for a minute before
    minute_from (minute rows older than that are not kept, see minute_retention_days)."""
    if not isinstance(events, list):
        events = list(events)
    minutes = group_minutes(events, crosstabs)
    late_cells: list[LateCell] = []
    uid_entries = 0
    if late_before:
        old = {m: t for m, t in minutes.items() if m < late_before}
        if old:
            for m in old:
                del minutes[m]
            uid_entries = _late_cells(roll_up(old), minute_from, late_cells)
    rolled = roll_up(minutes)
    groups: list[MinuteGroup] = []
    for minute, totals in rolled.minutes.items():
        bucket = str(minute)
        sums = totals.sums
        uids = totals.uids
        for f, n in totals.counts.items():
            u = uids.get(f)
            if u:
                uid_entries += len(u)
            groups.append([bucket, f, n, str(sums.get(f, 0)), list(u) if u else []])
    seen: set[tuple[str, str, str]] = set()
    if dim_values:
        for day, fields in rolled.fields(Grain.day).items():
            day_s = str(day)
            for dim, value in single_dim_values(fields):
                if value != OTHER:
                    seen.add((dim, day_s, value))
        if late_cells:
            for dim, day_s, value in _late_dim_values(late_cells):
                seen.add((dim, day_s, value))
    event_names, dim_names = day_names(events) if names else ([], [])
    return Plan(
        groups, [list(t) for t in sorted(seen)], event_names, dim_names, uid_entries, late_cells
    )


def _late_cells(rolled: RollUp, minute_from: int, out: list[LateCell]) -> int:
    """Appends the late cells of these (sealed) minutes to out; returns their uids."""
    uid_entries = 0
    for grain in GRAINS:
        short = grain.short
        for bucket, totals in rolled.buckets(grain).items():
            if grain is Grain.minute and bucket < minute_from:
                continue
            b = str(bucket)
            sums = totals.sums
            uids = totals.uids
            for f, n in totals.counts.items():
                u = uids.get(f)
                if u:
                    uid_entries += len(u)
                out.append([short, b, f, n, str(sums.get(f, 0)), list(u) if u else []])
    return uid_entries


def _late_dim_values(cells: list[LateCell]) -> set[tuple[str, str, str]]:
    """(dim, day start, value) of every single-dim field of the day cells."""
    out: set[tuple[str, str, str]] = set()
    by_day: dict[str, list[str]] = {}
    for c in cells:
        if c[0] == "d":
            by_day.setdefault(c[1], []).append(c[2])
    for day_s, fields in by_day.items():
        for dim, value in single_dim_values(fields):
            if value != OTHER:
                out.add((dim, day_s, value))
    return out


def first_occurrences(events: list[RawEvent]) -> tuple[list[RawEvent], int]:
    """Drops repeats of an (event name, event id) inside one batch (the first one stays; the
    same id under another name is another event); returns (kept, dropped count)."""
    seen: set[tuple[str, str]] = set()
    kept: list[RawEvent] = []
    for ev in events:
        if ev.id is not None:
            key = (ev.name, ev.id)
            if key in seen:
                continue
            seen.add(key)
        kept.append(ev)
    return kept, len(events) - len(kept)


def fold_over_cap(events: list[RawEvent], over: set[tuple[str, ...]]) -> tuple[list[RawEvent], int]:
    """The events with every dim value listed in over as (dim, day start (str), value)
    replaced by OTHER; and how many events changed."""
    out: list[RawEvent] = []
    folded = 0
    for ev in events:
        day = str(bucket_start(ev.ts, Grain.day))
        dims = {d: (OTHER if (d, day, v) in over else v) for d, v in ev.dims.items()}
        if dims != ev.dims:
            folded += 1
            ev = msgspec.structs.replace(ev, dims=dims)
        out.append(ev)
    return out, folded
