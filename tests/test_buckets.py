"""Unit tests for counters.core.buckets: bucket math, formatting and parsing of timestamps."""

from __future__ import annotations

import calendar

import pytest

from counters.core.buckets import (
    DAY_MS,
    GRAIN_BY_NAME,
    GRAIN_BY_SHORT,
    GRAINS,
    HOUR_MS,
    MINUTE_MS,
    Grain,
    bucket_ceil,
    bucket_start,
    format_ts,
    parse_ts,
)


def ms(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, milli: int = 0
) -> int:
    """Epoch ms of a UTC wall-clock time, computed independently of counters.core.buckets."""
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) * 1000 + milli


# --- grains ---------------------------------------------------------------------------------


def test_grain_sizes_and_lookups() -> None:
    assert (Grain.minute.value, Grain.hour.value, Grain.day.value) == (
        60_000,
        3_600_000,
        86_400_000,
    )
    assert (MINUTE_MS, HOUR_MS, DAY_MS) == (60_000, 3_600_000, 86_400_000)
    assert [g.short for g in GRAINS] == ["m", "h", "d"]
    assert GRAIN_BY_NAME == {"minute": Grain.minute, "hour": Grain.hour, "day": Grain.day}
    assert GRAIN_BY_SHORT == {"m": Grain.minute, "h": Grain.hour, "d": Grain.day}


# --- bucket_start / bucket_ceil at boundaries -----------------------------------------------

BOUNDARIES = [
    (Grain.minute, ms(2026, 11, 23, 10, 17)),
    (Grain.hour, ms(2026, 11, 23, 10)),
    (Grain.day, ms(2026, 11, 23)),
]
BOUNDARY_IDS = ["minute", "hour", "day"]


@pytest.mark.parametrize(("grain", "boundary"), BOUNDARIES, ids=BOUNDARY_IDS)
def test_exactly_on_boundary(grain: Grain, boundary: int) -> None:
    assert bucket_start(boundary, grain) == boundary
    assert bucket_ceil(boundary, grain) == boundary


@pytest.mark.parametrize(("grain", "boundary"), BOUNDARIES, ids=BOUNDARY_IDS)
def test_one_ms_before_boundary(grain: Grain, boundary: int) -> None:
    assert bucket_start(boundary - 1, grain) == boundary - grain.value
    assert bucket_ceil(boundary - 1, grain) == boundary


@pytest.mark.parametrize(("grain", "boundary"), BOUNDARIES, ids=BOUNDARY_IDS)
def test_one_ms_after_boundary(grain: Grain, boundary: int) -> None:
    assert bucket_start(boundary + 1, grain) == boundary
    assert bucket_ceil(boundary + 1, grain) == boundary + grain.value


def test_boundaries_in_wall_clock_terms() -> None:
    t = ms(2026, 11, 23, 10, 17, 42, 250)
    assert bucket_start(t, Grain.minute) == ms(2026, 11, 23, 10, 17)
    assert bucket_start(t, Grain.hour) == ms(2026, 11, 23, 10)
    assert bucket_start(t, Grain.day) == ms(2026, 11, 23)
    assert bucket_ceil(t, Grain.minute) == ms(2026, 11, 23, 10, 18)
    assert bucket_ceil(t, Grain.hour) == ms(2026, 11, 23, 11)
    assert bucket_ceil(t, Grain.day) == ms(2026, 11, 24)


def test_leap_day_2028() -> None:
    leap = ms(2028, 2, 29)
    noon = ms(2028, 2, 29, 12, 34, 56, 789)
    assert bucket_start(noon, Grain.day) == leap
    assert format_ts(bucket_start(noon, Grain.day)) == "2028-02-29T00:00:00Z"
    late = ms(2028, 2, 29, 23, 30)
    assert bucket_start(late, Grain.hour) == ms(2028, 2, 29, 23)
    assert format_ts(bucket_start(late, Grain.hour)) == "2028-02-29T23:00:00Z"
    # the day after the leap day is 1 March, one day later
    assert bucket_ceil(noon, Grain.day) == ms(2028, 3, 1) == leap + DAY_MS
    assert format_ts(bucket_ceil(noon, Grain.day)) == "2028-03-01T00:00:00Z"
    last_ms = ms(2028, 2, 29, 23, 59, 59, 999)
    assert bucket_start(last_ms, Grain.day) == leap
    assert bucket_start(last_ms + 1, Grain.day) == ms(2028, 3, 1)


def test_year_end() -> None:
    t = ms(2026, 12, 31, 23, 59, 59, 999)
    assert t == parse_ts("2026-12-31T23:59:59.999Z")
    assert format_ts(bucket_start(t, Grain.day)) == "2026-12-31T00:00:00Z"
    assert format_ts(bucket_start(t, Grain.hour)) == "2026-12-31T23:00:00Z"
    assert format_ts(bucket_start(t, Grain.minute)) == "2026-12-31T23:59:00Z"
    for grain in GRAINS:
        assert format_ts(bucket_start(t + 1, grain)) == "2027-01-01T00:00:00Z"
        assert bucket_ceil(t, grain) == t + 1


def test_negative_epoch() -> None:
    # 1969-12-31T23:59:59.999Z is -1 ms: its buckets are in 1969, not rounded towards zero
    assert bucket_start(-1, Grain.minute) == -MINUTE_MS
    assert bucket_start(-1, Grain.hour) == -HOUR_MS
    assert bucket_start(-1, Grain.day) == -DAY_MS
    assert bucket_ceil(-1, Grain.day) == 0
    assert bucket_ceil(-DAY_MS, Grain.day) == -DAY_MS
    assert bucket_ceil(-DAY_MS - 1, Grain.day) == -DAY_MS
    t = ms(1969, 7, 20, 20, 17, 40, 123)
    assert t < 0
    assert bucket_start(t, Grain.day) == ms(1969, 7, 20)
    assert bucket_start(t, Grain.hour) == ms(1969, 7, 20, 20)
    assert bucket_start(t, Grain.minute) == ms(1969, 7, 20, 20, 17)
    assert bucket_ceil(t, Grain.hour) == ms(1969, 7, 20, 21)
    assert format_ts(t) == "1969-07-20T20:17:40.123Z"
    assert format_ts(-1) == "1969-12-31T23:59:59.999Z"
    assert parse_ts("1969-12-31T23:59:59.999Z") == -1
    assert parse_ts("-86400000") == -DAY_MS


# --- format_ts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts_ms", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (ms(2026, 11, 23, 10), "2026-11-23T10:00:00Z"),
        (ms(2026, 11, 23, 10, 0, 5), "2026-11-23T10:00:05Z"),
        (ms(2026, 11, 23, 10, 0, 5, 5), "2026-11-23T10:00:05.005Z"),
        (ms(2026, 11, 23, 10, 0, 5, 120), "2026-11-23T10:00:05.120Z"),
        (ms(2026, 11, 23, 10, 0, 5, 999), "2026-11-23T10:00:05.999Z"),
        (ms(2028, 2, 29, 23, 59, 59, 1), "2028-02-29T23:59:59.001Z"),
    ],
)
def test_format_ts(ts_ms: int, text: str) -> None:
    assert format_ts(ts_ms) == text
    assert parse_ts(text) == ts_ms


# --- parse_ts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T10:00:00Z", ms(2026, 11, 23, 10)),
        ("2026-11-23T10:00:00z", ms(2026, 11, 23, 10)),
        ("2026-11-23t10:00:00Z", ms(2026, 11, 23, 10)),
        ("2026-11-23 10:00:00Z", ms(2026, 11, 23, 10)),
        ("  2026-11-23T10:00:00Z  ", ms(2026, 11, 23, 10)),
        ("2026-11-23T10:00:00+00:00", ms(2026, 11, 23, 10)),
        ("2026-11-23T12:00:00+02:00", ms(2026, 11, 23, 10)),
        ("2026-11-23T01:30:00+02:00", ms(2026, 11, 22, 23, 30)),
        ("2026-11-23T10:00:00-05:30", ms(2026, 11, 23, 15, 30)),
        ("2026-11-23T10:00:00.5Z", ms(2026, 11, 23, 10, 0, 0, 500)),
        ("2026-11-23T10:00:00.123Z", ms(2026, 11, 23, 10, 0, 0, 123)),
        ("2026-11-23T10:00:00.123456Z", ms(2026, 11, 23, 10, 0, 0, 123)),
        ("2026-11-23T10:00:00.999999Z", ms(2026, 11, 23, 10, 0, 0, 999)),
        ("2026-11-23T10:00:00.123456789Z", ms(2026, 11, 23, 10, 0, 0, 123)),
        ("2026-11-23T12:00:00.250+02:00", ms(2026, 11, 23, 10, 0, 0, 250)),
    ],
)
def test_parse_rfc3339(text: str, expected: int) -> None:
    assert parse_ts(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1_795_428_000_123, 1_795_428_000_123),
        (-1, -1),
        ("1795428000123", 1_795_428_000_123),
        (" 1795428000123 ", 1_795_428_000_123),
        ("0", 0),
        ("-1000", -1000),
    ],
)
def test_parse_epoch_ms(value: str | int, expected: int) -> None:
    result = parse_ts(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-23T10:00:00",  # naive, no offset
        "2026-11-23T10:00:00.123",  # naive with fraction
        "2026-11-23T10:00:00.123456",  # naive, long enough to pass the length check
        "2026-11-23",
        "",
        "   ",
        "-",
        "garbage",
        "yesterday at noon, roughly",
        "2026-13-23T10:00:00Z",  # month 13
        "2026-02-30T10:00:00Z",  # no such day
        "2026-11-23T25:00:00Z",
        "2026-11-23X10:00:00Z",
        "1795428000123.5",
        "1e12",
        "NaN",
        "nan",
        "inf",
    ],
)
def test_parse_rejects_bad_strings(value: str) -> None:
    with pytest.raises(ValueError):
        parse_ts(value)


def test_parse_rejects_naive_with_reason() -> None:
    with pytest.raises(ValueError, match="offset"):
        parse_ts("2026-11-23T10:00:00.123")


@pytest.mark.parametrize("value", [True, False, float("nan"), float("inf"), float("-inf")])
def test_parse_rejects_bools_and_non_finite(value: bool | float) -> None:
    with pytest.raises(ValueError):
        parse_ts(value)
