"""Every read of a split project answers as if it were one project (issue 13, item 2):
breakdowns (top tuples, `__other__`, `__none__`; any-of filters), raw-log reads and the raw
export, the catalog and the strict read parameters it backs, /prom and the batched query
route. Checked against the events themselves (the truth computed here), hot in Redis,
with only some shards persisted (each shard has its own watermarks), with late deltas
pending in the shards, and with every shard persisted. Real Redis and Postgres, the real
app over HTTP."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.config import Settings
from counters.core.shards import shard_project
from tests.support import ApiClient, project_api
from tests.test_shards import _persist_all, _refresh, _split

NOW = parse_ts("2026-05-20T12:30:30Z")
START = parse_ts("2026-05-20T09:00:00Z")
HOURS = 4  # 09:00 .. 12:00 (the last in progress)
LATE_HOUR = START + HOUR_MS  # late events land in 10:00, persisted by then
UID_POOLS = {"google": 60, "bing": 25, "mail": 8}
"""Each source's uids (distinct prefixes): the sources' uniques are far apart."""
Event = dict[str, Any]
Events = list[Event]
pytestmark = pytest.mark.asyncio(loop_scope="session")


def _events(n: int, seed: int, lo: int = START, hi: int = NOW - MINUTE_MS) -> Events:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        source = rnd.choices(list(UID_POOLS), weights=[5, 3, 2])[0]
        dims = {"source": source}
        r = rnd.random()
        if r < 0.6:
            dims["plan"] = "pro"
        elif r < 0.85:
            dims["plan"] = "free"  # else no plan: the breakdown's __none__
        if rnd.random() < 0.7:
            dims["device"] = rnd.choice(["ios", "web"])
        out.append(
            {
                "name": "click",
                "ts": rnd.randrange(lo, hi),
                "dims": dims,
                "uid": f"{source[0]}{rnd.randrange(UID_POOLS[source])}",
                "value": rnd.randrange(1, 500) / 100,
            }
        )
    return out


def _value(evs: Events, measure: str) -> float:
    if measure == "count":
        return len(evs)
    if measure == "sum":
        return round(sum(round(e["value"] * 100) for e in evs) / 100, 2)
    return len({e["uid"] for e in evs})


def _hour(evs: Events, i: int) -> Events:
    lo = START + i * HOUR_MS
    return [e for e in evs if lo <= e["ts"] < lo + HOUR_MS]


def _slack(want: float, measure: str, exact: bool) -> float:
    # rollup uniques are HyperLogLog estimates (uids hashed with a per-project secret);
    # a sum of the shards' uniques instead of their union would be about twice as many
    return max(2, 0.04 * want) if measure == "uniques" and not exact else 1e-9


def _same(got: float, want: float, measure: str, exact: bool = False) -> bool:
    return abs(got - want) <= _slack(want, measure, exact)


def _check_series(s: Any, evs: Events, measure: str, exact: bool = False) -> None:
    """One series' total and every hourly point against the events it stands for."""
    assert _same(s["total"], _value(evs, measure), measure, exact), (s["dims"], s["total"])
    assert len(s["data"]) == HOURS, s
    for i, p in enumerate(s["data"]):
        want = _value(_hour(evs, i), measure)
        assert _same(p["value"], want, measure, exact), (s["dims"], i, p, want)


def _check_none_uniques(s: Any, evs: Events, with_dim: Events, exact: bool) -> None:
    """__none__ of uniques: the uids seen only in events lacking the grouped dim (the
    rollup path estimates it as uniques(all) - uniques(every tuple))."""
    for got, every, some in [
        (s["total"], evs, with_dim),
        *((p["value"], _hour(evs, i), _hour(with_dim, i)) for i, p in enumerate(s["data"])),
    ]:
        want = len({e["uid"] for e in every}) - len({e["uid"] for e in some})
        slack = 0 if exact else max(3, 0.05 * len({e["uid"] for e in every}))
        assert abs(got - want) <= slack, (got, want)


async def _check_breakdown(
    c: ApiClient,
    evs: Events,
    group_by: str,
    measure: str,
    limit: int,
    *,
    exact: bool = False,
    **filters: Any,
) -> Any:
    """The breakdown reply of group_by (top `limit` tuples, __other__, __none__) against
    the truth: the top is the truth's (for uniques: within the estimates' spread), and
    every series holds exactly the events it names."""
    reply = await c.get(
        "series",
        name="click",
        precision="1h",
        measure=measure,
        group_by=group_by,
        limit=str(limit),
        excluding_current="false",
        **{"from": str(START)},
        **filters,
    )
    series = reply["series"]
    *top, other, none = series
    assert other["dims"][group_by] == "__other__" and none["dims"][group_by] == "__none__"
    with_dim = [e for e in evs if group_by in e["dims"]]
    groups: dict[str, Events] = {}
    for e in with_dim:
        groups.setdefault(e["dims"][group_by], []).append(e)
    truth = {g: _value(es, measure) for g, es in groups.items()}
    ranked = sorted(truth, key=lambda g: (-truth[g], g))
    chosen = [s["dims"][group_by] for s in top]
    assert len(chosen) == min(limit, len(groups)), (chosen, ranked)
    if measure == "uniques" and not exact:
        best_left = max([truth[g] for g in ranked if g not in chosen], default=0)
        slack = 2 * _slack(best_left, measure, exact)
        assert all(truth[g] >= best_left - slack for g in chosen), (chosen, truth)
    else:
        assert chosen == ranked[:limit], (chosen, truth)
    for s, g in zip(top, chosen, strict=True):
        _check_series(s, groups[g], measure, exact)
    _check_series(other, [e for e in with_dim if e["dims"][group_by] not in chosen], measure, exact)
    lacking = [e for e in evs if group_by not in e["dims"]]
    if measure == "uniques":
        _check_none_uniques(none, evs, with_dim, exact)
    else:
        _check_series(none, lacking, measure, exact)
    return reply


def _where(evs: Events, **dims: str | list[str]) -> Events:
    def keep(e: Event) -> bool:
        for d, v in dims.items():
            allowed = v if isinstance(v, list) else [v]
            if e["dims"].get(d) not in allowed:
                return False
        return True

    return [e for e in evs if keep(e)]


@pytest_asyncio.fixture(loop_scope="session")
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    async with project_api(
        settings,
        pool,
        "shr",
        NOW,
        max_event_age_days=30,
        minute_retention_days=30,
        crosstabs=(("plan", "source"),),
    ) as c:
        yield c


async def _post_split(c: ApiClient, evs: Events) -> None:
    """Posts in batches of 50 with no ids: round robin over the shards."""
    for i in range(0, len(evs), 50):
        await c.post(evs[i : i + 50])


async def _in_every_stage(c: ApiClient, check: Callable[[Events], Awaitable[None]]) -> None:
    """Splits the project over 3 shards, then runs check: hot in Redis; with one shard
    persisted (shards' watermarks differ); with every shard persisted; with late events
    pending in the shards' late generations; with everything persisted again."""
    await _split(c, 3, window_ms=0)
    await _refresh(c)
    evs = _events(1200, 1)
    await _post_split(c, evs)
    redis = c.app.state["services"].redis
    prefix = c.app.settings.key_prefix
    for s in range(3):  # every shard took a part
        base = f"{prefix}:{{p:{shard_project(c.project, s)}}}:"
        assert int(await redis.hget(base + "wm", "rawn") or 0) > 0
    await check(evs)
    await c.app.persist(shard_project(c.project, 1))
    await check(evs)
    await _persist_all(c)
    await check(evs)
    late = _events(300, 2, LATE_HOUR, LATE_HOUR + HOUR_MS)
    await _post_split(c, late)
    evs += late
    await check(evs)
    await _persist_all(c)
    await check(evs)


async def test_breakdowns_of_a_split_project(api: ApiClient) -> None:
    """Top tuples, __other__ and __none__ for count, sum and uniques over the shards' merged
    tuples; with a filter (a cross-tab) and with any-of filters."""

    async def check(evs: Events) -> None:
        for measure in ("count", "sum", "uniques"):
            await _check_breakdown(api, evs, "source", measure, 1)
            await _check_breakdown(api, evs, "plan", measure, 1)
            google = _where(evs, source="google")
            await _check_breakdown(api, google, "plan", measure, 1, source="google")
            some = _where(evs, source=["google", "mail"])
            await _check_breakdown(
                api, some, "plan", measure, 1, **{"d.source": ["google", "mail"]}
            )

    await _in_every_stage(api, check)


async def test_raw_reads_of_a_split_project(api: ApiClient) -> None:
    """source=raw (no rollup covers device with source) reads every shard's rows and
    stream: exact, uniques included."""

    async def check(evs: Events) -> None:
        bing = _where(evs, source="bing")
        for measure in ("count", "sum", "uniques"):
            reply = await _check_breakdown(
                api, bing, "device", measure, 1, exact=True, source="bing"
            )
            assert reply["source"] == "raw", reply
            t = await api.get(
                "total",
                name="click",
                measure=measure,
                excluding_current="false",
                source="bing",
                device="ios",
                **{"from": str(START)},
            )
            want = _value(_where(evs, source="bing", device="ios"), measure)
            assert t["value"] == want, (measure, t, want)

    await _in_every_stage(api, check)


async def test_raw_export_of_a_split_project(api: ApiClient) -> None:
    """The export streams every shard's persisted raw rows, in event-time order (more rows a
    shard than one cursor fetch: the shards' cursors are merged)."""
    await _split(api, 3, window_ms=0)
    await _refresh(api)
    evs = _events(6600, 3)
    await _post_split(api, evs)
    await _persist_all(api)
    text = await api.text(
        f"/v1/projects/{api.project}/events",
        **{"from": str(START), "to": str(NOW)},
    )
    lines = [msgspec.json.decode(line) for line in text.splitlines()]
    got = sorted(
        (parse_ts(x["ts"]), sorted(x["dims"].items()), round(float(x["value"]) * 100))
        for x in lines
    )
    want = sorted((e["ts"], sorted(e["dims"].items()), round(e["value"] * 100)) for e in evs)
    assert got == want
    assert [parse_ts(x["ts"]) for x in lines] == sorted(parse_ts(x["ts"]) for x in lines)


async def test_the_raw_budget_counts_every_shard(settings: Settings, pool: asyncpg.Pool) -> None:
    """A raw read over the raw row budget is refused though no shard alone is over it."""
    async with project_api(
        settings, pool, "shb", NOW, max_event_age_days=30, raw_row_budget=500
    ) as c:
        await _split(c, 3, window_ms=0)
        await _refresh(c)
        await _post_split(c, _events(600, 4))
        await _persist_all(c)
        assert c.app.client is not None
        r = await c.app.client.get(
            f"/v1/projects/{c.project}/total",
            params={"name": "click", "source": "bing", "device": "ios", "from": str(START)},
            headers=c.read_h,
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "raw_budget_exceeded", r.text


async def test_catalog_and_strict_params_of_a_split_project(api: ApiClient) -> None:
    """The catalog is the union of the shards' (names and dims seen in any of them), and a
    bare dim parameter seen only in another shard is known to a strict read."""
    await _split(api, 3, window_ms=0)
    await _refresh(api)
    ts = NOW - 10 * MINUTE_MS
    for k in range(3):  # one batch a shard (round robin): each its own name and dim
        await api.post([{"name": f"n{k}", "ts": ts, "dims": {f"d{k}": "x"}}])

    async def check() -> None:
        catalog = await api.get("catalog")
        assert catalog["project"] == api.project
        assert catalog["names"] == [{"name": f"n{k}", "dims": [f"d{k}"]} for k in range(3)]
        for k in range(3):
            t = await api.get("total", name=f"n{k}", excluding_current="false", **{f"d{k}": "x"})
            assert t["value"] == 1, t

    await check()
    await _persist_all(api)
    await check()


async def test_prom_reads_a_split_project_as_one(api: ApiClient) -> None:
    """/prom query_range: the merged value per hour (count and sum), and a breakdown."""

    async def check(evs: Events) -> None:
        client = api.app.client
        assert client is not None
        for metric, measure in (("counters_count", "count"), ("counters_sum", "sum")):
            r = await client.get(
                "/prom/api/v1/query_range",
                params={
                    "query": f'{metric}{{name="click"}}',
                    "start": str((START + HOUR_MS) / 1000),
                    "end": str((START + 3 * HOUR_MS) / 1000),
                    "step": "3600",
                },
                headers=api.read_h,
            )
            assert r.status_code == 200, r.text
            (series,) = r.json()["data"]["result"]
            got = [float(v) for _, v in series["values"]]
            want = [_value(_hour(evs, i), measure) for i in range(3)]
            assert got == pytest.approx(want), (metric, got, want)
        r = await client.get(
            "/prom/api/v1/query_range",
            params={
                "query": 'sum by (plan) (counters_count{name="click"})',
                "start": str((START + HOUR_MS) / 1000),
                "end": str((START + 3 * HOUR_MS) / 1000),
                "step": "3600",
            },
            headers=api.read_h,
        )
        assert r.status_code == 200, r.text
        by_plan = {s["metric"].get("plan", ""): s["values"] for s in r.json()["data"]["result"]}
        for plan in ("pro", "free"):
            got = [float(v) for _, v in by_plan[plan]]
            assert got == [len(_where(_hour(evs, i), plan=plan)) for i in range(3)], plan
        r = await client.get("/prom/api/v1/label/device/values", headers=api.read_h)
        assert r.json()["data"] == ["ios", "web"], r.text

    await _in_every_stage(api, check)


async def test_batched_query_reads_a_split_project_as_one(api: ApiClient) -> None:
    """POST /query: a total, a breakdown and the catalog of a split project, merged."""

    async def check(evs: Events) -> None:
        client = api.app.client
        assert client is not None
        common = {"from": str(START), "precision": "1h", "excluding_current": "false"}
        queries = [
            {"id": "t", "kind": "total", "name": "click", "measure": "sum"},
            {"id": "u", "kind": "total", "name": "click", "measure": "uniques"},
            {"id": "b", "kind": "series", "name": "click", "group_by": "source", "limit": "1"},
            {"id": "c", "kind": "catalog"},
        ]
        r = await client.post(
            f"/v1/projects/{api.project}/query",
            content=msgspec.json.encode({"common": common, "queries": queries}),
            headers=api.read_h,
        )
        assert r.status_code == 200, r.text
        out = r.json()["results"]
        assert out["t"]["value"] == pytest.approx(_value(evs, "sum"))
        assert _same(out["u"]["value"], _value(evs, "uniques"), "uniques")
        top, other, _ = out["b"]["series"]
        assert top["dims"] == {"source": "google"}
        assert top["total"] == len(_where(evs, source="google"))
        assert other["total"] == len(_where(evs, source=["bing", "mail"]))
        assert out["c"]["names"] == [{"name": "click", "dims": ["device", "plan", "source"]}]

    await _in_every_stage(api, check)
