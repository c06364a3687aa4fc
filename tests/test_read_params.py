"""Unit tests for read parameter parsing (counters.engines.read.parse)."""

from __future__ import annotations

import pytest

from counters.core.buckets import HOUR_MS, Grain, format_ts, parse_ts
from counters.core.errors import BadRequest
from counters.core.rollups import Rollup
from counters.engines.read.parse import DEFAULT_BUCKETS, ReadQuery, parse_read

NOW = parse_ts("2026-11-23T10:17:30.250Z")
CROSSTABS: tuple[Rollup, ...] = (("country", "source"),)


def ts(text: str) -> int:
    return parse_ts(text)


def read(params: dict[str, str], crosstabs: tuple[Rollup, ...] = CROSSTABS) -> ReadQuery:
    return parse_read({"name": "click", **params}, NOW, crosstabs)


def bad(params: dict[str, str], crosstabs: tuple[Rollup, ...] = CROSSTABS) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        read(params, crosstabs)
    assert info.value.status == 400
    return info.value


# --- parse_read: defaults and ranges --------------------------------------------------------


def test_defaults() -> None:
    q = read({})
    assert q.name == "click"
    assert q.measure == "count"
    assert q.grain is Grain.hour
    assert q.rollup == ()
    assert q.values == ()
    assert q.end == ts("2026-11-23T10:00:00Z")
    assert q.start == q.end - DEFAULT_BUCKETS * HOUR_MS
    assert format_ts(q.start) == "2026-11-22T04:00:00Z"


@pytest.mark.parametrize(
    ("grain", "current_start"),
    [
        (Grain.minute, "2026-11-23T10:17:00Z"),
        (Grain.hour, "2026-11-23T10:00:00Z"),
        (Grain.day, "2026-11-23T00:00:00Z"),
    ],
)
def test_default_range_is_last_30_buckets(grain: Grain, current_start: str) -> None:
    q = read({"grain": grain.name})
    assert q.grain is grain
    assert q.end == ts(current_start)
    assert q.start == ts(current_start) - 30 * grain.value
    assert (q.end - q.start) // grain.value == 30

    for flag in ("false", "0", "no", "FALSE"):
        q = read({"grain": grain.name, "excluding_current": flag})
        assert q.end == ts(current_start) + grain.value
        assert q.start == ts(current_start) + grain.value - 30 * grain.value

    for flag in ("true", "1", "yes", "True"):
        assert read({"grain": grain.name, "excluding_current": flag}).end == ts(current_start)


def test_bad_excluding_current() -> None:
    err = bad({"excluding_current": "maybe"})
    assert err.code == "bad_parameter"
    assert "excluding_current" in err.message


def test_from_rounded_down_and_to_rounded_up() -> None:
    q = read({"from": "2026-11-20T03:17:00Z", "to": "2026-11-21T05:00:00.001Z"})
    assert q.start == ts("2026-11-20T03:00:00Z")
    assert q.end == ts("2026-11-21T06:00:00Z")

    q = read({"grain": "minute", "from": "2026-11-23T09:00:59.999Z", "to": "2026-11-23T09:05:01Z"})
    assert (q.start, q.end) == (ts("2026-11-23T09:00:00Z"), ts("2026-11-23T09:06:00Z"))

    q = read({"grain": "day", "from": "2026-11-20T23:59:59Z", "to": "2026-11-21T00:00:01Z"})
    assert (q.start, q.end) == (ts("2026-11-20T00:00:00Z"), ts("2026-11-22T00:00:00Z"))


def test_from_and_to_on_boundaries_are_kept() -> None:
    q = read({"from": "2026-11-20T03:00:00Z", "to": "2026-11-21T05:00:00Z"})
    assert (q.start, q.end) == (ts("2026-11-20T03:00:00Z"), ts("2026-11-21T05:00:00Z"))


def test_from_and_to_as_epoch_ms_and_offsets() -> None:
    q = read({"from": str(ts("2026-11-20T03:00:00Z")), "to": "2026-11-21T07:00:00+02:00"})
    assert (q.start, q.end) == (ts("2026-11-20T03:00:00Z"), ts("2026-11-21T05:00:00Z"))


def test_only_to_gives_30_buckets_before_it() -> None:
    q = read({"to": "2026-11-21T05:30:00Z"})
    assert q.end == ts("2026-11-21T06:00:00Z")
    assert q.start == q.end - 30 * HOUR_MS


def test_only_from_runs_to_the_current_bucket() -> None:
    q = read({"from": "2026-11-23T01:10:00Z"})
    assert (q.start, q.end) == (ts("2026-11-23T01:00:00Z"), ts("2026-11-23T10:00:00Z"))
    q = read({"from": "2026-11-23T01:10:00Z", "excluding_current": "false"})
    assert q.end == ts("2026-11-23T11:00:00Z")


def test_to_in_the_future_is_capped() -> None:
    q = read({"from": "2026-11-23T01:00:00Z", "to": "2026-12-01T00:00:00Z"})
    assert q.end == ts("2026-11-23T10:00:00Z")
    q = read(
        {"from": "2026-11-23T01:00:00Z", "to": "2026-12-01T00:00:00Z", "excluding_current": "0"}
    )
    assert q.end == ts("2026-11-23T11:00:00Z")


@pytest.mark.parametrize(
    ("to", "excluding_current", "end"),
    [
        ("2026-12-01T00:00:00Z", "true", "2026-11-23T10:00:00Z"),  # 400 today
        ("2026-12-01T00:00:00Z", "false", "2026-11-23T11:00:00Z"),  # 400 today
        ("2026-11-23T11:30:00Z", "true", "2026-11-23T10:00:00Z"),  # 28 buckets today
    ],
)
def test_only_future_to_gives_30_buckets_before_the_capped_end(
    to: str, excluding_current: str, end: str
) -> None:
    q = read({"to": to, "excluding_current": excluding_current})
    assert q.end == ts(end)
    assert q.start == ts(end) - DEFAULT_BUCKETS * HOUR_MS


def test_empty_range_is_allowed() -> None:
    q = read({"from": "2026-11-23T05:00:00Z", "to": "2026-11-23T05:00:00Z"})
    assert q.start == q.end == ts("2026-11-23T05:00:00Z")


@pytest.mark.parametrize(
    ("params"),
    [
        {"from": "2026-11-23T06:00:00Z", "to": "2026-11-23T05:00:00Z"},
        {"from": "2026-11-23T06:00:00Z", "to": "2026-11-23T04:59:00Z"},
        {"grain": "day", "from": "2026-11-22T00:00:00Z", "to": "2026-11-20T12:00:00Z"},
        {"from": "2026-11-24T00:00:00Z"},  # after the current bucket
    ],
)
def test_from_after_to(params: dict[str, str]) -> None:
    err = bad(params)
    assert err.code == "bad_parameter"
    assert "from" in err.message


def test_from_after_to_within_one_bucket() -> None:
    bad({"from": "2026-11-23T05:40:00Z", "to": "2026-11-23T05:20:00Z"})


@pytest.mark.parametrize("param", ["from", "to"])
@pytest.mark.parametrize("value", ["yesterday", "2026-11-23T05:00:00", ""])
def test_bad_timestamps(param: str, value: str) -> None:
    err = bad({param: value})
    assert err.code == "bad_parameter"
    assert "from/to" in err.message


# --- parse_read: name, measure, grain -------------------------------------------------------


@pytest.mark.parametrize("measure", ["count", "sum", "uniques"])
def test_measures(measure: str) -> None:
    assert read({"measure": measure}).measure == measure


@pytest.mark.parametrize("measure", ["avg", "COUNT", "", "counts"])
def test_unknown_measure(measure: str) -> None:
    err = bad({"measure": measure})
    assert err.code == "bad_parameter"
    assert "measure" in err.message


@pytest.mark.parametrize("grain", ["week", "Hour", "h", "", "second"])
def test_unknown_grain(grain: str) -> None:
    err = bad({"grain": grain})
    assert err.code == "bad_parameter"
    assert "grain" in err.message


def test_name_required_and_validated() -> None:
    for params in ({}, {"name": ""}):
        with pytest.raises(BadRequest, match="name"):
            parse_read(params, NOW, CROSSTABS)
    for name in ("Click", "a b", "a" * 65):
        with pytest.raises(BadRequest, match="name"):
            parse_read({"name": name}, NOW, CROSSTABS)
    assert parse_read({"name": "page.view"}, NOW, ()).name == "page.view"


# --- parse_read: filters and rollups --------------------------------------------------------


def test_single_dim_filter_needs_no_crosstab() -> None:
    q = read({"country": "DE"}, crosstabs=())
    assert q.rollup == ("country",)
    assert q.values == ("DE",)


def test_two_dims_without_crosstab_fall_back_to_the_raw_log() -> None:
    q = read({"source": "web", "country": "DE"}, crosstabs=())
    assert (q.source, q.rollup) == ("raw", ("country", "source"))
    assert read({"source": "web", "device": "ios"}).source == "raw"
    assert read({"source": "web", "country": "DE"}).source == "rollups"


def test_two_dims_with_crosstab() -> None:
    q = read({"source": "web", "country": "DE", "grain": "day"})
    assert q.rollup == ("country", "source")
    assert q.values == ("DE", "web")
    q = read({"country": "DE", "source": "web"})
    assert (q.rollup, q.values) == (("country", "source"), ("DE", "web"))


def test_three_dims_need_their_own_crosstab() -> None:
    params = {"country": "DE", "source": "web", "device": "ios"}
    assert read(params).source == "raw"
    q = read(params, crosstabs=(("country", "source"), ("country", "device", "source")))
    assert q.rollup == ("country", "device", "source")
    assert q.values == ("DE", "ios", "web")


def test_breakdown_needs_the_filters_rollup_too() -> None:
    """__none__ is the filters' own rollup minus every tuple: without that rollup stored, a
    breakdown comes from the raw log even if its cross-tab is stored."""
    tabs = (("country", "device", "source"),)
    params = {"country": "DE", "source": "web", "group_by": "device"}
    q = read(params, crosstabs=tabs)
    assert (q.source, q.rollup) == ("raw", ("country", "device", "source"))
    both = read(params, crosstabs=(*tabs, ("country", "source")))
    assert both.source == "rollups"
    assert read({"country": "DE", "group_by": "source"}).source == "rollups"
    assert read({"group_by": "country,source"}).source == "rollups"


@pytest.mark.parametrize("dim", ["Country", "bad-dim", "a.b", "a" * 33, "utm source"])
def test_bad_dim_name(dim: str) -> None:
    err = bad({dim: "x"})
    assert err.code == "bad_parameter"
    assert repr(dim) in err.message


@pytest.mark.parametrize("value", ["", "a" * 257, "€" * 86])
def test_bad_filter_value(value: str) -> None:
    err = bad({"country": value})
    assert err.code == "bad_parameter"
    assert "country" in err.message


def test_filter_value_up_to_256_bytes() -> None:
    assert read({"country": "😀" * 64}).values == ("😀" * 64,)
