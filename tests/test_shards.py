"""Hot-tenant shards (issue 13, item 2): a project split into N keyspaces `{p:P}`,
`{p:P:1}`, ... answers every read as if it were one (counts and sums add, uniques are
united, never summed), before and after persisting; changing N on a live project under
concurrent load loses and doubles nothing, and a retry of a batch with event ids after a
change still finds its duplicates. Real Redis and Postgres, the real app over HTTP."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio
from redis.asyncio import RedisCluster

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.config import Settings
from counters.core.shards import ShardPlan, home_of, next_plan, shard_project, token_shard
from counters.harness.placement import spread_project
from lua.client import RedisClient
from lua.keys import event_id_token
from persist.shards import load_plan, set_shards
from tests.support import ApiClient, project_api

NOW = parse_ts("2026-05-20T12:30:30Z")
START = parse_ts("2026-05-20T09:00:00Z")
WINDOW_MS = 3_600_000
Event = dict[str, Any]


def test_plan_rules() -> None:
    one = ShardPlan()
    three = next_plan(one, 3, 1_000, WINDOW_MS)
    assert (three.shards, three.span, three.ids_over(1_000)) == (3, 3, 1)
    assert three.ids_over(1_000 + WINDOW_MS) == 3  # ids follow N once the window is over
    two = next_plan(three, 2, 2_000, WINDOW_MS)
    # the routing of ids in effect (still 1) holds a window from this change on
    assert (two.shards, two.span, two.ids_over(2_000 + WINDOW_MS - 1)) == (2, 3, 1)
    assert next_plan(two, 1, 3_000, WINDOW_MS) == ShardPlan(1, 3, 1, 0)
    with pytest.raises(ValueError, match="between 1 and 64"):
        next_plan(one, 65, 0, WINDOW_MS)
    assert home_of(shard_project("shop", 2)) == ("shop", 2)
    assert home_of("shop") == ("shop", 0)
    assert {token_shard(f"{i:08x}" + "0" * 24, 3) for i in range(0, 2**32, 2**27)} == {0, 1, 2}


def _events(n: int, seed: int, ids: bool) -> list[Event]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        ev: Event = {
            "name": "click",
            "ts": START + rnd.randrange(0, NOW - START - MINUTE_MS),
            "dims": {"source": rnd.choice(["google", "bing", "mail"])},
            "uid": f"u{rnd.randrange(80)}",
            "value": rnd.randrange(1, 500) / 100,
        }
        if ids:
            ev["id"] = f"s{seed}-{i}"
        out.append(ev)
    return out


def _truth(events: list[Event], measure: str, lo: int = START, hi: int = NOW) -> float:
    chosen = [e for e in events if lo <= e["ts"] < hi]
    if measure == "count":
        return len(chosen)
    if measure == "sum":
        return round(sum(round(e["value"] * 100) for e in chosen) / 100, 2)
    return len({e["uid"] for e in chosen})


def _close(got: float, want: float, measure: str) -> bool:
    # uniques are HyperLogLog estimates of ~80 uids (hashed with a per-project secret);
    # the sum of the shards' uniques would be about 3 x as many
    slack = max(2, 0.02 * want) if measure == "uniques" else 1e-9
    return abs(got - want) <= slack


async def _split(c: ApiClient, n: int, window_ms: int = WINDOW_MS) -> ShardPlan:
    """`counters projects shards` on the app's own clock (the window is kept in its time)."""
    async with c.app.state["services"].pool.acquire() as conn:
        return await set_shards(conn, c.project, n, c.app.clock.now_ms(), window_ms)


async def _refresh(c: ApiClient) -> None:
    await c.app.state["services"].shards.refresh()


async def _persist_all(c: ApiClient) -> None:
    async with c.app.state["services"].pool.acquire() as conn:
        plan = await load_plan(conn, c.project)
    assert plan is not None
    for s in range(plan.span):
        await c.app.persist(shard_project(c.project, s))


async def _check(c: ApiClient, events: list[Event]) -> None:
    for measure in ("count", "sum", "uniques"):
        s = await c.get(
            "series",
            name="click",
            precision="1h",
            measure=measure,
            excluding_current="false",
            **{"from": str(START)},
        )
        for i, p in enumerate(s["data"]):
            lo = START + i * HOUR_MS
            want = _truth(events, measure, lo, lo + HOUR_MS)
            assert _close(p["value"], want, measure), (measure, lo, p, want)
        t = await c.get(
            "total",
            name="click",
            measure=measure,
            excluding_current="false",
            **{"from": str(START)},
        )
        assert _close(t["value"], _truth(events, measure), measure), (measure, t)
        g = await c.get(
            "total",
            name="click",
            measure=measure,
            excluding_current="false",
            source="bing",
            **{"from": str(START)},
        )
        bing = [e for e in events if e["dims"]["source"] == "bing"]
        assert _close(g["value"], _truth(bing, measure), measure), (measure, g)


@pytest_asyncio.fixture(loop_scope="session")
async def api(
    settings: Settings, pool: asyncpg.Pool, redis: RedisClient
) -> AsyncIterator[ApiClient]:
    """A fresh project; on a Redis Cluster one whose first 3 shards sit on 3 different
    masters, so every merge of shards is a merge across masters."""
    name = None
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        name = spread_project(redis, "sh" + uuid.uuid4().hex[:8] + "n", 3)
    async with project_api(
        settings, pool, "sh", NOW, name=name, max_event_age_days=30, minute_retention_days=30
    ) as c:
        yield c


@pytest.mark.asyncio(loop_scope="session")
async def test_a_split_project_reads_as_one(api: ApiClient) -> None:
    c = api
    # no window: events with ids are split over the 3 shards at once
    plan = await _split(c, 3, window_ms=0)
    assert plan.span == 3 and plan.ids_over(c.app.clock.now_ms()) == 3
    await _refresh(c)
    plain = _events(600, 1, ids=False)
    with_ids = _events(600, 2, ids=True)
    for i in range(0, 600, 50):  # batches of 50: the plain ones go round robin
        await c.post(plain[i : i + 50])
        await c.post(with_ids[i : i + 50])
    events = plain + with_ids
    redis = c.app.state["services"].redis
    prefix = c.app.settings.key_prefix
    for s in range(3):  # every shard's keyspace took a part of the load, ids included
        base = f"{prefix}:{{p:{shard_project(c.project, s)}}}:"
        assert int(await redis.hget(base + "wm", "rawn") or 0) > 0
        assert [k async for k in redis.scan_iter(match=base + "id:*", count=1000)]
    await _check(c, events)  # hot, in Redis
    await _persist_all(c)
    await _check(c, events)  # persisted, in Postgres
    # a retry of batches with ids is all duplicates, however they were split
    r = await c.app.client.post(  # type: ignore[union-attr]
        "/v1/events", content=msgspec.json.encode(with_ids[:50]), headers=c.ingest_h
    )
    assert r.status_code == 200 and r.json() == {"accepted": 0, "duplicates": 50}, r.text


@pytest.mark.asyncio(loop_scope="session")
async def test_changing_n_under_load_loses_and_doubles_nothing(api: ApiClient) -> None:
    c = api
    pool = c.app.state["services"].pool
    sent: list[Event] = []
    stop = asyncio.Event()

    async def writer(seed: int) -> None:
        n = 0
        while not stop.is_set():
            batch = _events(40, seed * 1000 + n, ids=seed % 2 == 0)
            await c.post(batch)
            sent.extend(batch)
            n += 1
            if seed % 2 == 0 and n % 3 == 0:
                # a client retry of its last batch: every event is a duplicate
                r = await c.app.client.post(  # type: ignore[union-attr]
                    "/v1/events", content=msgspec.json.encode(batch), headers=c.ingest_h
                )
                assert r.status_code == 200 and r.json()["accepted"] == 0, r.text
            await asyncio.sleep(0)

    await _split(c, 3, window_ms=0)  # ids split over 3 from the start
    tasks = [asyncio.create_task(writer(s)) for s in range(4)]
    try:
        for n in (2, 4, 1, 3):  # each within the window: ids stay routed over 3
            await _split(c, n)
            await _refresh(c)
            before = len(sent)
            while len(sent) < before + 400:  # load runs across every change
                await asyncio.sleep(0.01)
            await c.app.persist(c.project)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await _check(c, sent)
    await _persist_all(c)
    await _check(c, sent)
    async with pool.acquire() as conn:
        plan = await load_plan(conn, c.project)
        rows = await conn.fetchval(
            "SELECT count(*) FROM raw_events WHERE project = ANY($1::text[])",
            [shard_project(c.project, s) for s in range(4)],
        )
    assert plan is not None and plan.span == 4
    assert rows == len(sent)  # the raw log holds every event once, over the shards


@pytest.mark.asyncio(loop_scope="session")
async def test_the_window_keeps_a_retry_on_its_first_shard(api: ApiClient) -> None:
    """A retry after a change of N meets its markers only because ids keep their routing
    for the window: changed without one, the same retry is counted again (on another
    shard), which is what the window prevents."""
    c = api
    await _split(c, 2, window_ms=0)
    await _refresh(c)
    batch = _events(200, 7, ids=True)
    await c.post(batch)
    await _split(c, 3)  # with the window
    await _refresh(c)
    r = await c.app.client.post(  # type: ignore[union-attr]
        "/v1/events", content=msgspec.json.encode(batch), headers=c.ingest_h
    )
    assert r.json() == {"accepted": 0, "duplicates": 200}, r.text
    await _split(c, 5, window_ms=0)  # no window: ids move at once
    await _refresh(c)
    r = await c.app.client.post(  # type: ignore[union-attr]
        "/v1/events", content=msgspec.json.encode(batch), headers=c.ingest_h
    )
    assert r.json()["accepted"] > 0, r.text  # moved ids are counted twice


@pytest.mark.asyncio(loop_scope="session")
async def test_a_split_batch_over_the_budget_applies_nothing(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    """Every part of a split batch is checked before any is applied: a part over
    max_batch_groups is a 413 and the parts that would fit are not applied either."""
    async with project_api(
        settings, pool, "shb", NOW, max_event_age_days=30, max_batch_groups=60
    ) as c:
        await _split(c, 3, window_ms=0)
        await _refresh(c)
        small: list[Event] = []
        big: list[Event] = []
        i = 0
        while len(small) < 2 or len(big) < 40:  # ids chosen by the shard they route to
            shard = token_shard(event_id_token("click", f"b{i}"), 3)
            ev = {
                "name": "click",
                "ts": START + (i % 200) * MINUTE_MS,
                "dims": {"source": f"v{i}"},
                "id": f"b{i}",
            }
            if shard == 1 and len(small) < 2:
                small.append(ev)
            elif shard == 2 and len(big) < 40:
                big.append(ev)
            i += 1
        r = await c.app.client.post(  # type: ignore[union-attr]
            "/v1/events", content=msgspec.json.encode(small + big), headers=c.ingest_h
        )
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "batch_too_complex"
        t = await c.get("total", name="click", excluding_current="false", **{"from": str(START)})
        assert t["value"] == 0, t  # the small part (shard 1) was not applied either


@pytest.mark.asyncio(loop_scope="session")
async def test_dead_letters_of_a_project_include_its_shards(pool: asyncpg.Pool) -> None:
    """`counters deadletter list --project P` (and the rebuild warning) sees the dead letters
    of P's shards, stored as `P:s`; a shard's own name still picks only its own; a project
    whose name merely starts alike is not P's."""
    from persist.deadletter import dead_letters_overlapping, list_dead_letters

    base = "shd" + uuid.uuid4().hex[:8]
    stored = [base, f"{base}:1", f"{base}x", f"{base}x:1"]
    async with pool.acquire() as conn:
        for n, project in enumerate(stored):
            await conn.execute(
                "INSERT INTO raw_dead_letters (project, stream_id, events, payload, error,"
                " attempts, first_failed_at, last_failed_at)"
                " VALUES ($1, $2, 1, '\\x00', 'e', 3, now(), now())",
                project,
                f"{n}-0",
            )
        found = {d.project for d in await list_dead_letters(conn, project=base)}
        assert found == {base, f"{base}:1"}
        found = {d.project for d in await list_dead_letters(conn, project=f"{base}:1")}
        assert found == {f"{base}:1"}
        found = {d.project for d in await dead_letters_overlapping(conn, base, 0, 2**40)}
        assert found == {base, f"{base}:1"}
        await conn.execute("DELETE FROM raw_dead_letters WHERE project = ANY($1)", stored)
