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

from counters.core.buckets import DAY_MS, GRAINS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.models import RawEvent
from counters.core.rollups import OTHER, US, Rollup, fields_for, single_dim_values

MinuteGroup = list[Any]
"""lua/ingest.lua's group: [minute start (str), field, count, sum in micros (str), uids]."""
HotCell = list[Any]
"""lua/ingest.lua's cell: [grain (m, h or d), bucket start (str), field, count, sum in
micros (str), uids]: the totals of a batch's sealed minutes in one (grain, bucket, field)."""
LateCells = list[Any]
"""lua/ingest.lua's late cells, the cells of buckets known sealed, flat (no list per cell):
per cell the late-hash count field <g>:<bucket>:c US field, the sketch-index member
<g>:<bucket>:field, the count, the sum in micros (a string, then the sum field
<g>:<bucket>:s US field) or the integer 0 (no sum), the number of uids, the uids."""


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
    late_cells: LateCells = []
    """The cells (flat) of the events before plan_batch's sealed.minute, one per (grain,
    bucket, field) below that grain's sealed watermark."""
    hot_cells: list[HotCell] = []
    """The same in the buckets at or past it (the script decides hot or late)."""
    n_late_cells: int = 0
    """How many cells late_cells holds."""


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
    sealed: Sealed | None = None,
    minute_from: int = 0,
) -> Plan:
    """The batch's minute groups for lua/ingest.lua and, when dim_values, every distinct
    (dim, UTC day, value) in it, read off the day grain's fields rather than every event;
    when names, the distinct event names and dim names per UTC day (day_names).
    Events of minutes before sealed.minute (the caller knows them sealed) are not groups
    but cells, rolled up per (grain, bucket, field): one per hour and day however many of
    the batch's minutes fall in it, and none for a minute before minute_from (minute rows
    older than that are not kept, see minute_retention_days). A cell of a bucket the
    caller knows sealed goes to late_cells (LateCells), any other a HotCell (hot_cells)."""
    if not isinstance(events, list):
        events = list(events)
    late_cells: LateCells = []
    hot_cells: list[HotCell] = []
    late_seen: set[tuple[str, str, str]] = set()
    uid_entries = 0
    if sealed is not None and sealed.minute:
        edge = sealed.minute
        old = [ev for ev in events if ev.ts < edge]
        if old:
            minutes = group_minutes((ev for ev in events if ev.ts >= edge), crosstabs)
            uid_entries = _cells(old, crosstabs, sealed, minute_from, late_cells, hot_cells)
            if dim_values:
                late_seen = _cell_dim_values(late_cells, hot_cells)
        else:
            minutes = group_minutes(events, crosstabs)
    else:
        minutes = group_minutes(events, crosstabs)
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
        seen |= late_seen
    event_names, dim_names = day_names(events) if names else ([], [])
    return Plan(
        groups,
        [list(t) for t in sorted(seen)],
        event_names,
        dim_names,
        uid_entries,
        late_cells,
        hot_cells,
        sum(1 for _ in late_members(late_cells)),
    )


class Sealed(NamedTuple):
    """Watermarks (epoch ms) below which the caller knows each grain's buckets sealed."""

    minute: int
    hour: int
    day: int


def _cells(
    events: list[RawEvent],
    crosstabs: Sequence[Rollup],
    sealed: Sealed,
    minute_from: int,
    late_out: list[Any],
    hot_out: list[HotCell],
) -> int:
    """Appends the cells of these events (all of sealed minutes) to late_out (buckets below
    sealed; flat, see LateCells) and hot_out (the others); returns the uids they hold.
    Counts, sums and uids are kept in dicts of ints and strings per (grain, bucket), so a
    batch's thousands of cells allocate few objects the garbage collector tracks."""
    where_of: dict[tuple[str, int], str] = {}
    counts: dict[str, dict[str, int]] = {}
    sums: dict[str, dict[str, int]] = {}
    uids_of: dict[str, dict[str, Any]] = {}
    m_size, h_size, d_size = MINUTE_MS, HOUR_MS, DAY_MS
    for ev in events:
        ts = ev.ts
        fields = fields_for(ev.name, ev.dims, crosstabs)
        value = ev.value
        uid = ev.uid
        minute = ts - ts % m_size
        targets = [("h", ts - ts % h_size), ("d", ts - ts % d_size)]
        if minute >= minute_from:
            targets.append(("m", minute))
        for target in targets:
            where = where_of.get(target)
            if where is None:
                where = where_of[target] = f"{target[0]}:{target[1]}:"
                counts[where] = {}
                sums[where] = {}
                uids_of[where] = {}
            c = counts[where]
            for f in fields:
                c[f] = c.get(f, 0) + 1
            if value:
                sm = sums[where]
                for f in fields:
                    sm[f] = sm.get(f, 0) + value
            if uid is not None:
                us = uids_of[where]
                for f in fields:
                    known = us.get(f)
                    if known is None:
                        us[f] = uid
                    elif isinstance(known, set):
                        known.add(uid)
                    elif known != uid:
                        us[f] = {known, uid}
    edge = {"m": sealed.minute, "h": sealed.hour, "d": sealed.day}
    uid_entries = 0
    add = late_out.append
    for (g, bucket), where in where_of.items():
        c, sm, us = counts[where], sums[where], uids_of[where]
        if bucket < edge[g]:
            cw, sw = where + COUNT_PREFIX, where + SUM_PREFIX
            for f, n in c.items():
                total = sm.get(f, 0)
                u = us.get(f)
                add(cw + f)
                add(where + f)
                add(n)
                if total:
                    add(str(total))
                    add(sw + f)
                else:
                    add(0)
                if u is None:
                    add(0)
                elif isinstance(u, set):
                    add(len(u))
                    late_out.extend(u)
                    uid_entries += len(u)
                else:
                    add(1)
                    add(u)
                    uid_entries += 1
        else:
            b = str(bucket)
            for f, n in c.items():
                u = us.get(f)
                ul = [] if u is None else list(u) if isinstance(u, set) else [u]
                uid_entries += len(ul)
                hot_out.append([g, b, f, n, str(sm.get(f, 0)), ul])
    return uid_entries


COUNT_PREFIX = "c" + US
SUM_PREFIX = "s" + US


def _cell_dim_values(late: list[Any], hot: list[HotCell]) -> set[tuple[str, str, str]]:
    """(dim, day start, value) of every single-dim field of the day cells."""
    out: set[tuple[str, str, str]] = set()
    by_day: dict[str, list[str]] = {}
    for member in late_members(late):
        if member[0] == "d":
            _, day_s, f = member.split(":", 2)
            by_day.setdefault(day_s, []).append(f)
    for c in hot:
        if c[0] == "d":
            by_day.setdefault(c[1], []).append(c[2])
    for day_s, fields in by_day.items():
        for dim, value in single_dim_values(fields):
            if value != OTHER:
                out.add((dim, day_s, value))
    return out


def late_members(late: list[Any]) -> Iterator[str]:
    """The sketch member (<g>:<bucket>:field) of every cell of a flat LateCells list."""
    i, n = 0, len(late)
    while i < n:
        yield late[i + 1]
        j = i + 4 if late[i + 3] == 0 else i + 5
        i = j + 1 + late[j]


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
