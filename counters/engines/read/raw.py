"""Answers from the raw log when no rollup covers the filters and breakdown dims.

Exact and slower: Postgres aggregates raw_events up to its copy cursor (read in one snapshot
with the cursor), and the raw-log entries still in Redis past that cursor are folded in
Python. Redis is read first (from the copy cursor as it was just before, which only grows),
so an entry trimmed meanwhile is already in Postgres. A split project's shards are all
read: their rows in one aggregate, each shard's stream past its own copy cursor. Bounded:
a row count refuses a read over the raw row budget before it scans, Postgres statements
have a timeout, and folding gives the event loop a turn every few ms."""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import cast

import msgspec

from counters.core.errors import BadRequest
from counters.core.measures import Measured, measure_value
from counters.core.models import RawEvent, decode_raw_batch
from counters.core.periods import periods
from counters.core.rollups import NONE, OTHER
from counters.engines.read.context import ReadContext
from counters.engines.read.pace import Pacer
from counters.engines.read.parse import ReadQuery
from counters.engines.read.reply import DimValues, NamedSeries, Point, points
from lua.client import redis_unavailable
from lua.keys import ProjectKeys
from persist.rawlog_reads import RawGroupRow, RawScope, aggregate_raw, copied_until, count_rows
from persist.schema import stream_order

Entries = list[tuple[bytes, dict[bytes, bytes]]]
Value = Measured
STREAM_CHUNK = 500
"""Raw-log stream entries read per XRANGE."""


class Acc(msgspec.Struct):
    """One group's measures in one period."""

    count: int = 0
    sum_micros: int = 0
    uids: set[str] | None = None

    def add(self, count: int, sum_micros: int, uid: str | None) -> None:
        """Counts events (of one uid, when given)."""
        self.count += count
        self.sum_micros += sum_micros
        if uid is not None:
            if self.uids is None:
                self.uids = set()
            self.uids.add(uid)


Groups = dict[tuple[str, ...], list[Acc]]
NO_GROUP: tuple[str, ...] = ()
"""With group_by, the group of the events lacking a grouped dim (a real group has one value
per grouped dim); without group_by, the one group of every event."""


def _group(values: tuple[str | None, ...]) -> tuple[str, ...]:
    """The group of an event's grouped-dim values (None where it lacks the dim)."""
    return NO_GROUP if None in values else cast(tuple[str, ...], values)


def _fold_postgres(out: Groups, rows: list[RawGroupRow], uniques: bool) -> None:
    for r in rows:
        out[_group(r.group)][r.period].add(r.count, r.sum_micros, r.uid if uniques else None)


def _matches(ev: RawEvent, filters: Mapping[str, Sequence[str]]) -> bool:
    return all(ev.dims.get(d) in vs for d, vs in filters.items())


async def _fold_redis(out: Groups, entries: Entries, cursor: str, scope: RawScope) -> None:
    """Folds the stream entries past Postgres's copy cursor (a loop turn every few ms)."""
    done = stream_order(cursor)
    lo, end = scope.starts[0], scope.end
    pacer = Pacer()
    for sid, fields in entries:
        await pacer.tick()
        if stream_order(sid.decode()) <= done:
            continue
        for ev in decode_raw_batch(fields[b"e"]):
            if ev.name != scope.name or not lo <= ev.ts < end:
                continue
            if not _matches(ev, scope.filters):
                continue
            period = bisect.bisect_right(scope.starts, ev.ts) - 1
            group = _group(tuple(ev.dims.get(g) for g in scope.group_by))
            out[group][period].add(1, ev.value, ev.uid if scope.uniques else None)


async def read_raw(
    ctx: ReadContext,
    name: str,
    spans: Sequence[tuple[int, int]],
    filters: Mapping[str, Sequence[str]],
    group_by: Sequence[str],
    *,
    uniques: bool,
) -> Groups:
    """Per group of `group_by` values, the measures of every period, from the raw log of
    every shard of the project; the events lacking a grouped dim under NO_GROUP."""
    if not spans:
        return {}
    scope = RawScope(name, [s for s, _ in spans], spans[-1][1], filters, group_by, uniques)
    out: Groups = defaultdict(lambda: [Acc() for _ in spans])
    shards = ctx.all_keys
    projects = [keys.project for keys in shards]
    copied = await copied_until(ctx.pool, projects)
    entries = [
        await _stream_after(ctx, keys, after) for keys, after in zip(shards, copied, strict=True)
    ]
    cursors = await aggregate_raw(
        ctx.pool,
        projects,
        scope,
        lambda rows: _fold_postgres(out, rows, uniques),
        timeout=ctx.limits.raw_timeout_seconds,
        hint=narrowing_hint([*filters, *group_by]),
    )
    for shard_entries, cursor in zip(entries, cursors, strict=True):
        await _fold_redis(out, shard_entries, cursor, scope)
    return dict(out)


async def _stream_after(ctx: ReadContext, keys: ProjectKeys, copied: str) -> Entries:
    """One shard's raw-log stream entries after `copied`, STREAM_CHUNK per round trip
    (entries at or before it are in Postgres, and the cursor only grows)."""
    entries: Entries = []
    start = f"({copied}"
    with redis_unavailable():
        while True:
            chunk = cast(Entries, await ctx.redis.xrange(keys.raw, start, "+", count=STREAM_CHUNK))
            entries.extend(chunk)
            if len(chunk) < STREAM_CHUNK:
                return entries
            start = "(" + chunk[-1][0].decode()


def narrowing_hint(dims: Sequence[str]) -> str:
    """How to make a raw-log read cheap: a cross-tab of its dims, or a shorter range."""
    crosstab = ":".join(sorted(set(dims)))
    return (
        f"declare a cross-tab of these dims (COUNTERS_CROSSTABS={crosstab}) so rollups answer,"
        " or ask for a shorter range"
    )


async def check_raw_budget(ctx: ReadContext, q: ReadQuery) -> None:
    """400 raw_budget_exceeded when the raw-log rows the read would scan (the project's rows
    in the range, every shard's, once per name) are over the raw row budget; counted
    before any scan, and at most budget + 1 rows are counted."""
    budget = ctx.limits.raw_row_budget
    if not budget:
        return
    cap = budget // len(q.names) + 1
    hint = narrowing_hint([*q.filter_sets, *q.group_by])
    found = await count_rows(
        ctx.pool,
        [keys.project for keys in ctx.all_keys],
        q.start,
        q.end,
        cap,
        timeout=ctx.limits.raw_timeout_seconds,
        hint=hint,
    )
    if found * len(q.names) > budget:
        more = "more than " if found == cap else ""
        raise BadRequest(
            f"this read needs the raw log (no rollup covers its dims) and would scan"
            f" {more}{found * len(q.names):,} rows; the raw row budget is {budget:,}"
            f" (raw_row_budget): {hint}",
            code="raw_budget_exceeded",
        )


def _measure(q: ReadQuery, accs: Sequence[Acc]) -> Value:
    if q.measure == "uniques":
        return len(set().union(*(a.uids or set() for a in accs)))
    return measure_value(q.measure, sum(a.count for a in accs), sum(a.sum_micros for a in accs))


def _per_period(q: ReadQuery, per_group: Sequence[Sequence[Acc]], n: int) -> list[Point]:
    return points(q, [_measure(q, [accs[i] for accs in per_group]) for i in range(n)])


def _none_uniques(none: Sequence[Acc], groups: Sequence[Sequence[Acc]]) -> list[Acc]:
    """Per period, then over the range: the uids seen only in events lacking a grouped dim
    (the rollup path estimates the same: uniques(total) - uniques(every tuple))."""
    n = len(none)
    with_dims = [set().union(*(accs[i].uids or set() for accs in groups)) for i in range(n)]
    out = [Acc(uids=(none[i].uids or set()) - with_dims[i]) for i in range(n)]
    everywhere = set().union(*with_dims)
    out.append(Acc(uids=set().union(*(a.uids or set() for a in none)) - everywhere))
    return out


def _none_series(q: ReadQuery, name: str, none: list[Acc], groups: Groups) -> NamedSeries:
    """The `__none__` series: the events lacking a grouped dim (for uniques, the uids seen
    only there)."""
    dims: DimValues = {**q.reply_dims, **{d: NONE for d in q.group_by}}
    if q.measure != "uniques":
        return NamedSeries(name, dims, _measure(q, none), _per_period(q, [none], len(none)))
    accs = _none_uniques(none, list(groups.values()))
    return NamedSeries(name, dims, _measure(q, accs[-1:]), _per_period(q, [accs[:-1]], len(none)))


async def raw_total(ctx: ReadContext, q: ReadQuery, name: str) -> Value:
    """One name's value over the whole range from the raw log (exact, uniques included)."""
    return _measure(q, await _raw_whole(ctx, q, name))


async def raw_uids(ctx: ReadContext, q: ReadQuery, name: str) -> set[str]:
    """The uids of one name's matching events over the whole range (measure uniques)."""
    return set().union(*(a.uids or set() for a in await _raw_whole(ctx, q, name)))


async def _raw_whole(ctx: ReadContext, q: ReadQuery, name: str) -> list[Acc]:
    spans = [(q.start, q.end)] if q.end > q.start else []
    uniques = q.measure == "uniques"
    groups = await read_raw(ctx, name, spans, q.filter_sets, (), uniques=uniques)
    return groups.get(NO_GROUP) or []


async def raw_series(ctx: ReadContext, q: ReadQuery, name: str) -> list[NamedSeries]:
    """The same answers from the raw log: one series, or the top tuples, __other__ and
    __none__ (exact, uniques included)."""
    spans = periods(q.start, q.end, q.precision, q.tz)
    filters = q.reply_dims
    groups = await read_raw(
        ctx, name, spans, q.filter_sets, q.group_by, uniques=q.measure == "uniques"
    )
    n = len(spans)
    none = groups.pop(NO_GROUP, None) or [Acc() for _ in spans]
    if not q.group_by:
        return [NamedSeries(name, filters, _measure(q, none), _per_period(q, [none], n))]
    pacer = Pacer()
    totals: dict[tuple[str, ...], Value] = {}
    for g, accs in groups.items():
        totals[g] = _measure(q, accs)
        await pacer.tick()
    items = sorted(groups.items(), key=lambda kv: (-totals[kv[0]], kv[0]))
    top, rest = items[: q.limit], items[q.limit :]
    out: list[NamedSeries] = []
    for g, accs in top:
        dims: DimValues = {**filters, **dict(zip(q.group_by, g, strict=True))}
        out.append(NamedSeries(name, dims, totals[g], _per_period(q, [accs], n)))
        await pacer.tick()
    rest_accs = [accs for _, accs in rest]
    everything = [a for accs in rest_accs for a in accs]
    other: DimValues = {**filters, **{d: OTHER for d in q.group_by}}
    out.append(NamedSeries(name, other, _measure(q, everything), _per_period(q, rest_accs, n)))
    out.append(_none_series(q, name, none, groups))
    return out
