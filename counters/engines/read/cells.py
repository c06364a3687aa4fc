"""One name's stored buckets as a query's periods need them: read (query.read_buckets) and
reduced to per-period and whole-range values."""

from __future__ import annotations

from collections.abc import Sequence

from counters.core.measures import Measured, measure_value, measure_values
from counters.engines.read.context import ReadContext
from counters.engines.read.parse import ReadQuery
from counters.engines.read.plan import Cell, Need, Planned, flatten, need, positions
from counters.engines.read.query import BucketValues, add_values, count_uniques, read_buckets

Value = Measured
Periods = list[list[Cell]]


class Cells:
    """count, sum and sketch keys of every stored bucket of one series."""

    def __init__(
        self, values: BucketValues, need: Need, at: dict[Cell, tuple[int, int]] | None = None
    ) -> None:
        self.values = values
        self.at = positions(need) if at is None else at
        """(piece, index) of each cell: the plan's own when it is a Planned (shared)."""

    def count(self, cells: Sequence[Cell]) -> int:
        return sum(self.values.counts[p][i] for p, i in map(self.at.__getitem__, cells))

    def sum(self, cells: Sequence[Cell]) -> int:
        return sum(self.values.sums[p][i] for p, i in map(self.at.__getitem__, cells))

    def hlls(self, cells: Sequence[Cell]) -> list[str]:
        return [k for p, i in map(self.at.__getitem__, cells) for k in self.values.hll_keys[p][i]]


async def read_cells(ctx: ReadContext, q: ReadQuery, name: str, cells: Periods) -> Cells:
    """Every stored bucket the periods need, for one name, merged as of now; with any-of
    filters, the values of every combination of them added up (sketches united)."""
    needed = need(cells)
    pieces = list(needed.items())
    uniques = q.measure == "uniques"
    values: BucketValues | None = None
    for one in q.expand():
        part = await read_buckets(ctx, name, one.rollup, one.values, pieces, uniques=uniques)
        if values is None:
            values = part
        else:
            add_values(values, part)
    assert values is not None  # expand() gives at least one query
    return Cells(values, needed, cells.at if isinstance(cells, Planned) else None)


async def reduce_cells(
    ctx: ReadContext, q: ReadQuery, c: Cells, cells: Periods
) -> tuple[list[Value], Value]:
    """Per-period values and the whole-range value (uniques: unions, never sums)."""
    if q.measure == "uniques":
        groups = [c.hlls(p) for p in cells]
        union = [k for g in groups for k in g]
        counted = await count_uniques(ctx.redis, c.values, [*groups, union])
        return list(counted[:-1]), counted[-1]
    single = cells.single if isinstance(cells, Planned) else None
    if single is None and all(len(p) == 1 for p in cells):
        single = [c.at[p[0]] for p in cells]
    if single is not None:  # one stored bucket per period: no sums to make
        source = c.values.counts if q.measure == "count" else c.values.sums
        if len(source) == 1 and len(source[0]) == len(single):
            # n periods in time order, each its own bucket of n distinct sorted ones
            stored = list(source[0])
        else:
            stored = [source[pi][i] for pi, i in single]
        return measure_values(q.measure, stored), measure_value(q.measure, sum(stored), sum(stored))
    series = [measure_value(q.measure, c.count(p), c.sum(p)) for p in cells]
    everything = flatten(cells)
    return series, measure_value(q.measure, c.count(everything), c.sum(everything))


async def one_series(
    ctx: ReadContext, q: ReadQuery, name: str, cells: Periods
) -> tuple[list[Value], Value]:
    """Per-period values and the whole-range value of one name (no breakdown)."""
    return await reduce_cells(ctx, q, await read_cells(ctx, q, name, cells), cells)
