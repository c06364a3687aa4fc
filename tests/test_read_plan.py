"""Unit tests for read planning (counters.engines.read.plan): range decomposition into
stored buckets, the cells of each output period, the size bound and minute retention."""

from __future__ import annotations

import random
from zoneinfo import ZoneInfo

import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, format_ts, parse_ts
from counters.core.errors import BadRequest
from counters.core.periods import PRECISIONS, periods, shortest_period_ms
from counters.engines.read.parse import ReadQuery, parse_read
from counters.engines.read.plan import (
    MAX_SERIES_BUCKETS,
    decompose,
    flatten,
    need,
    plan,
    series_plan,
    span_cells,
)

NOW = parse_ts("2026-11-23T10:17:30.250Z")


def ts(text: str) -> int:
    return parse_ts(text)


def read(**params: str) -> ReadQuery:
    return parse_read({"name": "click", **params}, NOW, ())


# --- decompose ------------------------------------------------------------------------------


def bucket_ranges(start: int, end: int) -> list[tuple[Grain, int, int]]:
    """Every bucket of decompose(start, end) as (grain, lo, hi), in range order."""
    out = [(g, b, b + g.value) for g, buckets in decompose(start, end) for b in buckets]
    return sorted(out, key=lambda r: r[1])


def assert_tiles(start: int, end: int) -> list[tuple[Grain, int, int]]:
    ranges = bucket_ranges(start, end)
    assert sum(hi - lo for _, lo, hi in ranges) == end - start
    pos = start
    for grain, lo, hi in ranges:
        assert lo == pos, f"gap or overlap at {format_ts(pos)}"
        assert lo % grain.value == 0, "bucket not aligned to its grain"
        pos = hi
    assert pos == end
    return ranges


def test_decompose_morning_to_next_night() -> None:
    start, end = ts("2026-11-23T10:17:00Z"), ts("2026-11-24T03:05:00Z")
    pieces = decompose(start, end)
    assert [(g, len(b)) for g, b in pieces] == [
        (Grain.minute, 43),
        (Grain.hour, 16),
        (Grain.minute, 5),
    ]
    (m1, first), (h, hours), (m2, last) = pieces
    assert list(first) == list(range(start, ts("2026-11-23T11:00:00Z"), MINUTE_MS))
    assert list(hours) == list(
        range(ts("2026-11-23T11:00:00Z"), ts("2026-11-24T03:00:00Z"), HOUR_MS)
    )
    assert list(last) == list(range(ts("2026-11-24T03:00:00Z"), end, MINUTE_MS))
    assert_tiles(start, end)


def test_decompose_uses_whole_days() -> None:
    start, end = ts("2026-11-20T22:58:00Z"), ts("2026-11-24T01:02:00Z")
    pieces = [(g, [format_ts(b) for b in bs]) for g, bs in decompose(start, end)]
    assert pieces == [
        (Grain.minute, ["2026-11-20T22:58:00Z", "2026-11-20T22:59:00Z"]),
        (Grain.hour, ["2026-11-20T23:00:00Z"]),
        (Grain.day, ["2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z", "2026-11-23T00:00:00Z"]),
        (Grain.hour, ["2026-11-24T00:00:00Z"]),
        (Grain.minute, ["2026-11-24T01:00:00Z", "2026-11-24T01:01:00Z"]),
    ]
    assert_tiles(start, end)


@pytest.mark.parametrize(
    ("start", "end", "grains"),
    [
        ("2026-11-23T00:00:00Z", "2026-11-25T00:00:00Z", [Grain.day]),
        ("2026-11-23T10:00:00Z", "2026-11-23T12:00:00Z", [Grain.hour]),
        ("2026-11-23T10:17:00Z", "2026-11-23T10:18:00Z", [Grain.minute]),
        ("2026-11-23T10:17:00Z", "2026-11-23T10:59:00Z", [Grain.minute]),
        ("2026-11-23T00:00:00Z", "2026-11-24T00:01:00Z", [Grain.day, Grain.minute]),
        ("2026-11-22T23:59:00Z", "2026-11-24T00:00:00Z", [Grain.minute, Grain.day]),
        ("2028-02-28T12:00:00Z", "2028-03-01T12:00:00Z", [Grain.hour, Grain.day, Grain.hour]),
    ],
)
def test_decompose_grains(start: str, end: str, grains: list[Grain]) -> None:
    assert [g for g, _ in decompose(ts(start), ts(end))] == grains
    assert_tiles(ts(start), ts(end))


def test_decompose_empty_range() -> None:
    assert decompose(ts("2026-11-23T10:00:00Z"), ts("2026-11-23T10:00:00Z")) == []


def test_decompose_random_ranges_tile_with_fewest_buckets() -> None:
    rng = random.Random(20261123)
    base = ts("2026-11-01T00:00:00Z")
    for _ in range(300):
        a = base + rng.randrange(0, 10 * DAY_MS // MINUTE_MS) * MINUTE_MS
        b = a + rng.randrange(0, 4 * DAY_MS // MINUTE_MS) * MINUTE_MS
        ranges = assert_tiles(a, b)
        # fewest buckets: no run of minutes covers a whole hour, no run of hours a whole day
        minutes = {lo for g, lo, _ in ranges if g is Grain.minute}
        hours = {lo for g, lo, _ in ranges if g is Grain.hour}
        for lo in minutes:
            if lo % HOUR_MS == 0:
                assert not all(lo + i * MINUTE_MS in minutes for i in range(60))
        for lo in hours:
            if lo % DAY_MS == 0:
                assert not all(lo + i * HOUR_MS in hours for i in range(24))


# --- plan -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"precision": "1h"},
        {"precision": "1m"},
        {"precision": "1d"},
        {"precision": "15m", "tz": "Asia/Kolkata"},
        {"precision": "1d", "tz": "America/New_York", "from": "2026-10-25T00:00:00Z"},
        {"precision": "1w", "tz": "Europe/Berlin", "from": "2026-09-01T00:00:00Z"},
        {"precision": "1mo", "tz": "Asia/Kathmandu", "from": "2025-12-01T00:00:00Z"},
        {"precision": "1h", "tz": "Asia/Kolkata"},
    ],
)
def test_every_period_is_tiled_by_its_cells(params: dict[str, str]) -> None:
    q = read(**params)
    cells = plan(q)
    spans = periods(q.start, q.end, q.precision, q.tz)
    assert len(cells) == len(spans)
    for (s, e), period in zip(spans, cells, strict=True):
        lo = s - s % MINUTE_MS
        hi = e - e % MINUTE_MS
        assert sum(g.value for g, _ in period) == hi - lo
        assert sorted(period, key=lambda c: c[1])[0][1] == lo


def test_utc_hours_are_one_cell_each() -> None:
    q = read(precision="1h")
    assert plan(q) == [[(Grain.hour, b)] for b in range(q.start, q.end, HOUR_MS)]


def test_span_cells_round_down_to_minutes() -> None:
    cells = span_cells(ts("2026-11-23T09:59:30Z"), ts("2026-11-23T11:00:10Z"))
    assert cells == [
        (Grain.minute, ts("2026-11-23T09:59:00Z")),
        (Grain.hour, ts("2026-11-23T10:00:00Z")),
    ]


def test_need_and_flatten() -> None:
    a, b = (Grain.hour, 0), (Grain.minute, MINUTE_MS)
    assert need([[a, b], [b]]) == {Grain.hour: [0], Grain.minute: [MINUTE_MS]}
    assert flatten([[a, b], [b]]) == [a, b, b]


def test_too_many_buckets_refused_before_planning() -> None:
    q = read(precision="1m", **{"from": "2000-01-01T00:00:00Z"})
    with pytest.raises(BadRequest) as info:
        series_plan(q, 0)
    assert info.value.code == "too_many_buckets"
    q = read(precision="1m", **{"from": format_ts(NOW - MAX_SERIES_BUCKETS * MINUTE_MS)})
    assert len(series_plan(q, 0)) == MAX_SERIES_BUCKETS


def test_minute_cells_past_retention_refused() -> None:
    oldest = ts("2026-11-23T00:00:00Z")
    q = read(precision="15m", tz="Asia/Kathmandu", **{"from": "2026-11-22T12:00:00Z"})
    with pytest.raises(BadRequest) as info:
        series_plan(q, oldest)
    assert info.value.code == "past_retention"
    assert series_plan(read(precision="1h", **{"from": "2026-11-01T00:00:00Z"}), oldest)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_shortest_period_bounds_every_period(precision: str) -> None:
    rng = random.Random(precision)
    zones = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]
    for name in zones:
        tz = ZoneInfo(name)
        start = ts("2025-01-01T00:00:00Z") + rng.randrange(0, 400) * HOUR_MS
        q = parse_read(
            {"name": "x", "precision": precision, "tz": name, "from": format_ts(start)},
            ts("2026-12-31T00:00:00Z"),
            (),
        )
        for s, e in periods(q.start, min(q.end, q.start + 400 * DAY_MS), precision, tz):
            assert e - s >= shortest_period_ms(precision)
