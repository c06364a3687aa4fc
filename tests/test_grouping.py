"""Unit tests for rollup fields (core.rollups) and batch grouping (engines.ingest)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from counters.core.config import load_settings
from counters.core.models import RawEvent
from counters.core.rollups import (
    Rollup,
    available_rollups,
    decode_field,
    encode_field,
    fields_for,
    parse_rollup_id,
    rollup_for_filters,
    rollup_id,
)
from counters.engines.ingest import OTHER, group_events, plan_batch
from lua.keys import US

T0 = 1_795_428_000_000  # 2026-11-23T10:00:00Z, a day boundary + 10 h
MIN = 60_000
HOUR = 3_600_000
DAY = 86_400_000


def event(
    ts: int,
    dims: dict[str, str] | None = None,
    *,
    name: str = "click",
    value: int = 0,
    uid: str | None = None,
) -> RawEvent:
    return RawEvent(name, ts, None, dims or {}, value, uid, ts)


def by_key(groups: list[list[Any]]) -> dict[tuple[str, int, str], list[Any]]:
    """Groups keyed by (grain, bucket, field); fails if a key appears twice."""
    out: dict[tuple[str, int, str], list[Any]] = {}
    for g in groups:
        key = (g[0], int(g[1]), g[2])
        assert key not in out, f"duplicate group {key}"
        out[key] = g
    return out


# --- field encoding -------------------------------------------------------------------------


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


# --- group_events ---------------------------------------------------------------------------


def test_group_shape() -> None:
    (m, h, d) = group_events([event(T0 + 17 * MIN + 5_000, value=2_500_000, uid="u1")], [])
    assert m == ["m", str(T0 + 17 * MIN), "click" + US, 1, "2500000", ["u1"]]
    assert h == ["h", str(T0), "click" + US, 1, "2500000", ["u1"]]
    assert d == ["d", str(T0 - 10 * HOUR), "click" + US, 1, "2500000", ["u1"]]


def test_same_grain_bucket_field_collapse_into_one_group() -> None:
    ts = T0 + 17 * MIN
    events = [
        event(ts + 1_000, {"country": "DE"}, value=1_000_000, uid="zoe"),
        event(ts + 2_000, {"country": "DE"}, value=2_500_000, uid="adam"),
        event(ts + 59_999, {"country": "DE"}, value=-500_000, uid="zoe"),
        event(ts, {"country": "DE"}, value=0, uid=None),
    ]
    groups = by_key(group_events(events, []))
    assert len(groups) == 3 * 2  # (total, country) x (m, h, d)
    for grain, bucket in (("m", ts), ("h", T0), ("d", T0 - 10 * HOUR)):
        for field in ("click" + US, encode_field("click", ("country",), ("DE",))):
            g = groups[(grain, bucket, field)]
            assert g[3] == 4
            assert g[4] == "3000000"
            assert g[5] == ["adam", "zoe"]


def test_different_dim_values_are_different_groups() -> None:
    groups = by_key(group_events([event(T0, {"c": "DE"}), event(T0, {"c": "FR"})], []))
    assert groups[("m", T0, encode_field("click", ("c",), ("DE",)))][3] == 1
    assert groups[("m", T0, encode_field("click", ("c",), ("FR",)))][3] == 1
    assert groups[("m", T0, "click" + US)][3] == 2


def test_different_names_are_different_groups() -> None:
    groups = by_key(group_events([event(T0, name="a"), event(T0, name="b")], []))
    assert set(groups) == {(g, b, n + US) for n in "ab" for g, b in _buckets(T0)}
    assert all(g[3] == 1 for g in groups.values())


def _buckets(ts: int) -> list[tuple[str, int]]:
    return [("m", ts - ts % MIN), ("h", ts - ts % HOUR), ("d", ts - ts % DAY)]


def test_minutes_of_one_hour_are_separate_minute_groups_but_one_hour_group() -> None:
    events = [
        event(T0 + 3 * MIN + 10, uid="a"),
        event(T0 + 3 * MIN + 20, uid="b"),
        event(T0 + 42 * MIN, uid="a"),
        event(T0 + HOUR - 1, uid="c"),
    ]
    groups = by_key(group_events(events, []))
    minute = {b: g[3] for (grain, b, _), g in groups.items() if grain == "m"}
    assert minute == {T0 + 3 * MIN: 2, T0 + 42 * MIN: 1, T0 + 59 * MIN: 1}
    hours = [g for (grain, _, _), g in groups.items() if grain == "h"]
    assert hours == [["h", str(T0), "click" + US, 4, "0", ["a", "b", "c"]]]
    days = [g for (grain, _, _), g in groups.items() if grain == "d"]
    assert len(days) == 1 and days[0][3] == 4


def test_hours_and_days_split_at_their_boundaries() -> None:
    day_start = T0 - 10 * HOUR
    events = [event(day_start - 1), event(day_start), event(day_start + HOUR)]
    groups = by_key(group_events(events, []))
    assert {b for (g, b, _) in groups if g == "d"} == {day_start - DAY, day_start}
    assert {b for (g, b, _) in groups if g == "h"} == {
        day_start - HOUR,
        day_start,
        day_start + HOUR,
    }


def test_negative_epoch_events_group_into_1969_buckets() -> None:
    groups = by_key(group_events([event(-1)], []))
    assert set(groups) == {
        ("m", -MIN, "click" + US),
        ("h", -HOUR, "click" + US),
        ("d", -DAY, "click" + US),
    }


def test_group_events_of_nothing() -> None:
    assert group_events([], [("a", "b")]) == []


def test_crosstab_groups_in_group_events() -> None:
    crosstabs: list[Rollup] = [("country", "source")]
    events = [
        event(T0, {"country": "DE", "source": "web"}),
        event(T0, {"country": "DE"}),
        event(T0, {"source": "web", "country": "DE", "device": "ios"}),
    ]
    groups = by_key(group_events(events, crosstabs))
    tab = encode_field("click", ("country", "source"), ("DE", "web"))
    assert groups[("h", T0, tab)][3] == 2
    assert groups[("h", T0, encode_field("click", ("country",), ("DE",)))][3] == 3
    assert groups[("h", T0, encode_field("click", ("device",), ("ios",)))][3] == 1


def test_crosstab_declared_twice_counts_each_event_once() -> None:
    crosstabs = load_settings({"COUNTERS_CROSSTABS": "source:country,country:source"}).crosstabs
    ev = event(T0, {"country": "DE", "source": "web"}, value=1_000_000)
    groups = by_key(group_events([ev], crosstabs))
    tab = encode_field("click", ("country", "source"), ("DE", "web"))
    assert groups[("m", T0, tab)][3:5] == [1, "1000000"]


# --- property: groups equal per-event application -------------------------------------------


def _random_events(rng: random.Random, n: int) -> list[RawEvent]:
    dim_choices = {
        "country": ["DE", "FR", "日本", "US"],
        "source": ["web", "ios", "andröid"],
        "device": ["phone", "desk"],
    }
    out = []
    for i in range(n):
        dims = {d: rng.choice(vals) for d, vals in dim_choices.items() if rng.random() < 0.6}
        out.append(
            RawEvent(
                rng.choice(["click", "view"]),
                T0 + rng.randrange(-2 * DAY, 2 * DAY),
                f"id{i}",
                dims,
                rng.randrange(-5_000_000, 5_000_000),
                rng.choice([None, "u1", "u2", "u3", "ü4", "u5"]),
                T0,
            )
        )
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_groups_equal_per_event_application(seed: int) -> None:
    rng = random.Random(seed)
    crosstabs: list[Rollup] = [("country", "source"), ("country", "device", "source")]
    events = _random_events(rng, 300)

    # Expected, applying one event at a time, with fields built independently of fields_for.
    counts: Counter[tuple[str, int, str]] = Counter()
    sums: Counter[tuple[str, int, str]] = Counter()
    uids: defaultdict[tuple[str, int, str], set[str]] = defaultdict(set)
    for ev in events:
        rollups: list[Rollup] = [()] + [(d,) for d in ev.dims]
        rollups += [t for t in crosstabs if set(t) <= set(ev.dims)]
        for rollup in rollups:
            field = encode_field(ev.name, rollup, [ev.dims[d] for d in rollup])
            for grain_bucket in _buckets(ev.ts):
                key = (*grain_bucket, field)
                counts[key] += 1
                sums[key] += ev.value
                if ev.uid is not None:
                    uids[key].add(ev.uid)

    groups = by_key(group_events(events, crosstabs))
    assert set(groups) == set(counts)
    for key, g in groups.items():
        assert g[3] == counts[key], key
        assert int(g[4]) == sums[key], key
        assert g[5] == sorted(uids[key]), key

    # Every grain sees every event exactly once in its total fields.
    for grain in "mhd":
        total = sum(g[3] for (gr, _, f), g in groups.items() if gr == grain and f.endswith(US))
        assert total == len(events)
        assert sum(
            int(g[4]) for (gr, _, f), g in groups.items() if gr == grain and f.endswith(US)
        ) == sum(ev.value for ev in events)

    # Splitting the batch anywhere and adding the halves gives the same totals.
    cut = rng.randrange(1, len(events))
    merged: Counter[tuple[str, int, str]] = Counter()
    for part in (events[:cut], events[cut:]):
        for key, g in by_key(group_events(part, crosstabs)).items():
            merged[key] += g[3]
    assert merged == counts


def test_plan_batch_lists_every_distinct_dim_value_per_day() -> None:
    """The cardinality cap sees every (dim, UTC day, value) of the batch exactly once,
    __other__ excepted, whatever the cross-tabs."""
    rng = random.Random(7)
    events = [
        event(
            T0 + rng.randrange(-2 * DAY, DAY),
            {d: rng.choice(["a", "b", OTHER, "c d"]) for d in rng.sample(["x", "y", "z"], 2)},
            uid=str(rng.randrange(5)),
        )
        for _ in range(500)
    ]
    expected = sorted(
        {
            (dim, str(ev.ts - ev.ts % DAY), value)
            for ev in events
            for dim, value in ev.dims.items()
            if value != OTHER
        }
    )
    for crosstabs in ((), (("x", "y"), ("x", "z"))):
        _, dim_values = plan_batch(events, crosstabs)
        assert [tuple(v) for v in dim_values] == expected
