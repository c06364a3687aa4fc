"""The batched read (issue 15): GET ?q=<JSON> and POST /v1/projects/{p}/query answer every
query exactly as its single route does, under one ETag (304 to If-None-Match, a new tag
after a new event); a bad query is a 400 naming it and nothing is read; /catalog has an
ETag too (in-process app on a manual clock, real Redis and Postgres)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from persist.projects import create_key
from tests.support import ApiClient, InProcessApp

NOW = parse_ts("2026-04-15T12:00:30Z")
BASE = parse_ts("2026-04-15T00:00:00Z")
COMMON = {"from": "2026-04-15T00:00:00Z", "precision": "1h"}
QUERIES: list[dict[str, Any]] = [
    {"id": "s", "kind": "series", "name": "click"},
    {"id": "m", "kind": "series", "name": ["click", "signup"], "measure": "uniques"},
    {"id": "b.click.source", "kind": "series", "name": "click", "group_by": "source"},
    {"id": "f", "kind": "series", "name": "click", "d.source": "a", "precision": "2h"},
    {"id": "t", "kind": "total", "name": "purchase", "measure": "sum"},
    {"id": "c", "kind": "catalog"},
]
BATCH = {"common": COMMON, "queries": QUERIES}


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    project = "qb" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, max_event_age_days=30, minute_retention_days=30)
    async with InProcessApp(s, ManualClock(NOW)) as app:
        c = ApiClient(app, project, ingest, read)
        events: list[dict[str, Any]] = []
        for i in range(12 * 60 // 7):
            ts = BASE + i * 7 * MINUTE_MS
            events.append(
                {"name": "click", "ts": ts, "uid": f"u{i % 13}", "dims": {"source": "ab"[i % 2]}}
            )
            if i % 5 == 0:
                events.append({"name": "signup", "ts": ts, "uid": f"u{i % 7}"})
                events.append({"name": "purchase", "ts": ts, "value": 1.25 + i})
        await c.post(events)
        yield c


def _client(c: ApiClient) -> httpx.AsyncClient:
    assert c.app.client is not None
    return c.app.client


async def batch_get(
    c: ApiClient, batch: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    q = batch if isinstance(batch, str) else msgspec.json.encode(batch).decode()
    return await _client(c).get(
        f"/v1/projects/{c.project}/query", params={"q": q}, headers={**c.read_h, **(headers or {})}
    )


async def batch_post(
    c: ApiClient, batch: Any, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await _client(c).post(
        f"/v1/projects/{c.project}/query",
        content=msgspec.json.encode(batch),
        headers={**c.read_h, **(headers or {})},
    )


def _single(query: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    params = {**COMMON, **{k: v for k, v in query.items() if k not in ("id", "kind")}}
    return query["kind"], params


async def test_results_equal_the_single_routes(ctx: ApiClient) -> None:
    r = await batch_get(ctx, BATCH)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert list(results) == [q["id"] for q in QUERIES]
    for query in QUERIES:
        kind, params = _single(query)
        want = await ctx.get(kind) if kind == "catalog" else await ctx.get(kind, **params)
        assert results[query["id"]] == want, query["id"]
    # the data is there: a vacuous equality of empty replies would prove nothing
    assert sum(p["value"] for p in results["s"]["data"]) == 12 * 60 // 7
    assert [s["dims"]["source"] for s in results["b.click.source"]["series"][:2]] == ["a", "b"]
    assert len(results["m"]["series"]) == 2 and results["t"]["value"] > 0
    assert results["c"]["names"][0] == {"name": "click", "dims": ["source"]}
    post = await batch_post(ctx, BATCH)
    assert post.status_code == 200 and post.content == r.content
    assert post.headers["etag"] == r.headers["etag"]


async def test_one_etag_304_then_a_new_one_after_an_event(ctx: ApiClient) -> None:
    first = await batch_get(ctx, BATCH)
    tag = first.headers["etag"]
    assert tag and first.headers["cache-control"] == "no-cache"
    again = await batch_get(ctx, BATCH, {"If-None-Match": tag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == tag
    posted = await batch_post(ctx, BATCH, {"If-None-Match": tag})
    assert posted.status_code == 304
    await ctx.post([{"name": "click", "ts": BASE + 3 * HOUR_MS, "dims": {"source": "a"}}])
    changed = await batch_get(ctx, BATCH, {"If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert changed.json()["results"]["s"]["data"][3]["value"] == (
        first.json()["results"]["s"]["data"][3]["value"] + 1
    )


async def test_a_bad_query_is_named_and_nothing_is_read(ctx: ApiClient) -> None:
    cache = ctx.app.state["services"].read_cache
    assert cache is not None
    queries = [
        {"id": "a", "kind": "series", "name": "click"},
        {"id": "b", "kind": "total", "name": "signup"},
        {"id": "b.click.source", "kind": "series", "name": "click", "precison": "1m"},
    ]
    before = (cache.hits, cache.misses)
    r = await batch_post(ctx, {"common": COMMON, "queries": queries})
    assert r.status_code == 400
    assert r.json()["error"] == {
        "code": "bad_parameter",
        "message": "queries[2] (id \"b.click.source\"): unknown parameter 'precison': neither"
        " a read parameter nor a dimension this project has seen (filter on a new dim with"
        " d.precison=...)",
    }
    assert (cache.hits, cache.misses) == before
    # the same batch without the typo reads (so the probe above could have moved)
    queries[2].pop("precison")
    assert (await batch_post(ctx, {"common": COMMON, "queries": queries})).status_code == 200
    assert (cache.hits, cache.misses) != before


async def test_read_limits_apply_per_query(ctx: ApiClient) -> None:
    cases = [
        ({"id": "x", "kind": "total", "name": "click", "group_by": "source"}, "group_by: total"),
        (
            {
                "id": "y",
                "kind": "series",
                "name": "click",
                "precision": "1m",
                "from": "2026-04-01T00:00:00Z",
            },
            "too many buckets",
        ),
        ({"id": "z", "kind": "series", "measure": "max"}, "measure must be one of"),
    ]
    for query, message in cases:
        batch = {"common": {"name": "click"}, "queries": [{"id": "ok", "kind": "catalog"}, query]}
        r = await batch_get(ctx, batch)
        assert r.status_code == 400, r.text
        text = r.json()["error"]["message"]
        assert text.startswith(f'queries[1] (id "{query["id"]}"): ') and message in text, text


async def test_shape_errors(ctx: ApiClient) -> None:
    over = {"queries": [{"id": str(i), "kind": "catalog"} for i in range(51)]}
    for batch, message in [
        (over, "at most 50 queries per batch (got 51)"),
        ("{not json", "malformed JSON in the batch"),
        (
            {"queries": [{"id": "a", "kind": "series", "name": "click", "format": "csv"}]},
            "format must be json",
        ),
    ]:
        for r in (await batch_get(ctx, batch), await batch_post(ctx, batch)):
            if isinstance(batch, str) and r.request.method == "POST":
                continue  # the POST helper encodes its argument: a str is valid JSON there
            assert r.status_code == 400 and message in r.json()["error"]["message"], r.text
    bad_post = await _client(ctx).post(
        f"/v1/projects/{ctx.project}/query", content=b"[1,", headers=ctx.read_h
    )
    assert bad_post.status_code == 400 and bad_post.json()["error"]["code"] == "malformed_json"
    extra = await _client(ctx).get(
        f"/v1/projects/{ctx.project}/query",
        params={"q": msgspec.json.encode(over).decode(), "name": "click"},
        headers=ctx.read_h,
    )
    assert extra.status_code == 400 and "unknown parameter 'name'" in extra.text
    missing = await _client(ctx).get(f"/v1/projects/{ctx.project}/query", headers=ctx.read_h)
    assert missing.status_code == 400 and "q is required" in missing.text


async def test_authorized_once_with_a_read_key(ctx: ApiClient) -> None:
    url = f"/v1/projects/{ctx.project}/query"
    body = msgspec.json.encode(BATCH)
    assert (await _client(ctx).post(url, content=body)).status_code == 401
    ingest = await _client(ctx).post(url, content=body, headers=ctx.ingest_h)
    assert ingest.status_code == 403
    other = await _client(ctx).post(
        "/v1/projects/elsewhere/query", content=body, headers=ctx.read_h
    )
    assert other.status_code == 404


async def test_catalog_etag_and_304(ctx: ApiClient) -> None:
    url = f"/v1/projects/{ctx.project}/catalog"
    first = await _client(ctx).get(url, headers=ctx.read_h)
    tag = first.headers["etag"]
    assert first.status_code == 200 and first.json()["names"]
    again = await _client(ctx).get(url, headers={**ctx.read_h, "If-None-Match": tag})
    assert again.status_code == 304
    await ctx.post([{"name": "newname", "ts": NOW - MINUTE_MS}])
    changed = await _client(ctx).get(url, headers={**ctx.read_h, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.headers["etag"] != tag
    assert "newname" in [n["name"] for n in changed.json()["names"]]
