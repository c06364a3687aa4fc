"""The read API a dashboard needs, in-process on a manual clock (real Redis and Postgres):
precisions, time zones (DST days, half- and quarter-hour zones), uniques over any range,
breakdowns with __other__ and __none__, several names, ETag/304."""

from __future__ import annotations

import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, format_ts, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.engines.read import breakdown
from persist.projects import create_key
from tests.support import ApiClient, InProcessApp

NOW = parse_ts("2026-04-15T12:00:30Z")


Ctx = ApiClient


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Ctx]:
    project = "rd" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(
        settings,
        max_event_age_days=200,
        raw_retention_days=400,
        minute_retention_days=400,
        crosstabs=(("country", "source"),),
    )
    async with InProcessApp(s, ManualClock(NOW)) as app:
        yield Ctx(app, project, ingest, read)


def local_truth(events: list[dict[str, Any]], tz: str, fmt: str) -> Counter[str]:
    z = ZoneInfo(tz)
    out: Counter[str] = Counter()
    for e in events:
        local = datetime.fromtimestamp(e["ts"] / 1000, z)
        out[fmt.format(local=local)] += 1
    return out


async def test_sub_hour_precisions_come_from_minutes(ctx: Ctx) -> None:
    base = parse_ts("2026-04-15T10:00:00Z")
    events = [{"name": "click", "ts": base + (i * 37 % 60) * MINUTE_MS + i} for i in range(90)]
    await ctx.post(events)
    for precision, size in (("5m", 5), ("15m", 15)):
        body = await ctx.get(
            "series",
            name="click",
            precision=precision,
            **{"from": str(base), "to": str(base + HOUR_MS)},
        )
        assert body["precision"] == precision and len(body["data"]) == 60 // size
        want = Counter(
            (e["ts"] - base) // (size * MINUTE_MS) for e in events if e["ts"] < base + HOUR_MS
        )
        assert [p["value"] for p in body["data"]] == [want[i] for i in range(60 // size)]
        assert body["data"][1]["bucket"] == format_ts(base + size * MINUTE_MS)


async def test_from_rounds_down_and_to_up_to_the_precision(ctx: Ctx) -> None:
    body = await ctx.get(
        "series",
        name="click",
        precision="15m",
        **{"from": "2026-04-15T10:07:00Z", "to": "2026-04-15T10:31:00Z"},
    )
    assert (body["from"], body["to"]) == ("2026-04-15T10:00:00Z", "2026-04-15T10:45:00Z")


@pytest.mark.parametrize(
    ("tz", "fmt"),
    [
        ("Europe/Berlin", "{local:%Y-%m-%d}"),
        ("America/New_York", "{local:%Y-%m-%d}"),
        ("Asia/Kolkata", "{local:%Y-%m-%d}"),
        ("Asia/Kathmandu", "{local:%Y-%m-%d}"),
    ],
)
async def test_days_in_a_time_zone(ctx: Ctx, tz: str, fmt: str) -> None:
    rng = random.Random(tz)
    start = parse_ts("2026-03-26T00:00:00Z")
    events = [{"name": "view", "ts": start + rng.randrange(6 * DAY_MS)} for _ in range(1500)]
    await ctx.post(events)
    await ctx.app.persist(ctx.project)  # the older part now answers from Postgres
    body = await ctx.get(
        "series",
        name="view",
        precision="1d",
        tz=tz,
        **{"from": "2026-03-27T12:00:00Z", "to": "2026-03-31T00:00:00Z"},
    )
    truth = local_truth(events, tz, fmt)
    got = {p["bucket"][:10]: p["value"] for p in body["data"]}
    assert got == {day: truth[day] for day in got}
    offset = datetime.fromisoformat(body["data"][0]["bucket"]).utcoffset()
    assert offset == ZoneInfo(tz).utcoffset(
        datetime.fromisoformat(body["data"][0]["bucket"]).replace(tzinfo=None)
    )


async def test_dst_day_has_23_hours(ctx: Ctx) -> None:
    day = parse_ts("2026-03-28T23:00:00Z")  # 2026-03-29 00:00 in Berlin (CET)
    events = [{"name": "dst", "ts": day + h * HOUR_MS + 60_000} for h in range(23)]
    await ctx.post(events)
    days = await ctx.get(
        "series",
        name="dst",
        precision="1d",
        tz="Europe/Berlin",
        **{"from": "2026-03-29T00:00:00+01:00", "to": "2026-03-30T00:00:00+02:00"},
    )
    assert days["data"] == [{"bucket": "2026-03-29T00:00:00+01:00", "value": 23}]
    hours = await ctx.get(
        "series",
        name="dst",
        precision="1h",
        tz="Europe/Berlin",
        **{"from": "2026-03-29T00:00:00+01:00", "to": "2026-03-30T00:00:00+02:00"},
    )
    assert len(hours["data"]) == 23 and all(p["value"] == 1 for p in hours["data"])
    assert hours["data"][2]["bucket"] == "2026-03-29T03:00:00+02:00"


async def test_weeks_and_months(ctx: Ctx) -> None:
    rng = random.Random(5)
    start = parse_ts("2026-01-01T00:00:00Z")
    events = [{"name": "wk", "ts": start + rng.randrange(100 * DAY_MS)} for _ in range(2000)]
    await ctx.post(events)
    await ctx.app.persist(ctx.project)
    weeks = await ctx.get(
        "series",
        name="wk",
        precision="1w",
        tz="Europe/Berlin",
        **{"from": "2026-01-05T00:00:00+01:00", "to": "2026-03-30T00:00:00+02:00"},
    )
    truth = Counter()
    z = ZoneInfo("Europe/Berlin")
    for e in events:
        d = datetime.fromtimestamp(e["ts"] / 1000, z).date()
        truth[(d - timedelta(days=d.weekday())).isoformat()] += 1
    assert {p["bucket"][:10]: p["value"] for p in weeks["data"]} == {
        p["bucket"][:10]: truth[p["bucket"][:10]] for p in weeks["data"]
    }
    assert all(datetime.fromisoformat(p["bucket"]).weekday() == 0 for p in weeks["data"])
    months = await ctx.get(
        "series",
        name="wk",
        precision="1mo",
        **{"from": "2026-01-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"},
    )
    by_month = Counter(format_ts(e["ts"])[:7] for e in events)
    assert [p["value"] for p in months["data"]] == [
        by_month[m] for m in ("2026-01", "2026-02", "2026-03")
    ]


async def test_uniques_over_a_week_are_a_union(ctx: Ctx) -> None:
    start = parse_ts("2026-04-06T00:00:00Z")  # a Monday
    events = [
        {"name": "u", "ts": start + d * DAY_MS + 3600_000, "uid": f"user{i}"}
        for d in range(7)
        for i in range(300)
    ]
    await ctx.post(events)
    await ctx.app.persist(ctx.project)
    week = await ctx.get(
        "series",
        name="u",
        measure="uniques",
        precision="1w",
        **{"from": str(start), "to": str(start + 7 * DAY_MS)},
    )
    assert len(week["data"]) == 1 and abs(week["data"][0]["value"] - 300) <= 7
    days = await ctx.get(
        "series",
        name="u",
        measure="uniques",
        precision="1d",
        **{"from": str(start), "to": str(start + 7 * DAY_MS)},
    )
    assert all(abs(p["value"] - 300) <= 7 for p in days["data"])


async def test_breakdown_top_n_and_other(ctx: Ctx) -> None:
    rng = random.Random(11)
    base = parse_ts("2026-04-14T00:00:00Z")
    weights = {"google": 50, "bing": 30, "mail": 12, "ads": 5, "x": 3}
    events = [
        {
            "name": "bd",
            "ts": base + rng.randrange(36 * HOUR_MS),
            "dims": {
                "source": rng.choices(list(weights), list(weights.values()))[0],
                "country": rng.choice(["DE", "FR"]),
            },
            "value": rng.randrange(100) / 10,
            "uid": f"u{rng.randrange(500)}",
        }
        for _ in range(2000)
    ]
    await ctx.post(events)
    await ctx.app.persist(ctx.project)
    rng_params = {"from": str(base), "to": str(base + 2 * DAY_MS), "excluding_current": "false"}
    body = await ctx.get(
        "series", name="bd", precision="1d", group_by="source", limit=2, **rng_params
    )
    series = body["series"]
    assert [s["dims"]["source"] for s in series] == ["google", "bing", "__other__", "__none__"]
    assert series[-1]["total"] == 0  # every event has a source: __none__ is there, and 0
    by_source = Counter(e["dims"]["source"] for e in events)
    assert [s["total"] for s in series] == [
        by_source["google"],
        by_source["bing"],
        sum(by_source.values()) - by_source["google"] - by_source["bing"],
        0,
    ]
    assert sum(sum(p["value"] for p in s["data"]) for s in series) == len(events)
    # filter + group_by on a cross-tab, and sums
    de = await ctx.get(
        "series",
        name="bd",
        precision="1d",
        group_by="source",
        limit=1,
        measure="sum",
        country="DE",
        **rng_params,
    )
    want = (
        sum(
            round(e["value"] * 1e6)
            for e in events
            if e["dims"]["country"] == "DE" and e["dims"]["source"] == "google"
        )
        / 1e6
    )
    assert de["series"][0]["dims"] == {"country": "DE", "source": "google"}
    assert de["series"][0]["total"] == pytest.approx(want)
    uniq = await ctx.get(
        "series",
        name="bd",
        precision="1d",
        group_by="source",
        limit=2,
        measure="uniques",
        **rng_params,
    )
    other_uids = {e["uid"] for e in events if e["dims"]["source"] not in ("google", "bing")}
    assert uniq["series"][-2]["dims"] == {"source": "__other__"}
    assert abs(uniq["series"][-2]["total"] - len(other_uids)) <= max(3, 0.02 * len(other_uids))


async def test_several_names_and_etag(ctx: Ctx) -> None:
    base = parse_ts("2026-04-15T11:00:00Z")
    await ctx.post(
        [{"name": "a1", "ts": base}, {"name": "a1", "ts": base}, {"name": "b1", "ts": base}]
    )
    assert ctx.app.client is not None
    params = {"name": ["a1", "b1"], "precision": "1h", "excluding_current": "false"}
    r = await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/series", params=params, headers=ctx.read_h
    )
    body = r.json()
    assert [(s["name"], s["total"]) for s in body["series"]] == [("a1", 2), ("b1", 1)]
    tag = r.headers["etag"]
    again = await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/series",
        params=params,
        headers={**ctx.read_h, "If-None-Match": tag},
    )
    assert again.status_code == 304 and again.headers["etag"] == tag and again.content == b""
    await ctx.post([{"name": "b1", "ts": base}])
    changed = await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/series",
        params=params,
        headers={**ctx.read_h, "If-None-Match": tag},
    )
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    totals = await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/total", params=params, headers=ctx.read_h
    )
    assert totals.json()["totals"] == [{"name": "a1", "value": 2}, {"name": "b1", "value": 2}]


async def test_bad_zone_and_precision(ctx: Ctx) -> None:
    assert ctx.app.client is not None
    for params, needle in (
        ({"tz": "Mars/Olympus"}, "unknown time zone"),
        ({"precision": "7m"}, "precision"),
    ):
        r = await ctx.app.client.get(
            f"/v1/projects/{ctx.project}/series", params={"name": "x", **params}, headers=ctx.read_h
        )
        assert r.status_code == 400 and needle in r.json()["error"]["message"]


async def test_uniques_within_2_percent_at_a_million(harness: Any) -> None:
    from tests.support import Harness

    h: Harness = harness
    day = h.clock.now_ms() - h.clock.now_ms() % DAY_MS
    h.clock.set(day + HOUR_MS + 60_000)
    n = 1_000_000
    batch = 10_000  # 25,000 uids in one script were over max_batch_groups
    rng = random.Random(3)
    offsets = [rng.randrange(HOUR_MS) for _ in range(n)]
    for start in range(0, n, batch):
        events = [
            {"name": "big", "ts": day + offsets[i], "uid": f"visitor-{i}"}
            for i in range(start, start + batch)
        ]
        assert (await h.ingest(*events)).accepted == batch
    # hot: the union of 40 minute sketches, all still in Redis, never a sum
    edge = 20 * MINUTE_MS
    hot = await h.total("big", day + edge, day + HOUR_MS, "uniques")
    exact = sum(1 for o in offsets if o >= edge)
    assert abs(hot - exact) / exact < 0.02, (hot, exact)
    await h.persist()  # now the same from Postgres sketches
    cold = await h.total("big", day + edge, day + HOUR_MS, "uniques")
    assert abs(cold - exact) / exact < 0.02, (cold, exact)
    whole = await h.total("big", day, day + HOUR_MS, "uniques")
    assert abs(whole - n) / n < 0.02, whole


async def test_read_key_over_several_projects_and_their_union(ctx: Ctx, pool: asyncpg.Pool) -> None:
    other = "rd" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        other_ingest = await create_key(conn, other, "ingest")
        both = await create_key(conn, [ctx.project, other], "read")
        with pytest.raises(ValueError, match="only read keys"):
            await create_key(conn, [ctx.project, other], "ingest")
    base = parse_ts("2026-04-15T09:00:00Z")
    shared = [{"name": "pv", "ts": base + i * 1000, "uid": f"u{i}"} for i in range(200)]
    await ctx.post(shared)
    ctx_other = Ctx(ctx.app, other, other_ingest, both)
    await ctx_other.post(
        shared[100:] + [{"name": "pv", "ts": base, "uid": f"v{i}"} for i in range(50)]
    )
    assert ctx.app.client is not None
    params = {
        "project": [ctx.project, other],
        "name": "pv",
        "precision": "1h",
        "from": str(base),
        "to": str(base + HOUR_MS),
    }
    auth = {"Authorization": f"Bearer {both}"}
    counts = (await ctx.app.client.get("/v1/series", params=params, headers=auth)).json()
    assert [s["total"] for s in counts["series"]] == [200, 150]
    assert counts["union"][0]["total"] == 350
    uniq = (
        await ctx.app.client.get(
            "/v1/series", params={**params, "measure": "uniques"}, headers=auth
        )
    ).json()
    totals = [s["total"] for s in uniq["series"]]
    # the uid hashes are keyed by a random per-project secret, so the estimate is a fresh
    # draw per run: allow four standard errors of Redis's HLL (0.81 %), never less than 2
    assert abs(totals[0] - 200) <= 7 and abs(totals[1] - 150) <= 5
    # uids are keyed hashes with a secret per project (issue 11), so the 100 uids both
    # projects share are different people to the union: it holds every (project, uid) once
    # (a union of the sketches, ~350), never an exact sum of the two estimates
    assert abs(uniq["union"][0]["total"] - 350) <= 12
    # the key covers both project paths too, but not a third project
    assert (await ctx_other.get("total", name="pv", **{"from": str(base)}))["value"] == 150
    r = await ctx.app.client.get(
        "/v1/series", params={**params, "project": [ctx.project, "nosuch"]}, headers=auth
    )
    assert r.status_code == 404
    r = await ctx.app.client.get("/v1/series", params=params, headers=ctx.read_h)
    assert r.status_code == 404  # not covered answers like not existing (no oracle)


async def test_raw_log_fallback_when_no_rollup_covers(ctx: Ctx) -> None:
    rng = random.Random(21)
    base = parse_ts("2026-04-15T06:00:00Z")
    events = [
        {
            "name": "rw",
            "ts": base + rng.randrange(5 * HOUR_MS),
            "dims": {
                "source": rng.choice("ab"),
                "device": rng.choice(["ios", "web", "tv"]),
                "country": rng.choice(["DE", "FR"]),
            },
            "uid": f"u{rng.randrange(80)}",
            "value": 1.5,
        }
        for _ in range(600)
    ]
    await ctx.post(events[:400])
    await ctx.app.persist(ctx.project)  # part of the raw log is in Postgres, part in Redis
    await ctx.post(events[400:])
    window = {"from": str(base), "to": str(base + 5 * HOUR_MS)}
    body = await ctx.get("series", name="rw", precision="1h", source="a", device="ios", **window)
    assert body["source"] == "raw"
    want = Counter(
        (e["ts"] - base) // HOUR_MS
        for e in events
        if e["dims"]["source"] == "a" and e["dims"]["device"] == "ios"
    )
    assert [p["value"] for p in body["data"]] == [want[i] for i in range(5)]
    top = await ctx.get(
        "series",
        name="rw",
        precision="1h",
        group_by="device",
        limit=1,
        country="DE",
        measure="uniques",
        **window,
    )
    de = [e for e in events if e["dims"]["country"] == "DE"]
    per_device = {
        d: {e["uid"] for e in de if e["dims"]["device"] == d} for d in ("ios", "web", "tv")
    }
    best = max(sorted(per_device), key=lambda d: len(per_device[d]))
    assert top["source"] == "raw" and top["series"][0]["dims"] == {"country": "DE", "device": best}
    assert top["series"][0]["total"] == len(per_device[best])  # exact on the raw path
    rest = set().union(*(u for d, u in per_device.items() if d != best))
    assert top["series"][1]["total"] == len(rest)
    total = await ctx.get("total", name="rw", measure="sum", source="b", device="web", **window)
    assert total["value"] == 1.5 * sum(
        1 for e in events if e["dims"]["source"] == "b" and e["dims"]["device"] == "web"
    )


async def test_breakdown_over_many_tuples_with_live_data(ctx: Ctx) -> None:
    """Ranking in one scan must agree with the truth whether or not live (Redis) data
    reorders the top tuples."""
    rng = random.Random(8)
    base = parse_ts("2026-04-13T00:00:00Z")
    links = [f"l{i}" for i in range(60)]
    old = [
        {
            "name": "many",
            "ts": base + rng.randrange(2 * DAY_MS),
            "dims": {"link": rng.choices(links, [1 / (i + 1) for i in range(60)])[0]},
        }
        for _ in range(3000)
    ]
    await ctx.post(old)
    await ctx.app.persist(ctx.project)
    window = {"from": str(base), "to": str(base + 3 * DAY_MS), "excluding_current": "false"}

    async def check(events: list[dict[str, Any]]) -> list[str]:
        body = await ctx.get(
            "series", name="many", precision="1d", group_by="link", limit=3, **window
        )
        truth = Counter(e["dims"]["link"] for e in events)
        want = sorted(truth, key=lambda k: (-truth[k], k))[:3]
        got = [s["dims"]["link"] for s in body["series"][:3]]
        assert got == want
        assert [s["total"] for s in body["series"][:3]] == [truth[k] for k in want]
        assert body["series"][3]["total"] == sum(truth.values()) - sum(truth[k] for k in want)
        return got

    before = await check(old)
    # live events (still in Redis) push a tail link to the top
    live = [{"name": "many", "ts": NOW - 60_000, "dims": {"link": "l59"}} for _ in range(1500)]
    await ctx.post(live)
    after = await check(old + live)
    assert after[0] == "l59" and before[0] != "l59"


@pytest.mark.parametrize("depths", [(1,), (2, 8), (3,), (64, 512), ()])
async def test_breakdown_ranking_proof_agrees_with_totalling_everything(
    ctx: Ctx, depths: tuple[int, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """However deep the ranking reads each day's list (from one row to all of them, or not
    at all), the top tuples, their order (ties by value), totals and __other__ are exact,
    with and without live data in Redis."""
    monkeypatch.setattr(breakdown, "RANK_DEPTHS", depths)
    proofs: list[bool] = []
    prove = breakdown._prove_top

    async def recording(*args: Any, **kwargs: Any) -> Any:
        top = await prove(*args, **kwargs)
        proofs.append(top is not None)
        return top

    monkeypatch.setattr(breakdown, "_prove_top", recording)
    rng = random.Random(len(depths) * 31 + sum(depths))
    base = parse_ts("2026-04-05T00:00:00Z")
    links = [f"k{i:02d}" for i in range(40)]
    weights = [1 / (i + 1) ** 0.7 for i in range(40)]
    old = [
        {
            "name": "prove",
            "ts": base + rng.randrange(6 * DAY_MS),
            "dims": {"link": rng.choices(links, weights)[0]},
        }
        for _ in range(1200)
    ]
    await ctx.post(old)
    await ctx.app.persist(ctx.project)
    window = {"from": str(base), "to": str(base + 11 * DAY_MS), "excluding_current": "false"}

    async def check(events: list[dict[str, Any]], limit: int) -> None:
        body = await ctx.get(
            "series", name="prove", precision="1d", group_by="link", limit=limit, **window
        )
        truth = Counter(e["dims"]["link"] for e in events)
        want = sorted(truth, key=lambda k: (-truth[k], k))[:limit]
        assert [s["dims"]["link"] for s in body["series"][:limit]] == want
        assert [s["total"] for s in body["series"][:limit]] == [truth[k] for k in want]
        other = sum(truth.values()) - sum(truth[k] for k in want)
        assert body["series"][limit]["total"] == other

    for limit in (1, 5, 12):
        await check(old, limit)
    live = [
        {"name": "prove", "ts": NOW - 60_000, "dims": {"link": rng.choice(links[20:])}}
        for _ in range(150)
    ]
    await ctx.post(live)
    for limit in (1, 5, 12):
        await check(old + live, limit)
    # whole lists (40 links a day) always settle it; no rows at all never do
    if depths == (64, 512):
        assert all(proofs)
    if not depths:
        assert not any(proofs)


async def test_total_refuses_group_by(ctx: Ctx) -> None:
    """total answers one value: a breakdown request there is a 400 naming group_by, not a
    500 (schemathesis found it)."""
    assert ctx.app.client is not None
    r = await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/total",
        params={"name": "click", "group_by": "link", "precision": "1d"},
        headers=ctx.read_h,
    )
    assert r.status_code == 400, r.text
    assert "group_by" in r.json()["error"]["message"]
