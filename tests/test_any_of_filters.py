"""A repeated dim filter means any of its values (issue 14, item 4: `source=google&source=bing`
is both, as SQL `IN`): counts and sums add, uniques are the union (never the sum), and
breakdowns merge what differs only in the any-of dim. Checked against the events themselves
on every path: hot buckets in Redis, persisted rollups in Postgres, a stored cross-tab and
the raw log (no cross-tab), on a manual clock with real Redis and Postgres."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.config import Settings
from tests.support import ApiClient, project_api

NOW = parse_ts("2026-04-15T12:30:30Z")
START = parse_ts("2026-04-15T09:00:00Z")
WANTED = ("google", "bing")
Event = dict[str, Any]


def _events() -> list[Event]:
    rnd = random.Random(14)
    out: list[Event] = []
    for i in range(400):
        dims: dict[str, str] = {}
        source = rnd.choice(["google", "bing", "mail", None])
        country = rnd.choice(["DE", "FR", "US", None])
        if source:
            dims["source"] = source
        if country:
            dims["country"] = country
        out.append(
            {
                "name": "click",
                "ts": START + rnd.randrange(0, NOW - START - MINUTE_MS),
                "dims": dims,
                "uid": f"u{rnd.randrange(60)}",
                "value": rnd.randrange(1, 500) / 100,
                "id": f"e{i}",
            }
        )
    return out


EVENTS = _events()


def _truth(
    keep: Callable[[Event], bool], measure: str, lo: int = START, hi: int = NOW
) -> int | float:
    chosen = [e for e in EVENTS if keep(e) and lo <= e["ts"] < hi]
    if measure == "count":
        return len(chosen)
    if measure == "sum":
        return round(sum(round(e["value"] * 100) for e in chosen) / 100, 2)
    return len({e["uid"] for e in chosen})


def _in(e: Event) -> bool:
    return e["dims"].get("source") in WANTED


def _close(got: float, want: float, measure: str) -> bool:
    # uniques come from HyperLogLog sketches: uids are hashed with a per-project secret, so
    # two of ~60 share a register in about one run in ten (each such pair counts once);
    # within 2 (or 3 %) of the exact union, far from the sum of the two values' uniques
    # (which is what a wrong answer adds up to: the tests check that gap separately)
    slack = max(2, 0.03 * want) if measure == "uniques" else 1e-9
    return abs(got - want) <= slack


@pytest_asyncio.fixture(loop_scope="session", params=["raw", "crosstab"])
async def ctx(
    request: pytest.FixtureRequest, settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[ApiClient]:
    crosstabs = (("country", "source"),) if request.param == "crosstab" else ()
    async with project_api(
        settings,
        pool,
        "ao",
        NOW,
        max_event_age_days=30,
        minute_retention_days=30,
        crosstabs=crosstabs,
    ) as c:
        await c.post(EVENTS)
        yield c


def _params(**extra: Any) -> dict[str, Any]:
    return {
        "name": "click",
        "source": list(WANTED),
        "precision": "1h",
        "from": str(START),
        "excluding_current": "false",
        **extra,
    }


async def _check_plain(c: ApiClient) -> None:
    for measure in ("count", "sum", "uniques"):
        s = await c.get("series", **_params(measure=measure))
        hours = [START + i * HOUR_MS for i in range(len(s["data"]))]
        assert len(hours) == 4
        for h, p in zip(hours, s["data"], strict=True):
            want = _truth(_in, measure, h, h + HOUR_MS)
            assert _close(p["value"], want, measure), (measure, h, p, want)
        t = await c.get("total", **_params(measure=measure))
        assert _close(t["value"], _truth(_in, measure), measure), (measure, t)
    # the union, not the sum: two values' uniques overlap (the same uids use both)
    apart = sum(
        _truth(lambda e, v=v: e["dims"].get("source") == v, "uniques")  # type: ignore[misc]
        for v in WANTED
    )
    assert apart > _truth(_in, "uniques") + 10


async def _check_breakdown(c: ApiClient) -> None:
    for measure in ("count", "sum", "uniques"):
        b = await c.get("series", **_params(measure=measure, group_by="country", limit="2"))
        series = b["series"]
        assert b["source"] == ("rollups" if c.app.settings.crosstabs else "raw")
        assert len(series) == 4  # top 2, __other__, __none__
        assert all(s["dims"]["source"] == list(WANTED) for s in series)
        for s in series[:2]:
            country = s["dims"]["country"]
            want = _truth(lambda e, k=country: _in(e) and e["dims"].get("country") == k, measure)
            assert _close(s["total"], want, measure), (measure, s["dims"], s["total"], want)
        top = {s["dims"]["country"] for s in series[:2]}
        other = _truth(
            lambda e, top=top: _in(e) and e["dims"].get("country") not in (*top, None),
            measure,
        )
        assert series[2]["dims"]["country"] == "__other__"
        assert _close(series[2]["total"], other, measure), (measure, series[2], other)
        none = series[3]
        assert none["dims"]["country"] == "__none__"
        if measure != "uniques":  # uniques' __none__ is an estimate (see breakdown_series)
            want_none = _truth(lambda e: _in(e) and "country" not in e["dims"], measure)
            assert _close(none["total"], want_none, measure), (measure, none, want_none)
        if measure == "count":  # the series add up to the filtered total, per period too
            t = await c.get("series", **_params())
            for i, p in enumerate(t["data"]):
                assert sum(s["data"][i]["value"] for s in series) == p["value"]


@pytest.mark.asyncio(loop_scope="session")
async def test_any_of_values_hot_then_persisted(ctx: ApiClient) -> None:
    await _check_plain(ctx)
    await _check_breakdown(ctx)
    await ctx.app.persist(ctx.project)  # closed hours now come from Postgres
    await _check_plain(ctx)
    await _check_breakdown(ctx)


@pytest.mark.asyncio(loop_scope="session")
async def test_any_of_reply_and_csv_name_every_value(ctx: ApiClient) -> None:
    s = await ctx.get("series", **_params(name=["click", "other"]))
    assert s["series"][0]["dims"] == {"source": ["google", "bing"]}
    csv = await ctx.text(f"/v1/projects/{ctx.project}/series", **_params(format="csv"))
    header, first = csv.splitlines()[:2]
    assert header == "bucket,name,source,value" and ",click,google|bing," in first
    # d.<dim> and a bare dim are the same filter: their values join
    mixed = await ctx.get("total", **{**_params(source="google"), "d.source": "bing"})
    assert mixed["value"] == _truth(_in, "count")


@pytest.mark.asyncio(loop_scope="session")
async def test_any_of_bounds_are_400(ctx: ApiClient) -> None:
    assert ctx.app.client is not None
    path = f"/v1/projects/{ctx.project}/total"
    many = await ctx.app.client.get(
        path, params=_params(source=[f"s{i}" for i in range(21)]), headers=ctx.read_h
    )
    assert many.status_code == 400 and "at most 20 values" in many.json()["error"]["message"]
    five = [f"v{i}" for i in range(5)]
    combos = await ctx.app.client.get(
        path,
        params=_params(source=five, country=five, **{"d.plan": five}),
        headers=ctx.read_h,
    )
    assert combos.status_code == 400
    assert "125 combinations" in combos.json()["error"]["message"]


@pytest.mark.asyncio(loop_scope="session")
async def test_uniques_of_several_names_add_their_union(ctx: ApiClient) -> None:
    """A total of uniques over several names adds `union`: the uids seen under any of
    them, once each (what a dashboard's "unique visitors" shows), never the sum; filtered
    on two dims it comes from rollups with the cross-tab and from the raw log without."""
    views = [{**e, "name": "view", "id": "v" + e["id"]} for e in EVENTS[::3]] + [
        {**EVENTS[0], "name": "view", "uid": "only-a-viewer", "id": "v-extra"}
    ]
    await ctx.post(views)
    everything = [*EVENTS, *views]

    def uids(names: tuple[str, ...], keep: Callable[[Event], bool]) -> int:
        return len({e["uid"] for e in everything if e["name"] in names and keep(e)})

    def both(e: Event) -> bool:
        return _in(e) and e["dims"].get("country") == "DE"

    for extra, keep in (({}, _in), ({"country": "DE"}, both)):
        t = await ctx.get("total", **_params(name=["click", "view"], measure="uniques", **extra))
        per_name = {x["name"]: x["value"] for x in t["totals"]}
        for name in ("click", "view"):
            assert _close(per_name[name], uids((name,), keep), "uniques"), (name, t)
        union = uids(("click", "view"), keep)
        assert _close(t["union"]["value"], union, "uniques"), (extra, t)
        assert sum(per_name.values()) > union + 10  # the same uids under both names
    t = await ctx.get(
        "total", **_params(name=["click", "view"], measure="uniques", compare="previous_period")
    )
    assert t["union"]["comparison"]["value"] == 0  # nothing before START
    counts = await ctx.get("total", **_params(name=["click", "view"]))
    assert "union" not in counts  # counts add up: no union to give
