"""A Prometheus-HTTP-API-compatible read surface under /prom (query_range, query, labels,
label values, series, buildinfo), GET or POST form as Prometheus takes them, replies and
errors in Prometheus' JSON shapes; a Bearer read key scopes the projects visible."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import metadata as _pkg
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response

from api.common import app_state, authorize_key, bearer_key, json_response, read_context
from counters.core.buckets import DAY_MS, parse_ts
from counters.core.errors import CountersError, TooManyRequests, Unavailable
from counters.engines.prom.evaluate import (
    LABELS,
    METRICS,
    Evaluator,
    PromSeries,
    Window,
    dim_of,
    label_of,
    precision_for_step,
)
from counters.engines.prom.promql import Matcher, Selector, parse_promql
from counters.engines.read.catalog import read_catalog

PromHandler = Callable[[Request, dict[str, list[str]], Evaluator], Awaitable[Any]]
_ERROR_TYPE = {400: "bad_data", 404: "not_found", 422: "bad_data", 503: "unavailable"}
_UNITS = {
    "ms": 1,
    "s": 1000,
    "m": 60_000,
    "h": 3_600_000,
    "d": DAY_MS,
    "w": 7 * DAY_MS,
    "y": 365 * DAY_MS,
}


MAX_FORM_BYTES = 1 << 20
"""Largest POST form (application/x-www-form-urlencoded) a /prom route reads."""


class PromError(CountersError):
    status = 400
    code = "bad_data"


def _error(exc: CountersError) -> Response:
    kind = _ERROR_TYPE.get(exc.status, "unauthorized" if exc.status in (401, 403) else "execution")
    headers = None
    if isinstance(exc, Unavailable | TooManyRequests):
        headers = {"Retry-After": str(exc.retry_after)}
    body = {"status": "error", "errorType": kind, "error": exc.message}
    return json_response(body, exc.status, headers)


def _time(text: str | None, param: str, default: int | None = None) -> int:
    """Unix seconds (a float) or RFC 3339 -> epoch ms."""
    if text is None or text == "":
        if default is None:
            raise PromError(f"{param} is required")
        return default
    try:
        seconds = float(text)
    except ValueError:
        try:
            return parse_ts(datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat())
        except ValueError as exc:
            raise PromError(
                f"invalid parameter {param!r}: cannot parse {text!r} to a timestamp"
            ) from exc
    if not math.isfinite(seconds) or not 0 <= seconds < 253_402_300_799:
        raise PromError(f"invalid parameter {param!r}: {text!r} is out of range")
    return round(seconds * 1000)


def _duration(text: str | None, param: str) -> int:
    """A Prometheus duration (1m, 1h30m, 15s) or float seconds -> ms."""
    if not text:
        raise PromError(f"{param} is required")
    try:
        seconds = float(text)
        if not math.isfinite(seconds):
            raise ValueError
        return round(seconds * 1000)
    except ValueError:
        pass
    total, num = 0, ""
    i = 0
    while i < len(text):
        c = text[i]
        if c.isdigit():
            num += c
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] == "ms" else c
        if not num or unit not in _UNITS:
            raise PromError(f"invalid parameter {param!r}: cannot parse {text!r} to a duration")
        total += int(num) * _UNITS[unit]
        num, i = "", i + len(unit)
    if num:
        raise PromError(f"invalid parameter {param!r}: cannot parse {text!r} to a duration")
    return total


def _counters_version() -> str:
    try:
        return _pkg.version("counters")
    except _pkg.PackageNotFoundError:
        return "unknown"


def _fmt(v: Any) -> str:
    """A sample value as Prometheus writes it: 2, 1.5, +Inf, -Inf, NaN."""
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)
    return str(v)


def _matrix(series: list[PromSeries]) -> dict[str, Any]:
    return {
        "resultType": "matrix",
        "result": [
            {"metric": s.labels, "values": [[t / 1000, _fmt(v)] for t, v in s.samples]}
            for s in series
        ],
    }


async def _params(request: Request) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in request.query_params.multi_items():
        out.setdefault(k, []).append(v)
    if request.method == "POST":
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise PromError(f"form body over {MAX_FORM_BYTES} bytes")
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError as exc:
            raise PromError("form body is not UTF-8") from exc
        for k, v in pairs:
            out.setdefault(k, []).append(v)
    return out


def _one(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[-1] if values else None


def endpoint(handler: PromHandler) -> Callable[[Request], Awaitable[Response]]:
    """A /prom route: the read key checked, params from the query or the POST form, the
    reply wrapped as {"status":"success","data":...}, every error in Prometheus' shape."""

    async def run(request: Request) -> Response:
        try:
            state = app_state(request)
            access = await authorize_key(state, bearer_key(request), scope="read")
            now = state.clock.now_ms()
            evaluator = Evaluator(
                list(access.key.projects),
                lambda p: read_context(state, p, now),
                now,
                state.settings.crosstabs,
            )
            data = await handler(request, await _params(request), evaluator)
        except CountersError as exc:
            return _error(exc)
        return json_response({"status": "success", "data": data})

    return run


def _parse(text: str | None) -> Any:
    if text is None:
        raise PromError("query is required")
    try:
        return parse_promql(text)
    except ValueError as exc:
        raise PromError(str(exc)) from exc


async def _query_range(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    expr = _parse(_one(params, "query"))
    start, end = _time(_one(params, "start"), "start"), _time(_one(params, "end"), "end")
    if end < start:
        raise PromError("end timestamp must not be before start time")
    step = _duration(_one(params, "step"), "step")
    precision, length = _map_step(step)
    result = await ev.evaluate(expr, Window(start, end, length, precision))
    if isinstance(result, float):
        times = range(start, end + 1, step) if step > 0 else [start]
        return {
            "resultType": "matrix",
            "result": [{"metric": {}, "values": [[t / 1000, _fmt(result)] for t in times]}],
        }
    return _matrix(result)


def _map_step(step: int) -> tuple[str, int]:
    try:
        return precision_for_step(step)
    except CountersError as exc:
        raise PromError(exc.message) from exc


async def _query(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    expr = _parse(_one(params, "query"))
    t = _time(_one(params, "time"), "time", ev.now_ms)
    step = _duration(_one(params, "step"), "step") if _one(params, "step") else 60_000
    precision, length = _map_step(step)
    result = await ev.evaluate(expr, Window(t - length + 1, t, length, precision))
    if isinstance(result, float):
        return {"resultType": "scalar", "result": [t / 1000, _fmt(result)]}
    vector = []
    for s in result:
        if s.samples:
            vector.append({"metric": s.labels, "value": [t / 1000, _fmt(s.samples[-1][1])]})
    return {"resultType": "vector", "result": vector}


async def _labels(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    dims: set[str] = set()
    for p in ev.projects:
        dims.update(await ev.dims_of(p))
    return sorted({*LABELS, *(label_of(d) for d in dims)})


async def _label_values(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    label = request.path_params["label"]
    if label == "__name__":
        return sorted(METRICS)
    if label == "project":
        return sorted(ev.projects)
    if label == "name":
        return sorted({n for p in ev.projects for n in await ev.names_of(p)})
    values: set[str] = set()
    now = ev.now_ms
    window = Window(now - 30 * DAY_MS, now + DAY_MS, DAY_MS, "1d", include_current=True)
    for p in ev.projects:
        catalog = await read_catalog(ev.context_of(p), now)
        for n in catalog.names:
            if dim_of(label) not in n.dims:
                continue
            sel = Selector(
                (
                    Matcher("__name__", "=", "counters_count"),
                    Matcher("project", "=", p),
                    Matcher("name", "=", n.name),
                    Matcher(label, "!=", ""),
                )
            )
            got = await ev.evaluate(sel, window)
            assert not isinstance(got, float)
            values.update(s.labels[label] for s in got if label in s.labels)
    return sorted(values - {"__other__"})


async def _series(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    matches = params.get("match[]", [])
    if not matches:
        raise PromError("no match[] parameter provided")
    out: list[dict[str, str]] = []
    for text in matches:
        expr = _parse(text)
        if not isinstance(expr, Selector):
            raise PromError("match[] must be a series selector")
        eq = {m.label: m.value for m in expr.matchers if m.op == "=" and m.label not in LABELS}
        for metric, _, project, names in await ev.matched(expr):
            out.extend({"__name__": metric, "project": project, "name": n, **eq} for n in names)
    return list({tuple(sorted(d.items())): d for d in out}.values())


async def _buildinfo(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    return {
        "version": "2.40.0",
        "revision": f"counters-{_counters_version()}",
        "branch": "counters",
        "buildUser": "counters",
        "buildDate": "",
        "goVersion": "",
    }


async def _metadata(request: Request, params: dict[str, list[str]], ev: Evaluator) -> Any:
    help_ = {
        "count": "events",
        "sum": "sum of event values",
        "uniques": "distinct uids (HyperLogLog)",
    }
    return {m: [{"type": "gauge", "help": help_[k], "unit": ""}] for m, k in METRICS.items()}


query_range = endpoint(_query_range)
query = endpoint(_query)
labels = endpoint(_labels)
label_values = endpoint(_label_values)
series = endpoint(_series)
buildinfo = endpoint(_buildinfo)
metadata = endpoint(_metadata)
