"""The batch body -> queries (pure): shape errors name the query, common merges under each
query's own parameters, a list is the parameter repeated, and the merged parameters go
through parse_read as a query string would."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.datastructures import QueryParams

from counters.core.buckets import parse_ts
from counters.core.errors import BadRequest
from counters.engines.read.batch import MAX_QUERIES, Params, decode_batch, merged, parse_batch
from counters.engines.read.parse import parse_read

NOW = parse_ts("2026-04-15T12:00:30Z")


def _error(body: Any) -> str:
    with pytest.raises(BadRequest) as exc:
        parse_batch(body)
    assert exc.value.code == "bad_parameter"
    return exc.value.message


def test_common_merges_under_each_query_and_lists_repeat() -> None:
    (a, b, cat) = parse_batch(
        {
            "common": {"precision": "1h", "name": "click", "from": "2026-04-15T00:00:00Z"},
            "queries": [
                {"id": "a", "kind": "series", "name": ["click", "signup"]},
                {"id": "b", "kind": "total", "precision": "1d", "group_by": []},
                {"id": "cat", "kind": "catalog"},
            ],
        }
    )
    assert (a.kind, b.kind, cat.kind) == ("series", "total", "catalog")
    assert a.params.getlist("name") == ["click", "signup"] and a.params["precision"] == "1h"
    assert b.params["precision"] == "1d" and b.params.getlist("name") == ["click"]
    assert "group_by" not in b.params and len(cat.params) == 0
    assert a.where == 'queries[0] (id "a")'
    q = parse_read(a.params, NOW, ())
    assert q.names == ("click", "signup") and q.precision == "1h"


def test_params_read_like_a_query_string() -> None:
    items = [("name", "a"), ("name", "b"), ("d.country", "DE"), ("limit", "3")]
    ours, theirs = Params(items), QueryParams(items)
    assert dict(ours) == dict(theirs) and ours["name"] == theirs["name"]
    assert ours.getlist("name") == theirs.getlist("name")
    assert ours.multi_items() == theirs.multi_items()
    assert merged({"x": ["1"]}, {"x": [], "y": ["2", "3"]}).multi_items() == [
        ("y", "2"),
        ("y", "3"),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "a batch is a JSON object"),
        ({"queries": []}, "queries is required: a list of 1..50 queries"),
        ({"quries": []}, "unknown batch field 'quries'"),
        ({"common": [], "queries": [{}]}, "common: must be an object of read parameters"),
        ({"common": {"id": "x"}, "queries": [{}]}, "common: 'id' belongs to each query"),
        ({"queries": [1]}, "queries[0]: must be an object"),
        ({"queries": [{"kind": "series"}]}, "queries[0]: id is required"),
        ({"queries": [{"id": "x" * 65, "kind": "series"}]}, "queries[0]: id is required"),
        ({"queries": [{"id": "a", "kind": "sries"}]}, 'queries[0] (id "a"): kind must be one of'),
        (
            {"queries": [{"id": "a", "kind": "total"}, {"id": "a", "kind": "series"}]},
            'queries[1] (id "a"): duplicate id (also queries[0])',
        ),
        (
            {"queries": [{"id": "a", "kind": "series", "limit": 5}]},
            "queries[0] (id \"a\"): parameter 'limit' must be a string or a list of strings",
        ),
        (
            {"queries": [{"id": "a", "kind": "series", "name": ["x", 1]}]},
            "parameter 'name' must be a string or a list of strings",
        ),
        (
            {"queries": [{"id": "a", "kind": "series", "format": "csv"}]},
            'queries[0] (id "a"): format must be json inside a batch',
        ),
        ({"common": {"format": "long"}, "queries": [{}]}, "common: format must be json"),
        (
            {"queries": [{"id": "c", "kind": "catalog", "name": "x"}]},
            "catalog takes no parameters (got 'name')",
        ),
    ],
)
def test_bad_shapes_are_named(body: Any, message: str) -> None:
    assert message in _error(body)


def test_at_most_max_queries() -> None:
    queries = [{"id": str(i), "kind": "catalog"} for i in range(MAX_QUERIES)]
    assert len(parse_batch({"queries": queries})) == MAX_QUERIES
    over = [*queries, {"id": "x", "kind": "catalog"}]
    assert _error({"queries": over}) == f"at most {MAX_QUERIES} queries per batch (got 51)"


@pytest.mark.parametrize("data", [b"", b"  ", b"{", "{'a': 1}", b"\xff"])
def test_malformed_json(data: bytes | str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode_batch(data)
    assert exc.value.code == "malformed_json" and "batch" in exc.value.message
