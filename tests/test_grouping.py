"""Unit tests for counters.core.grouping: per-minute grouping, roll_up to hours and days,
the live ingest plan, dedupe inside a batch and folding over-cap values.
(tests/test_grouping_redis.py checks roll_up against lua/ingest.lua + lua/seal.lua.)"""

from __future__ import annotations

import random
from collections import Counter, defaultdict

import pytest

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.config import load_settings
from counters.core.grouping import (
    Cell,
    first_occurrences,
    fold_over_cap,
    group_minutes,
    plan_batch,
    roll_up,
)
from counters.core.models import RawEvent
from counters.core.rollups import OTHER, US, Rollup, encode_field

T0 = 1_795_428_000_000  # 2026-11-23T10:00:00Z, a day boundary + 10 h
MIN = MINUTE_MS
HOUR = HOUR_MS
DAY = DAY_MS


def event(
    ts: int,
    dims: dict[str, str] | None = None,
    *,
    name: str = "click",
    value: int = 0,
    uid: str | None = None,
    id: str | None = None,
) -> RawEvent:
    return RawEvent(name, ts, id, dims or {}, value, uid, ts)


def cells(events: list[RawEvent], crosstabs: list[Rollup]) -> list[Cell]:
    """What rebuild computes: roll_up of the batch's minutes, every grain."""
    return list(roll_up(group_minutes(events, crosstabs)).cells())


def by_key(found: list[Cell]) -> dict[tuple[str, int, str], Cell]:
    """Cells keyed by (grain letter, bucket, field); fails if a key appears twice."""
    out: dict[tuple[str, int, str], Cell] = {}
    for c in found:
        key = (c.grain.short, c.bucket, c.field)
        assert key not in out, f"duplicate cell {key}"
        out[key] = c
    return out


# --- roll_up ----------------------------------------------------------------------------------


def test_group_shape() -> None:
    (m, h, d) = cells([event(T0 + 17 * MIN + 5_000, value=2_500_000, uid="u1")], [])
    assert m == (Grain.minute, T0 + 17 * MIN, "click" + US, 1, 2_500_000, {"u1"})
    assert h == (Grain.hour, T0, "click" + US, 1, 2_500_000, {"u1"})
    assert d == (Grain.day, T0 - 10 * HOUR, "click" + US, 1, 2_500_000, {"u1"})


def test_same_grain_bucket_field_collapse_into_one_group() -> None:
    ts = T0 + 17 * MIN
    events = [
        event(ts + 1_000, {"country": "DE"}, value=1_000_000, uid="zoe"),
        event(ts + 2_000, {"country": "DE"}, value=2_500_000, uid="adam"),
        event(ts + 59_999, {"country": "DE"}, value=-500_000, uid="zoe"),
        event(ts, {"country": "DE"}, value=0, uid=None),
    ]
    groups = by_key(cells(events, []))
    assert len(groups) == 3 * 2  # (total, country) x (m, h, d)
    for grain, bucket in (("m", ts), ("h", T0), ("d", T0 - 10 * HOUR)):
        for field in ("click" + US, encode_field("click", ("country",), ("DE",))):
            g = groups[(grain, bucket, field)]
            assert g.events == 4
            assert g.sum_micros == 3_000_000
            assert g.uids == {"adam", "zoe"}


def test_different_dim_values_are_different_groups() -> None:
    groups = by_key(cells([event(T0, {"c": "DE"}), event(T0, {"c": "FR"})], []))
    assert groups[("m", T0, encode_field("click", ("c",), ("DE",)))].events == 1
    assert groups[("m", T0, encode_field("click", ("c",), ("FR",)))].events == 1
    assert groups[("m", T0, "click" + US)].events == 2


def test_different_names_are_different_groups() -> None:
    groups = by_key(cells([event(T0, name="a"), event(T0, name="b")], []))
    assert set(groups) == {(g, b, n + US) for n in "ab" for g, b in _buckets(T0)}
    assert all(g.events == 1 for g in groups.values())


def _buckets(ts: int) -> list[tuple[str, int]]:
    return [(g.short, bucket_start(ts, g)) for g in Grain]


def test_minutes_of_one_hour_are_separate_minute_groups_but_one_hour_group() -> None:
    events = [
        event(T0 + 3 * MIN + 10, uid="a"),
        event(T0 + 3 * MIN + 20, uid="b"),
        event(T0 + 42 * MIN, uid="a"),
        event(T0 + HOUR - 1, uid="c"),
    ]
    groups = by_key(cells(events, []))
    minute = {b: g.events for (grain, b, _), g in groups.items() if grain == "m"}
    assert minute == {T0 + 3 * MIN: 2, T0 + 42 * MIN: 1, T0 + 59 * MIN: 1}
    hours = [g for (grain, _, _), g in groups.items() if grain == "h"]
    assert hours == [(Grain.hour, T0, "click" + US, 4, 0, {"a", "b", "c"})]
    days = [g for (grain, _, _), g in groups.items() if grain == "d"]
    assert len(days) == 1 and days[0].events == 4


def test_hours_and_days_split_at_their_boundaries() -> None:
    day_start = T0 - 10 * HOUR
    events = [event(day_start - 1), event(day_start), event(day_start + HOUR)]
    groups = by_key(cells(events, []))
    assert {b for (g, b, _) in groups if g == "d"} == {day_start - DAY, day_start}
    assert {b for (g, b, _) in groups if g == "h"} == {
        day_start - HOUR,
        day_start,
        day_start + HOUR,
    }


def test_negative_epoch_events_group_into_1969_buckets() -> None:
    groups = by_key(cells([event(-1)], []))
    assert set(groups) == {
        ("m", -MIN, "click" + US),
        ("h", -HOUR, "click" + US),
        ("d", -DAY, "click" + US),
    }


def test_roll_up_of_nothing() -> None:
    assert cells([], [("a", "b")]) == []
    assert plan_batch([], [("a", "b")]) == ([], [], [], [], 0, [], [], 0)


def test_crosstab_cells() -> None:
    crosstabs: list[Rollup] = [("country", "source")]
    events = [
        event(T0, {"country": "DE", "source": "web"}),
        event(T0, {"country": "DE"}),
        event(T0, {"source": "web", "country": "DE", "device": "ios"}),
    ]
    groups = by_key(cells(events, crosstabs))
    tab = encode_field("click", ("country", "source"), ("DE", "web"))
    assert groups[("h", T0, tab)].events == 2
    assert groups[("h", T0, encode_field("click", ("country",), ("DE",)))].events == 3
    assert groups[("h", T0, encode_field("click", ("device",), ("ios",)))].events == 1


def test_crosstab_declared_twice_counts_each_event_once() -> None:
    crosstabs = load_settings({"COUNTERS_CROSSTABS": "source:country,country:source"}).crosstabs
    ev = event(T0, {"country": "DE", "source": "web"}, value=1_000_000)
    groups = by_key(cells([ev], crosstabs))
    tab = encode_field("click", ("country", "source"), ("DE", "web"))
    assert groups[("m", T0, tab)][3:5] == (1, 1_000_000)


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

    groups = by_key(cells(events, crosstabs))
    assert set(groups) == set(counts)
    for key, g in groups.items():
        assert g.events == counts[key], key
        assert g.sum_micros == sums[key], key
        assert g.uids == uids[key], key

    # Every grain sees every event exactly once in its total fields.
    for grain in "mhd":
        total = sum(g.events for (gr, _, f), g in groups.items() if gr == grain and f.endswith(US))
        assert total == len(events)
        assert sum(
            g.sum_micros for (gr, _, f), g in groups.items() if gr == grain and f.endswith(US)
        ) == sum(ev.value for ev in events)

    # Splitting the batch anywhere and adding the halves gives the same totals.
    cut = rng.randrange(1, len(events))
    merged: Counter[tuple[str, int, str]] = Counter()
    for part in (events[:cut], events[cut:]):
        for key, g in by_key(cells(part, crosstabs)).items():
            merged[key] += g.events
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
            (dim, str(bucket_start(ev.ts, Grain.day)), value)
            for ev in events
            for dim, value in ev.dims.items()
            if value != OTHER
        }
    )
    for crosstabs in ((), (("x", "y"), ("x", "z"))):
        dim_values = plan_batch(events, crosstabs).dim_values
        assert [tuple(v) for v in dim_values] == expected
    assert plan_batch(events, ()).dim_values != []
    assert plan_batch(events, (), dim_values=False).dim_values == []


# --- the live plan -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [4, 5])
def test_plan_groups_are_the_minute_grain_of_roll_up(seed: int) -> None:
    rng = random.Random(seed)
    crosstabs: list[Rollup] = [("country", "source")]
    events = _random_events(rng, 400)
    minutes = {
        (c.bucket, c.field): (c.events, c.sum_micros, c.uids)
        for c in roll_up(group_minutes(events, crosstabs)).cells([Grain.minute])
    }
    groups = plan_batch(events, crosstabs).groups
    assert len(groups) == len(minutes)
    for minute, field, count, total, uids in groups:
        assert isinstance(minute, str) and isinstance(total, str)  # as lua/ingest.lua reads them
        assert (count, int(total), set(uids)) == minutes[(int(minute), field)]
        assert len(uids) == len(set(uids))


def test_fields_per_grain_are_the_fields_of_the_cells() -> None:
    rng = random.Random(9)
    rolled = roll_up(group_minutes(_random_events(rng, 300), [("country", "source")]))
    for grain in Grain:
        expected: defaultdict[int, set[str]] = defaultdict(set)
        for c in rolled.cells([grain]):
            expected[c.bucket].add(c.field)
        assert dict(rolled.fields(grain)) == expected
        assert set(rolled.buckets(grain)) == set(expected)
    assert rolled.buckets(Grain.minute) is rolled.minutes


def test_roll_up_leaves_the_minutes_unchanged() -> None:
    minutes = group_minutes([event(T0, uid="a", value=1), event(T0 + MIN, uid="b", value=2)], [])
    rolled = roll_up(minutes)
    (hour,) = rolled.buckets(Grain.hour).values()
    assert hour.uids == {"click" + US: {"a", "b"}}
    hour.uids["click" + US].add("c")
    assert minutes[T0].uids == {"click" + US: {"a"}}
    assert (minutes[T0].sums, minutes[T0 + MIN].sums) == ({"click" + US: 1}, {"click" + US: 2})


# --- dedupe inside a batch, folding over-cap values ----------------------------------------


def test_first_occurrences_keep_the_first_of_each_id() -> None:
    events = [
        event(T0, id="a", value=1),
        event(T0, id="b"),
        event(T0, id="a", value=2),
        event(T0),
        event(T0),
        event(T0, id="b"),
    ]
    kept, dropped = first_occurrences(events)
    assert dropped == 2
    assert kept == [events[0], events[1], events[3], events[4]]
    assert first_occurrences([]) == ([], 0)


def test_fold_over_cap_replaces_only_the_listed_day_values() -> None:
    today, yesterday = str(T0 - 10 * HOUR), str(T0 - 10 * HOUR - DAY)
    events = [
        event(T0, {"source": "z", "country": "DE"}),
        event(T0 - DAY, {"source": "z"}),
        event(T0, {"source": "a"}),
        event(T0, {"country": "z"}),
    ]
    out, folded = fold_over_cap(events, {("source", today, "z"), ("source", yesterday, "q")})
    assert folded == 1
    assert [e.dims for e in out] == [
        {"source": OTHER, "country": "DE"},
        {"source": "z"},
        {"source": "a"},
        {"country": "z"},
    ]
    assert out[1:] == events[1:]
    assert (out[0].name, out[0].ts, out[0].value) == (events[0].name, T0, 0)
