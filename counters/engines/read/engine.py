"""The read engine's entry points: a parsed query and a context in, a reply struct out
(series, total, and series across projects with their union)."""

from __future__ import annotations

from collections.abc import Sequence

from counters.core.errors import BadRequest
from counters.core.periods import label
from counters.engines.read.breakdown_series import breakdown_series
from counters.engines.read.cells import Cells, Periods, Value, one_series, read_cells, reduce_cells
from counters.engines.read.compare import comparison_query
from counters.engines.read.context import ReadContext
from counters.engines.read.limits import check_points, check_read, period_count, series_per_name
from counters.engines.read.parse import ReadQuery
from counters.engines.read.plan import series_plan, whole
from counters.engines.read.query import BucketValues, count_uniques, move_sketches
from counters.engines.read.raw import check_raw_budget, raw_series, raw_total, raw_uids
from counters.engines.read.reply import (
    MultiSeriesReply,
    MultiTotalReply,
    NamedSeries,
    NamedTotal,
    ProjectSeries,
    ProjectsReply,
    SeriesReply,
    TotalReply,
    UnionSeries,
    UnionTotal,
    mark_partial,
    points,
    projects_reply,
    series_comparison,
    series_reply,
    total_comparison,
    total_reply,
)
from lua.keys import ProjectKeys

MAX_PROJECTS = 20


def check_query(ctx: ReadContext, q: ReadQuery, *, total: bool) -> None:
    """Refuses (400) a series (total=False) or total read before any work: a total with
    group_by, or a read over the bucket cap, the points limit or retention (what
    read_series and read_total check first; a batch checks all its queries with it before
    reading any)."""
    if total and q.group_by:
        raise BadRequest(
            "group_by: total answers one value; ask series for a breakdown",
            code="bad_parameter",
        )
    check_read(q, ctx.limits, ctx.oldest_minute, total=total)
    before = comparison_query(q)
    if before is not None:
        # the reply holds both ranges: one series more per name against max_points
        buckets = 1 if total else period_count(q)
        check_points(q, 2 * (1 if total else series_per_name(q)), buckets, ctx.limits.max_points)
        try:
            check_read(before, ctx.limits, ctx.oldest_minute, total=total)
        except BadRequest as exc:
            tz = before.tz
            raise BadRequest(
                f"compare: the {q.compare} range {label(before.start, tz)} to"
                f" {label(before.end, tz)}: {exc.message}",
                code=exc.code,
            ) from exc


async def _series(ctx: ReadContext, q: ReadQuery) -> list[NamedSeries]:
    cells = series_plan(q, ctx.oldest_minute)
    if q.source == "raw":
        await check_raw_budget(ctx, q)
    out: list[NamedSeries] = []
    for name in q.names:
        if q.source == "raw":
            out.extend(await raw_series(ctx, q, name))
        elif q.group_by:
            out.extend(await breakdown_series(ctx, q, name, cells))
        else:
            data, total = await one_series(ctx, q, name, cells)
            out.append(NamedSeries(name, q.reply_dims, total, points(q, data)))
    return out


async def read_series(ctx: ReadContext, q: ReadQuery) -> SeriesReply | MultiSeriesReply:
    """Zero-padded values per period of every name; with group_by, the top tuples and
    __other__; from the raw log when no rollup covers the dims; the in-progress point
    marked partial; with compare, each series carries the same read of the compared
    range. Refused (400) before any work when over the bucket cap, the points limit or
    retention (the compared range's too)."""
    check_query(ctx, q, total=False)
    out = await _series(ctx, q)
    before = comparison_query(q)
    if before is not None:
        for s, b in zip(out, await _series(ctx, before), strict=True):
            s.comparison = series_comparison(before, b.data)
    mark_partial([s.data for s in out], q, ctx.now_ms)
    return series_reply(q, out)


async def _totals(ctx: ReadContext, q: ReadQuery) -> tuple[list[NamedTotal], Value | None]:
    """Each name's value, and for uniques of several names their union (else None)."""
    if q.source == "raw":
        await check_raw_budget(ctx, q)
    if q.measure == "uniques" and len(q.names) > 1:
        return await _uniques_and_union(ctx, q)
    values: list[NamedTotal] = []
    for name in q.names:
        if q.source == "raw":
            value = await raw_total(ctx, q, name)
        else:
            _, value = await one_series(ctx, q, name, [whole(q)])
        values.append(NamedTotal(name, value))
    return values, None


async def _uniques_and_union(ctx: ReadContext, q: ReadQuery) -> tuple[list[NamedTotal], Value]:
    """Uniques of each name and of all of them together: from the raw log, sets of uids;
    from rollups, every name's sketches counted alone and then together (one PFCOUNT of
    the union: a uid seen under two names counts once, never a sum)."""
    if q.source == "raw":
        uids = [await raw_uids(ctx, q, name) for name in q.names]
        named = [NamedTotal(n, len(u)) for n, u in zip(q.names, uids, strict=True)]
        return named, len(set().union(*uids))
    span = whole(q)
    read = [await read_cells(ctx, q, name, [span]) for name in q.names]
    merged = BucketValues([], [], [], {k: v for c in read for k, v in c.values.tmp_blobs.items()})
    groups = [c.hlls(span) for c in read]
    counted = await count_uniques(ctx.redis, merged, [*groups, [k for g in groups for k in g]])
    named = [NamedTotal(n, v) for n, v in zip(q.names, counted[:-1], strict=True)]
    return named, counted[-1]


async def read_total(ctx: ReadContext, q: ReadQuery) -> TotalReply | MultiTotalReply:
    """One value per name over the whole range; uniques are the union of every sketch, and
    with several names the reply adds their union. Refused (400) before any work when over
    the bucket cap or retention, as series is."""
    check_query(ctx, q, total=True)
    values, union = await _totals(ctx, q)
    whole_union = None if union is None else UnionTotal(union)
    before = comparison_query(q)
    if before is not None:
        earlier, earlier_union = await _totals(ctx, before)
        for v, b in zip(values, earlier, strict=True):
            v.comparison = total_comparison(before, b.value)
        if whole_union is not None and earlier_union is not None:
            whole_union.comparison = total_comparison(before, earlier_union)
    return total_reply(q, values, whole_union)


async def _union_uniques(
    ctx: ReadContext, per_project: Sequence[tuple[ProjectKeys, Cells]], cells: Periods
) -> tuple[list[int], int]:
    """Uniques of the union across projects: every sketch is moved into scratch keys of the
    first project's slot (projects live in different Redis Cluster slots: move_sketches, as
    for a split project's shards), then counted together."""
    home = per_project[0][0]
    blobs: dict[str, bytes] = {}
    moved: list[tuple[Cells, dict[str, str]]] = []
    for _, c in per_project:
        wanted = (k for p in cells for k in c.hlls(p))
        renamed, new_blobs = await move_sketches(ctx.redis, wanted, c.values.tmp_blobs, home)
        blobs.update(new_blobs)
        moved.append((c, renamed))
    groups = [
        [renamed[k] for c, renamed in moved for k in c.hlls(p) if k in renamed] for p in cells
    ]
    union = [k for g in groups for k in g]
    counted = await count_uniques(ctx.redis, BucketValues([], [], [], blobs), [*groups, union])
    return list(counted[:-1]), counted[-1]


async def read_projects(ctxs: Sequence[ReadContext], q: ReadQuery) -> ProjectsReply:
    """One series per project (one context each) plus their union: counts and sums add,
    uniques merge across projects, never summed."""
    if q.group_by or q.source == "raw":
        raise BadRequest(
            "across projects, reads take filters that a rollup covers and no group_by",
            code="bad_parameter",
        )
    if q.compare is not None:
        raise BadRequest(
            "compare: not across projects (read each project with compare)",
            code="bad_parameter",
        )
    check_read(q, ctxs[0].limits, ctxs[0].oldest_minute, total=False, projects=len(ctxs))
    cells = series_plan(q, ctxs[0].oldest_minute)
    series: list[ProjectSeries] = []
    union: list[UnionSeries] = []
    for name in q.names:
        per_project: list[tuple[ProjectKeys, Cells]] = []
        sums: list[Value] = [0] * len(cells)
        whole_value: Value = 0
        for ctx in ctxs:
            c = await read_cells(ctx, q, name, cells)
            per_project.append((ctx.keys, c))
            data, total = await reduce_cells(ctx, q, c, cells)
            series.append(ProjectSeries(ctx.project, name, total, points(q, data)))
            sums = [a + b for a, b in zip(sums, data, strict=True)]
            whole_value += total
        if q.measure == "uniques":
            counted, union_total = await _union_uniques(ctxs[0], per_project, cells)
            union.append(UnionSeries(name, union_total, points(q, list(counted))))
        else:
            union.append(UnionSeries(name, whole_value, points(q, sums)))
    mark_partial([*(s.data for s in series), *(u.data for u in union)], q, ctxs[0].now_ms)
    return projects_reply(q, [ctx.project for ctx in ctxs], series, union)
