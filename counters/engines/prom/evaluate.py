"""The PromQL subset evaluated on the read engine. Series `counters_count`, `counters_sum`,
`counters_uniques` carry the labels `project`, `name` and the dims; a sample at time t is
the measure over [t - step, t), one output bucket of the precision the step maps to.

Dims are aggregated away unless the query names them: a selector is one series per
project and name with the dims its `=` matchers fix; a `!=`, `=~` or `!~` matcher on a
dim, or a `sum by (dim)` above it, makes it a breakdown by that dim (a group_by read)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal

import msgspec

from counters.core.buckets import DAY_MS, MINUTE_MS, parse_ts
from counters.core.errors import BadRequest
from counters.core.rollups import NONE, OTHER
from counters.engines.prom.promql import Expr, Matcher, Number, Selector, TopK
from counters.engines.read.catalog import read_catalog
from counters.engines.read.context import ReadContext
from counters.engines.read.engine import read_series
from counters.engines.read.parse import MAX_LIMIT, MAX_NAMES, parse_precision, parse_read
from counters.engines.read.reply import DimValues, SeriesReply, Value
from counters.engines.read.rows import dim_text

METRICS = {"counters_count": "count", "counters_sum": "sum", "counters_uniques": "uniques"}
LABELS = ("__name__", "project", "name")
EXPORTED = "exported_"
"""Prefix of the label of a dim named like one of LABELS (Prometheus' own convention for a
clashing label): a dim `name` is the label `exported_name`."""


def label_of(dim: str) -> str:
    """The label a dim is shown under: itself, or exported_<dim> for `project` and `name`."""
    return EXPORTED + dim if dim in LABELS else dim


def dim_of(label: str) -> str:
    """The dim a (non-fixed) label stands for: the inverse of label_of."""
    rest = label.removeprefix(EXPORTED)
    return rest if rest != label and rest in LABELS else label


MAX_SERIES = 1_000
"""Series one query may answer with (refused past it: narrow the matchers)."""
_FALLBACK = (1, 5, 15, 60, 1440)
"""Whole minutes of the precisions every build has (1m, 5m, 15m, 1h, 1d)."""


class PromSeries(msgspec.Struct):
    """One labelled series: samples (t in epoch ms, value)."""

    labels: dict[str, str]
    samples: list[tuple[int, Value]]


class Window(msgspec.Struct, frozen=True):
    """Samples at t in [start, end] of the bucket [t - step, t) at precision `precision`."""

    start: int
    end: int
    step: int
    precision: str
    include_current: bool = False
    """Whether the bucket in progress is read too (label values: what was seen today)."""


def _bad(message: str) -> BadRequest:
    return BadRequest(message, code="bad_data")


def _precision_name(minutes: int) -> str:
    if minutes == 1440:
        return "1d"
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


def _accepted(name: str) -> bool:
    try:
        parse_precision({"precision": name})
    except BadRequest:
        return False
    return True


def precision_for_step(step_ms: int) -> tuple[str, int]:
    """(precision, its length) for a query step: the step itself when it is a precision the
    read engine takes (any that parse.py accepts, e.g. 2m once whole-minute precisions
    exist), else the shortest longer one; a step longer than a day is refused."""
    if step_ms <= 0:
        raise _bad("step must be positive")
    if step_ms > DAY_MS:
        raise _bad("step above 1d is not supported (use 1d or less)")
    candidates = [m for m in range(1, 1441) if 1440 % m == 0]
    exact = step_ms // MINUTE_MS if step_ms % MINUTE_MS == 0 else None
    if exact is not None and exact in candidates and _accepted(_precision_name(exact)):
        return _precision_name(exact), step_ms
    for m in candidates:
        if m * MINUTE_MS >= step_ms and (m in _FALLBACK or _accepted(_precision_name(m))):
            return _precision_name(m), m * MINUTE_MS
    raise _bad("no precision fits this step")  # unreachable: 1d always fits


class _Params(dict[str, str]):
    """Read parameters with a repeatable `name` (what parse_read takes)."""

    def __init__(self, names: list[str], **params: str) -> None:
        super().__init__(params, name=names[0])
        self.names = names

    def getlist(self, key: str) -> list[str]:
        return self.names if key == "name" else [self[key]] if key in self else []


ContextOf = Callable[[str], ReadContext]


class Evaluator:
    """Evaluates a query for the projects a read key covers."""

    def __init__(
        self,
        projects: list[str],
        context_of: ContextOf,
        now_ms: int,
        crosstabs: tuple[tuple[str, ...], ...],
    ) -> None:
        self.projects = projects
        self.context_of = context_of
        self.now_ms = now_ms
        self.crosstabs = crosstabs
        self._names: dict[str, list[str]] = {}

    async def names_of(self, project: str) -> list[str]:
        """The event names the project's catalog lists (cached for the request)."""
        if project not in self._names:
            catalog = await read_catalog(self.context_of(project), self.now_ms)
            self._names[project] = [n.name for n in catalog.names]
        return self._names[project]

    async def dims_of(self, project: str) -> list[str]:
        """The single dims the project's catalog lists."""
        catalog = await read_catalog(self.context_of(project), self.now_ms)
        return sorted({d for n in catalog.names for d in n.dims})

    async def evaluate(self, e: Expr, w: Window) -> list[PromSeries] | float:
        """The series (or, for number literals, the scalar) of a query."""
        if isinstance(e, Number):
            return e.value
        return await self._vector(e, w, ())

    async def _vector(self, e: Expr, w: Window, need: tuple[str, ...]) -> list[PromSeries]:
        if isinstance(e, Number):
            raise _bad("unsupported: a number inside sum or topk")
        if isinstance(e, Selector):
            return await self.select(e, w, need)
        if isinstance(e, TopK):
            inner = await self._vector(e.expr, w, need)
            ranked = sorted(inner, key=lambda s: -sum(Decimal(v) for _, v in s.samples))
            return ranked[: e.k]
        by = e.by or ()
        inner = await self._vector(e.expr, w, tuple(dict.fromkeys([*need, *by])))
        return _sum(inner, by)

    async def matched(self, sel: Selector) -> list[tuple[str, str, str, list[str]]]:
        """(metric, measure, project, names) of every series family a selector matches."""
        by_label: dict[str, list[Matcher]] = {}
        for m in sel.matchers:
            by_label.setdefault(m.label, []).append(m)
        metrics = [m for m in METRICS if all(x.matches(m) for x in by_label.get("__name__", []))]
        projects = [
            p for p in self.projects if all(x.matches(p) for x in by_label.get("project", []))
        ]
        out: list[tuple[str, str, str, list[str]]] = []
        for project in projects:
            name_m = by_label.get("name", [])
            if name_m and name_m[0].op == "=" and len(name_m) == 1:
                names = [name_m[0].value]
            else:
                names = [
                    n for n in await self.names_of(project) if all(x.matches(n) for x in name_m)
                ]
            if names:
                out.extend((metric, METRICS[metric], project, names) for metric in metrics)
        return out

    async def select(self, sel: Selector, w: Window, need: tuple[str, ...]) -> list[PromSeries]:
        """The series of a selector: one read per metric and project (names in chunks)."""
        eq: dict[str, str] = {}
        other: list[Matcher] = []
        for m in sel.matchers:
            if m.label in LABELS:
                continue
            if m.op == "=" and dim_of(m.label) not in eq:
                if m.value == "":
                    raise _bad(f'unsupported: {m.label}="" (a matcher on an absent label)')
                eq[dim_of(m.label)] = m.value
            else:
                other.append(m)
        group = tuple(
            dict.fromkeys(
                [
                    *(dim_of(d) for d in need if d not in LABELS and dim_of(d) not in eq),
                    *(dim_of(m.label) for m in other if dim_of(m.label) not in eq),
                ]
            )
        )
        out: list[PromSeries] = []
        for metric, measure, project, names in await self.matched(sel):
            for i in range(0, len(names), MAX_NAMES):
                chunk = names[i : i + MAX_NAMES]
                for s in await self._read(project, measure, chunk, eq, group, w):
                    s.labels = {"__name__": metric, "project": project, **s.labels}
                    if all(m.matches(s.labels.get(m.label, "")) for m in other):
                        if OTHER in s.labels.values() and other:
                            raise _bad(
                                f"more than {MAX_LIMIT} values of {', '.join(group)}: filter with ="
                            )
                        out.append(s)
                if len(out) > MAX_SERIES:
                    raise _bad(f"more than {MAX_SERIES} series: narrow the matchers")
        return out

    async def _read(
        self,
        project: str,
        measure: str,
        names: list[str],
        eq: dict[str, str],
        group: tuple[str, ...],
        w: Window,
    ) -> list[PromSeries]:
        ctx = self.context_of(project)
        params = _Params(
            names,
            measure=measure,
            precision=w.precision,
            **{"from": str(max(0, w.start - w.step)), "to": str(w.end - w.step + 1)},
            **{f"d.{dim}": value for dim, value in eq.items()},
        )
        if w.include_current:
            params["excluding_current"] = "false"
        if group:
            params["group_by"] = ",".join(group)
            params["limit"] = str(MAX_LIMIT)
        try:
            q = parse_read(params, self.now_ms, self.crosstabs, oldest_minute=ctx.oldest_minute)
        except BadRequest as exc:
            if "after the last bucket" in exc.message:
                return []
            raise _bad(exc.message) from exc
        reply = await read_series(ctx, q)
        if isinstance(reply, SeriesReply):
            families: Iterable[tuple[str, DimValues, list[tuple[str, Value]]]] = [
                (reply.name, q.reply_dims, [(p.bucket, p.value) for p in reply.data])
            ]
        else:
            families = [
                (s.name, s.dims, [(p.bucket, p.value) for p in s.data]) for s in reply.series
            ]
        out = []
        for name, dims, points in families:
            labels = {
                "name": name,
                **{label_of(k): dim_text(v) for k, v in dims.items() if v != NONE},
            }
            samples = [(parse_ts(b) + w.step, v) for b, v in points]
            samples = [(t, v) for t, v in samples if w.start <= t <= w.end]
            if (NONE in dims.values() or OTHER in dims.values()) and not any(v for _, v in samples):
                continue
            out.append(PromSeries(labels, samples))
        return out


def _sum(series: list[PromSeries], by: tuple[str, ...]) -> list[PromSeries]:
    """Series added per timestamp within each group of the `by` labels."""
    groups: dict[tuple[tuple[str, str], ...], dict[int, Value]] = {}
    for s in series:
        key = tuple((k, s.labels[k]) for k in by if k in s.labels)
        acc = groups.setdefault(key, {})
        for t, v in s.samples:
            acc[t] = acc.get(t, 0) + v
    return [PromSeries(dict(key), sorted(acc.items())) for key, acc in groups.items()]
