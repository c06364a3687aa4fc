"""Unit tests for building read replies (counters.engines.read.reply) and the one rule for
what a measure reports (counters.core.measures)."""

from __future__ import annotations

from decimal import Decimal

import msgspec

from api.common import json_response
from counters.core.buckets import parse_ts
from counters.core.measures import measure_value, measure_values
from counters.engines.read.parse import ReadQuery, parse_read
from counters.engines.read.reply import (
    MultiSeriesReply,
    NamedSeries,
    NamedTotal,
    SeriesReply,
    grain_label,
    points,
    series_reply,
    total_reply,
)

NOW = parse_ts("2026-11-23T10:17:30Z")


def read(**params: str) -> ReadQuery:
    return parse_read({"name": "click", **params}, NOW, ())


def test_measure_value_is_count_or_exact_sum_in_units() -> None:
    assert measure_value("count", 3, 2_500_000) == 3
    assert measure_value("sum", 3, 2_500_000) == Decimal("2.5")
    assert measure_values("count", [1, 2]) == [1, 2]
    assert measure_values("sum", [1_000_000, 500_000]) == [Decimal(1), Decimal("0.5")]
    assert [type(v) for v in measure_values("sum", [0, 7, 10**12])] == [int, Decimal, Decimal]
    assert measure_values("sum", [12 * 999_999_999_999_999]) == [Decimal("11999999999.999988")]
    assert type(measure_value("count", 3, 0)) is int


def test_sum_replies_are_exact_json_numbers() -> None:
    """A sum goes from micros to JSON text without a float: 12 x 999999999.999999."""
    q = read(precision="1d", measure="sum", **{"from": "2026-11-22T00:00:00Z"})
    exact = measure_value("sum", 12, 12 * 999_999_999_999_999)
    body = json_response(total_reply(q, [NamedTotal("click", exact)])).body
    assert b'"value":11999999999.999988}' in body
    assert float(exact) == 11999999999.999989  # what a float would have said
    many = series_reply(q, [NamedSeries("click", {}, exact, points(q, [exact]))])
    assert bytes(json_response(many).body).count(b"11999999999.999988") == 1
    assert b'"value":0}' in json_response(total_reply(q, [NamedTotal("c", Decimal(0))])).body


def test_openapi_describes_sums_as_numbers() -> None:
    """msgspec describes a Decimal as a string; the API sends numbers, and says so."""
    from api.openapi import DECIMAL_SCHEMA
    from api.routes import document

    doc = document()
    text = msgspec.json.encode(doc).decode()
    assert '"format":"decimal"' not in text and DECIMAL_SCHEMA["format"] == "decimal"
    point = doc["components"]["schemas"]["Point"]["properties"]["value"]
    assert point == {"anyOf": [{"type": "integer"}, {"type": "number"}]}
    total = doc["components"]["schemas"]["TotalReply"]["properties"]["value"]
    assert total == point


def test_points_are_labelled_in_the_zone() -> None:
    q = read(precision="1h", tz="Asia/Kolkata", **{"from": "2026-11-23T04:30:00Z"})
    data = points(q, [0] * 5)
    assert [p.bucket for p in data][:2] == [
        "2026-11-23T10:00:00+05:30",
        "2026-11-23T11:00:00+05:30",
    ]
    utc = points(read(precision="1d", **{"from": "2026-11-21T00:00:00Z"}), [1, 2])
    assert [p.bucket for p in utc] == ["2026-11-21T00:00:00Z", "2026-11-22T00:00:00Z"]


def test_grain_label_names_the_alias_or_the_precision() -> None:
    assert grain_label(read(grain="minute")) == "minute"
    assert grain_label(read(precision="1d")) == "day"
    assert grain_label(read(precision="15m")) == "15m"


def test_reply_shapes() -> None:
    q = read(precision="1d", **{"from": "2026-11-22T00:00:00Z"})
    one = series_reply(q, [NamedSeries("click", {}, 4, points(q, [4]))])
    assert isinstance(one, SeriesReply)
    assert msgspec.json.decode(msgspec.json.encode(one))["from"] == "2026-11-22T00:00:00Z"
    many = parse_read(
        {"name": "click", "precision": "1d", "from": "2026-11-22T00:00:00Z", "group_by": "os"},
        NOW,
        (),
    )
    assert isinstance(series_reply(many, []), MultiSeriesReply)
    total = total_reply(q, [NamedTotal("click", 4)])
    assert msgspec.json.decode(msgspec.json.encode(total)) == {
        "name": "click",
        "measure": "count",
        "from": "2026-11-22T00:00:00Z",
        "to": "2026-11-23T00:00:00Z",
        "value": 4,
    }
