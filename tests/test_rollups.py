"""Unit tests for counters.core.rollups: rollups and the field encoding."""

from __future__ import annotations

import pytest

from counters.core.rollups import (
    OTHER,
    US,
    Rollup,
    available_rollups,
    decode_field,
    encode_field,
    fields_for,
    parse_rollup_id,
    rollup_for_filters,
    rollup_id,
    single_dim_values,
)


def test_fields_for_total_and_one_per_dim() -> None:
    fields = fields_for("click", {"source": "web", "country": "DE"}, [])
    assert fields == [
        encode_field("click", (), ()),
        encode_field("click", ("country",), ("DE",)),
        encode_field("click", ("source",), ("web",)),
    ]
    assert fields[0] == "click" + US


def test_fields_for_no_dims_is_just_the_total() -> None:
    assert fields_for("click", {}, [("country", "source")]) == ["click" + US]


def test_crosstab_only_when_the_event_has_all_its_dims() -> None:
    crosstabs: list[Rollup] = [("country", "source"), ("country", "device"), ("a", "b", "c")]
    full = fields_for("click", {"country": "DE", "source": "web", "device": "ios"}, crosstabs)
    assert encode_field("click", ("country", "source"), ("DE", "web")) in full
    assert encode_field("click", ("country", "device"), ("DE", "ios")) in full
    assert not any(decode_field(f)[1] == ("a", "b", "c") for f in full)
    assert len(full) == 1 + 3 + 2

    partial = fields_for("click", {"country": "DE", "source": "web"}, crosstabs)
    assert encode_field("click", ("country", "source"), ("DE", "web")) in partial
    assert not any(decode_field(f)[1] == ("country", "device") for f in partial)
    assert len(partial) == 1 + 2 + 1

    assert len(fields_for("click", {"device": "ios"}, crosstabs)) == 2


def test_crosstab_values_follow_rollup_order_not_dict_order() -> None:
    (_, _, _, tab) = fields_for(
        "click", {"source": "web", "country": "DE"}, [("country", "source")]
    )
    assert decode_field(tab) == ("click", ("country", "source"), ("DE", "web"))


@pytest.mark.parametrize(
    ("name", "rollup", "values"),
    [
        ("click", (), ()),
        ("click", ("country",), ("DE",)),
        ("page.view", ("country", "source"), ("Zürich", "東京")),
        ("x", ("a", "b", "c"), ("😀", "ß", "a b,c:d")),
        ("x", ("city",), ("€" * 85,)),
        ("x", ("city",), ("",)),
    ],
)
def test_encode_decode_round_trip(name: str, rollup: Rollup, values: tuple[str, ...]) -> None:
    field = encode_field(name, rollup, values)
    assert decode_field(field) == (name, rollup, values)


def test_every_field_from_fields_for_decodes_to_its_dims() -> None:
    dims = {"country": "日本", "source": "wéb", "device": "📱"}
    crosstabs: list[Rollup] = [("country", "source"), ("device", "source")]
    decoded = [decode_field(f) for f in fields_for("ev", dims, crosstabs)]
    assert decoded == [
        ("ev", (), ()),
        ("ev", ("country",), ("日本",)),
        ("ev", ("device",), ("📱",)),
        ("ev", ("source",), ("wéb",)),
        ("ev", ("country", "source"), ("日本", "wéb")),
        ("ev", ("device", "source"), ("📱", "wéb")),
    ]
    for _, rollup, values in decoded:
        assert values == tuple(dims[d] for d in rollup)


def test_distinct_rollups_and_values_give_distinct_fields() -> None:
    fields = [
        encode_field("click", (), ()),
        encode_field("click", ("a",), ("b",)),
        encode_field("click", ("a", "b"), ("c", "d")),
        encode_field("click", ("a",), ("b,c",)),
        encode_field("click", ("b",), ("a",)),
        encode_field("clicks", (), ()),
    ]
    assert len(set(fields)) == len(fields)


@pytest.mark.parametrize("rollup", [(), ("country",), ("country", "source"), ("a", "b", "c")])
def test_rollup_id_round_trip(rollup: Rollup) -> None:
    assert parse_rollup_id(rollup_id(rollup)) == rollup


def test_rollup_helpers() -> None:
    assert rollup_id(()) == ""
    assert rollup_id(("country", "source")) == "country,source"
    assert rollup_for_filters(["source", "country", "source"]) == ("country", "source")
    assert rollup_for_filters([]) == ()
    assert available_rollups([("source", "country"), ("country", "source")]) == {
        ("country", "source")
    }


def test_single_dim_values_skips_totals_and_crosstabs() -> None:
    dims = {"country": "DE", "source": "a b:c"}
    fields = fields_for("click", dims, [("country", "source")])
    fields += fields_for("view", {**dims, "device": OTHER}, [])
    assert single_dim_values(fields) == {
        ("country", "DE"),
        ("source", "a b:c"),
        ("device", OTHER),
    }
    assert single_dim_values([encode_field("click", (), ())]) == set()
    assert single_dim_values([]) == set()
