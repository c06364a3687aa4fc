"""StatsD / DogStatsD lines as events (counters/core/statsd.py): what each type becomes,
how names and tags map, and every refusal reason of a line."""

from __future__ import annotations

import pytest

from counters.core.config import load_settings
from counters.core.models import EventLimits, normalize_dim_name, normalize_name
from counters.core.statsd import (
    PARSE_REASONS,
    StatsdRefusal,
    StatsdRules,
    line_events,
)

NOW = 1_800_000_000_000
LIMITS = EventLimits(max_age_ms=30 * 86_400_000, max_future_ms=300_000)
RULES = StatsdRules.of("main", ["other"], 10_000)


def events(text: str, rules: StatsdRules = RULES) -> tuple[str, list[tuple[object, ...]]]:
    project, evs = line_events(text, rules, now_ms=NOW, limits=LIMITS)
    return project, [(e.name, e.ts, e.dims, e.value, e.uid) for e in evs]


def refused(text: str, rules: StatsdRules = RULES) -> str:
    with pytest.raises(StatsdRefusal) as info:
        line_events(text, rules, now_ms=NOW, limits=LIMITS)
    assert info.value.reason in PARSE_REASONS
    return info.value.reason


def test_counter_is_value_over_rate_events_of_value_one() -> None:
    project, evs = events("orders:3|c|@0.5")
    assert project == "main"
    assert evs == [("orders", NOW, {}, 1_000_000, None)] * 6
    assert len(events("x:1|c|@0.3")[1]) == 3  # 3.33 rounds to 3
    assert events("x:0|c")[1] == []  # nothing to count, not a refusal
    assert len(events("x:1:2|c")[1]) == 3  # several values add up


def test_set_timer_histogram_distribution() -> None:
    assert events("visitors:alice|s")[1] == [("visitors", NOW, {}, 0, "alice")]
    assert events("v:a:b|s")[1] == [("v", NOW, {}, 0, "a"), ("v", NOW, {}, 0, "b")]
    for kind in ("ms", "h", "d"):
        _, evs = events(f"lat:12.5:7|{kind}|@0.5")  # the rate does not scale samples
        assert evs == [("lat", NOW, {}, 12_500_000, None), ("lat", NOW, {}, 7_000_000, None)]


def test_names_tags_project_and_time() -> None:
    assert normalize_name("MyApp.Page Views") == "myapp.page_views"
    assert normalize_name("a//b") == "a_b" and len(normalize_name("x" * 100)) == 64
    assert normalize_dim_name("HTTP.Method") == "http_method"
    project, evs = events("Shop.Hits:1|c|#env:prod,Http.Method:GET|c:abc|T1799999990")
    assert project == "main"
    assert evs == [
        ("shop.hits", 1_799_999_990_000, {"env": "prod", "http_method": "GET"}, 1_000_000, None)
    ]
    project, evs = events("hits:1|c|#project:other,env:dev")
    assert project == "other" and evs[0][2] == {"env": "dev"}  # the project tag is no dim
    assert events("hits:1|c|#project:main")[0] == "main"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("temp:21|g", "gauge"),
        ("nonsense", "malformed"),
        ("x:|c", "malformed"),
        (":1|c", "malformed"),
        ("x:1|q", "unsupported_type"),
        ("_e{5,4}:title|text", "unsupported_type"),
        ("_sc|check|0", "unsupported_type"),
        ("x:abc|c", "invalid_value"),
        ("x:1_0|ms", "invalid_value"),
        ("x:nan|ms", "invalid_value"),
        ("x:1|c|@0", "invalid_rate"),
        ("x:1|c|@2", "invalid_rate"),
        ("x:1|c|Tsoon", "invalid_timestamp"),
        ("x:1|c|T1000", "ts_too_old"),
        ("x:1|c|T1900000000", "ts_in_future"),
        ("***:1|c", "invalid_name"),
        ("x:1|c|#flag", "invalid_tag"),
        ("x:1|c|#env:", "invalid_tag"),
        ("x:1|c|#a.b:1,a_b:2", "invalid_tag"),
        ("x:1|c|#project:Bad_Name", "invalid_project"),
        ("x:1|c|#project:nope", "project_not_allowed"),
        ("x:-1|c", "negative_counter"),
        ("x:20000|c", "too_many_events"),
        ("x:2e9|ms", "invalid"),
        ("x:1|c|#" + ",".join(f"k{i}:v" for i in range(17)), "invalid"),
        ("x:1|c|#k:" + "v" * 300, "invalid"),
        ("x:a\x00b|s", "invalid_string"),
    ],
)
def test_refusals(line: str, reason: str) -> None:
    assert refused(line) == reason


def test_no_project() -> None:
    rules = StatsdRules.of(None, ["other"], 10)
    assert refused("x:1|c", rules) == "no_project"
    assert events("x:1|c|#project:other", rules)[0] == "other"


def test_settings() -> None:
    s = load_settings(
        {
            "COUNTERS_STATSD_LISTEN": "[::1]:8125",
            "COUNTERS_STATSD_PROJECT": "demo",
            "COUNTERS_STATSD_PROJECTS": "a, b",
        }
    )
    assert (s.statsd_listen, s.statsd_project, s.statsd_projects) == (
        "[::1]:8125",
        "demo",
        ("a", "b"),
    )
    for bad in (
        {"COUNTERS_STATSD_LISTEN": "127.0.0.1:0", "COUNTERS_STATSD_PROJECT": "demo"},
        {"COUNTERS_STATSD_LISTEN": "8125", "COUNTERS_STATSD_PROJECT": "demo"},
        {"COUNTERS_STATSD_LISTEN": "127.0.0.1:8125"},
        {"COUNTERS_STATSD_PROJECTS": "ok,Not OK"},
    ):
        with pytest.raises(ValueError, match="statsd"):
            load_settings(bad)
