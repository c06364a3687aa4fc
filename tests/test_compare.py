"""compare=previous_period|previous_year on /series and /total (issue 15): the comparison is
exactly a separate read of the compared range (count, sum, uniques, several names), the
year shift is calendar-aware; and the in-progress point carries "partial": true (in-process
app on a manual clock, real Redis and Postgres; the ranges' pure arithmetic at the end)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from counters.core.buckets import DAY_MS, MINUTE_MS, format_ts, parse_ts
from counters.core.config import Settings
from counters.core.errors import BadRequest
from counters.core.periods import label, zone
from counters.engines.read.compare import comparison_range, year_back
from counters.engines.read.parse import parse_read
from tests.support import ApiClient, project_api

NOW = parse_ts("2026-04-15T12:00:30Z")
YEAR_AGO = parse_ts("2025-04-15T12:00:00Z")


def span(start: str, end: str) -> dict[str, str]:
    """The from/to parameters of a read."""
    return {"from": start, "to": end}


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    async with project_api(
        settings,
        pool,
        "cmp",
        NOW,
        max_event_age_days=400,
        raw_retention_days=400,
        minute_retention_days=400,
    ) as c:
        events: list[dict[str, Any]] = []
        for start in (NOW - 2 * DAY_MS, YEAR_AGO - 6 * DAY_MS):
            for i in range(2 * DAY_MS // (17 * MINUTE_MS)):
                ts = start + i * 17 * MINUTE_MS
                if ts >= NOW:
                    break
                events.append(
                    {
                        "name": "click",
                        "ts": ts,
                        "uid": f"u{i % 11}",
                        "value": (i % 5) + 0.5,
                        "dims": {"source": "ab"[i % 2]},
                    }
                )
                if i % 3 == 0:
                    events.append({"name": "signup", "ts": ts, "uid": f"s{i % 4}"})
        await c.post(events)
        await c.app.persist(c.project)  # the older part answers from Postgres
        yield c


async def _status(c: ApiClient, path: str, **params: str) -> tuple[int, Any]:
    assert c.app.client is not None
    r = await c.app.client.get(f"/v1/projects/{c.project}/{path}", params=params, headers=c.read_h)
    return r.status_code, r.json()


@pytest.mark.parametrize("measure", ["count", "sum", "uniques"])
async def test_previous_period_is_a_read_of_the_range_before(ctx: ApiClient, measure: str) -> None:
    rng = {"from": "2026-04-15T02:00:00Z", "to": "2026-04-15T12:00:00Z"}
    body = await ctx.get(
        "series", name="click", measure=measure, precision="1h", compare="previous_period", **rng
    )
    cmp = body["comparison"]
    assert (cmp["from"], cmp["to"]) == ("2026-04-14T16:00:00Z", "2026-04-15T02:00:00Z")
    alone = await ctx.get(
        "series",
        name="click",
        measure=measure,
        precision="1h",
        **span(cmp["from"], cmp["to"]),
    )
    assert cmp["data"] == alone["data"] and len(cmp["data"]) == len(body["data"]) == 10
    assert sum(p["value"] for p in cmp["data"]) > 0
    plain = await ctx.get("series", name="click", measure=measure, precision="1h", **rng)
    assert "comparison" not in plain and {**plain, "comparison": cmp} == body
    total = await ctx.get("total", name="click", measure=measure, compare="previous_period", **rng)
    whole = await ctx.get("total", name="click", measure=measure, **span(cmp["from"], cmp["to"]))
    assert total["comparison"] == {"from": cmp["from"], "to": cmp["to"], "value": whole["value"]}
    assert "comparison" not in await ctx.get("total", name="click", measure=measure, **rng)


async def test_compare_with_an_any_of_filter(ctx: ApiClient) -> None:
    rng = span("2026-04-14T12:00:00Z", "2026-04-15T12:00:00Z")
    body = await ctx.get(
        "total", name="click", source=["a", "b"], compare="previous_period", precision="1h", **rng
    )
    prev = span(body["comparison"]["from"], body["comparison"]["to"])
    assert prev == span("2026-04-13T12:00:00Z", "2026-04-14T12:00:00Z")
    each = [
        (await ctx.get("total", name="click", source=v, precision="1h", **prev))["value"]
        for v in "ab"
    ]
    assert body["comparison"]["value"] == sum(each) and all(each)


async def test_several_names_each_carry_their_comparison(ctx: ApiClient) -> None:
    rng = {"from": "2026-04-14T12:00:00Z", "to": "2026-04-15T12:00:00Z", "precision": "6h"}
    names = {"name": ["click", "signup"], "measure": "uniques", "compare": "previous_period"}
    series = await ctx.get("series", **names, **rng)
    totals = await ctx.get("total", **names, **rng)
    for s, t in zip(series["series"], totals["totals"], strict=True):
        prev = {"from": s["comparison"]["from"], "to": s["comparison"]["to"]}
        assert prev == {"from": "2026-04-13T12:00:00Z", "to": "2026-04-14T12:00:00Z"}
        one = await ctx.get("series", name=s["name"], measure="uniques", precision="6h", **prev)
        assert s["comparison"]["data"] == one["data"]
        alone = await ctx.get("total", name=t["name"], measure="uniques", **prev)
        assert t["comparison"]["value"] == alone["value"]
        assert t["comparison"]["value"] > 0


async def test_previous_year_shifts_in_the_zone(ctx: ApiClient) -> None:
    rng = {"from": "2026-04-09T00:00:00+02:00", "to": "2026-04-15T00:00:00+02:00"}
    args = {"name": "click", "precision": "1d", "tz": "Europe/Berlin", **rng}
    body = await ctx.get("series", compare="previous_year", **args)
    cmp = body["comparison"]
    assert (cmp["from"], cmp["to"]) == ("2025-04-09T00:00:00+02:00", "2025-04-15T00:00:00+02:00")
    alone = await ctx.get(
        "series",
        name="click",
        precision="1d",
        tz="Europe/Berlin",
        **span(cmp["from"], cmp["to"]),
    )
    assert cmp["data"] == alone["data"] and len(cmp["data"]) == 6
    assert [p["bucket"][:10] for p in cmp["data"]][0] == "2025-04-09"
    assert sum(p["value"] for p in cmp["data"]) > 0
    total = await ctx.get("total", compare="previous_year", **args)
    assert total["comparison"]["value"] == sum(p["value"] for p in alone["data"])


async def test_refusals(ctx: ApiClient) -> None:
    base = {"name": "click"}
    status, body = await _status(
        ctx, "series", **base, compare="previous_period", group_by="source"
    )
    assert status == 400 and body["error"]["message"] == "compare: not with group_by"
    status, body = await _status(ctx, "total", **base, compare="last_week")
    assert status == 400
    assert body["error"]["message"] == "compare must be one of previous_period, previous_year"
    status, body = await _status(ctx, "series", **base, compare="previous_period", format="csv")
    assert status == 400 and "compare: the reply is JSON only" in body["error"]["message"]
    assert ctx.app.client is not None
    r = await ctx.app.client.get(
        "/v1/series",
        params={"project": ctx.project, "name": "click", "compare": "previous_period"},
        headers=ctx.read_h,
    )
    assert r.status_code == 400 and "compare: not across projects" in r.text
    # the compared range is checked like the read itself: 1970 has no year before it
    status, body = await _status(
        ctx,
        "total",
        **base,
        compare="previous_year",
        precision="1d",
        **span("1970-06-01T00:00:00Z", "1970-06-02T00:00:00Z"),
    )
    assert status == 400 and "compare: the previous_year range" in body["error"]["message"]


async def test_the_comparison_counts_against_max_points(ctx: ApiClient) -> None:
    # 20 names x 3,600 minutes = 72,000 points: under 100,000 alone, not with the comparison
    args = {"name": [f"n{i}" for i in range(20)], "precision": "1m", "from": "2026-04-13T00:00:00Z"}
    assert (await _status(ctx, "series", **args))[0] == 200
    status, body = await _status(ctx, "series", **args, compare="previous_period")
    assert status == 400 and body["error"]["code"] == "too_many_points"
    assert "144,000 points (20 names x 2 series x 3600 buckets)" in body["error"]["message"]


async def test_partial_marks_only_the_point_in_progress(ctx: ApiClient) -> None:
    live = await ctx.get(
        "series", name="click", precision="1h", excluding_current="false", compare="previous_period"
    )
    assert live["data"][-1] == {"bucket": "2026-04-15T12:00:00Z", "value": 0, "partial": True}
    assert all("partial" not in p for p in live["data"][:-1])
    assert all("partial" not in p for p in live["comparison"]["data"])
    default = await ctx.get("series", name="click", precision="1h")
    assert default["data"][-1]["bucket"] == "2026-04-15T11:00:00Z"
    assert all("partial" not in p for p in default["data"])
    many = await ctx.get(
        "series", name="click", group_by="source", precision="1d", excluding_current="false"
    )
    for s in many["series"]:
        assert s["data"][-1]["partial"] is True and "partial" not in s["data"][0]
    rows = await ctx.get(
        "series", name="click", precision="1h", excluding_current="false", format="long"
    )
    assert rows[-1]["partial"] is True and all("partial" not in r for r in rows[:-1])
    # a range that ends in the past has no partial point, excluding_current or not
    past = await ctx.get(
        "series", name="click", excluding_current="false", **{"to": "2026-04-15T10:00:00Z"}
    )
    assert all("partial" not in p for p in past["data"])


# --- the ranges' arithmetic (pure) ---------------------------------------------------------


def _range(now: int, **params: str) -> tuple[str, str]:
    q = parse_read({"name": "click", **params}, now, ())
    start, end = comparison_range(q)
    return label(start, q.tz), label(end, q.tz)


def test_year_back_takes_feb_29_to_feb_28() -> None:
    utc = zone(None)
    assert format_ts(year_back(parse_ts("2028-02-29T10:00:00Z"), utc)) == "2027-02-28T10:00:00Z"
    assert format_ts(year_back(parse_ts("2026-03-01T00:00:00Z"), utc)) == "2025-03-01T00:00:00Z"
    now = parse_ts("2028-03-10T00:00:00Z")
    assert _range(
        now,
        precision="1d",
        compare="previous_year",
        **span("2028-02-29T00:00:00Z", "2028-03-02T00:00:00Z"),
    ) == ("2027-02-28T00:00:00Z", "2027-03-02T00:00:00Z")


def test_previous_year_keeps_the_bucket_count() -> None:
    now = parse_ts("2026-06-01T00:00:00Z")
    # 2026-05-04 is a Monday; 2025-05-04 a Sunday: the weeks start on the Monday before
    got = _range(
        now,
        precision="1w",
        compare="previous_year",
        **span("2026-05-04T00:00:00Z", "2026-05-25T00:00:00Z"),
    )
    assert got == ("2025-04-28T00:00:00Z", "2025-05-19T00:00:00Z")
    # a month is a month, in the zone
    got = _range(
        now,
        precision="1mo",
        tz="Europe/Berlin",
        compare="previous_year",
        **span("2026-03-01T00:00:00+01:00", "2026-05-01T00:00:00+02:00"),
    )
    assert got == ("2025-03-01T00:00:00+01:00", "2025-05-01T00:00:00+02:00")


def test_previous_period_is_as_many_periods_just_before() -> None:
    now = parse_ts("2026-06-01T00:00:00Z")
    assert _range(
        now, precision="1h", compare="previous_period", **{"from": "2026-05-31T20:00:00Z"}
    ) == (
        "2026-05-31T16:00:00Z",
        "2026-05-31T20:00:00Z",
    )
    # calendar months of different lengths: two months before April-May are Feb-March
    got = _range(
        now,
        precision="1mo",
        compare="previous_period",
        **span("2026-04-01T00:00:00Z", "2026-06-01T00:00:00Z"),
    )
    assert got == ("2026-02-01T00:00:00Z", "2026-04-01T00:00:00Z")
    # the DST week in Berlin: seven local days back, whatever their hours
    got = _range(
        now,
        precision="1d",
        tz="Europe/Berlin",
        compare="previous_period",
        **span("2026-03-30T00:00:00+02:00", "2026-04-06T00:00:00+02:00"),
    )
    assert got == ("2026-03-23T00:00:00+01:00", "2026-03-30T00:00:00+02:00")
    with pytest.raises(BadRequest, match="would start before 1970"):
        _range(
            now,
            precision="1d",
            compare="previous_period",
            **span("1970-01-01T00:00:00Z", "1970-01-03T00:00:00Z"),
        )
