"""The batched read (issue 15): GET ?q=<JSON> and POST /v1/projects/{p}/query answer every
query exactly as its single route does, under one ETag (304 to If-None-Match, a new tag
after a new event); a bad query is a 400 naming it and nothing is read; /catalog has an
ETag too (in-process app on a manual clock, real Redis and Postgres)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, format_ts, parse_ts
from counters.core.config import Settings
from tests.service import Service
from tests.service import create_key as create_cli_key
from tests.support import ApiClient, project_api

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
    {"id": "bare", "kind": "total", "name": "click", "source": "b", "compare": "previous_period"},
    {"id": "live", "kind": "series", "name": "click", "excluding_current": "false"},
    {"id": "any", "kind": "total", "name": "click", "d.source": ["a", "b"]},
]
BATCH = {"common": COMMON, "queries": QUERIES}


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    async with project_api(
        settings, pool, "qb", NOW, max_event_age_days=30, minute_retention_days=30
    ) as c:
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
    assert results["bare"]["comparison"]["to"] == "2026-04-15T00:00:00Z"
    assert results["live"]["data"][-1]["partial"] is True
    assert results["any"]["value"] == sum(p["value"] for p in results["s"]["data"])
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


async def test_the_batch_is_one_reply_under_max_points(ctx: ApiClient) -> None:
    # each breakdown may answer (100 + 2) series x 720 minutes = 73,440 points: one is fine,
    # two are over the 100,000 one reply may hold
    top = {"kind": "series", "name": "click", "precision": "1m", "group_by": "source"}
    one = [{"id": "p1", **top, "limit": "100"}]
    assert (await batch_get(ctx, {"common": COMMON, "queries": one})).status_code == 200
    two = [*one, {"id": "p2", **top, "limit": "100"}]
    r = await batch_get(ctx, {"common": COMMON, "queries": two})
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_points"
    assert "this batch asks for up to 146,880 points in all" in r.json()["error"]["message"]


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


def test_document_describes_batch_compare_and_partial() -> None:
    from api.routes import document

    doc = document()
    paths = doc["paths"]
    batch = paths["/v1/projects/{project}/query"]
    assert (batch["get"]["operationId"], batch["post"]["operationId"]) == (
        "queryBatch",
        "queryBatchPost",
    )
    assert {"200", "304", "400"} <= set(batch["get"]["responses"]) & set(batch["post"]["responses"])
    assert "ETag" in paths["/v1/projects/{project}/catalog"]["get"]["responses"]["200"]["headers"]
    schemas = doc["components"]["schemas"]
    assert schemas["Compare"]["enum"] == ["previous_period", "previous_year"]
    for path in ("series", "total"):
        params = {
            p["name"]: p for p in paths[f"/v1/projects/{{project}}/{path}"]["get"]["parameters"]
        }
        assert params["compare"]["schema"] == {"$ref": "#/components/schemas/Compare"}
    across = {p["name"] for p in paths["/v1/series"]["get"]["parameters"]}
    assert "compare" not in across
    assert "partial" in schemas["Point"]["properties"]
    for reply in ("SeriesReply", "TotalReply", "NamedSeries", "NamedTotal"):
        assert "comparison" in schemas[reply]["properties"]
        assert "comparison" not in schemas[reply]["required"]
    assert schemas["BatchRequest"]["properties"]["queries"]["maxItems"] == 50


def test_a_dashboard_batch_over_real_http(service: Service) -> None:
    """50 queries in one GET URL through the real server (uvicorn): 200, then 304 on
    revalidation; the POST of the same batch has the same ETag."""
    project = "qe" + uuid.uuid4().hex[:8]
    ingest, read = (create_cli_key(service.env, project, s) for s in ("ingest", "read"))
    now = int(time.time() * 1000)
    hour = now - now % HOUR_MS
    events = [
        {
            "name": f"n{i % 5}",
            "ts": hour - 3 * HOUR_MS + i * MINUTE_MS,
            "dims": {"source": "ab"[i % 2]},
        }
        for i in range(120)
    ]
    with httpx.Client(base_url=service.url, timeout=30) as http:
        posted = http.post("/v1/events", json=events, headers={"Authorization": f"Bearer {ingest}"})
        assert posted.status_code == 200, posted.text
        common = {"from": format_ts(hour - 4 * HOUR_MS), "to": format_ts(hour), "precision": "10m"}
        queries: list[dict[str, Any]] = []
        for i in range(5):
            queries.append({"id": f"series.n{i}", "kind": "series", "name": f"n{i}"})
            queries.append(
                {"id": f"total.n{i}", "kind": "total", "name": f"n{i}", "measure": "uniques"}
            )
            for n in range(8):
                queries.append(
                    {
                        "id": f"top.n{i}.{n}",
                        "kind": "series",
                        "name": f"n{i}",
                        "group_by": "source",
                        "limit": str(n + 1),
                    }
                )
        assert len(queries) == 50
        batch = msgspec.json.encode({"common": common, "queries": queries})
        headers = {"Authorization": f"Bearer {read}"}
        url = f"/v1/projects/{project}/query"
        got = http.get(url, params={"q": batch.decode()}, headers=headers)
        assert got.status_code == 200, got.text
        assert len(got.request.url.query) > 4000  # a long URL, and the server takes it
        results = got.json()["results"]
        assert (
            sum(sum(p["value"] for p in results[f"series.n{i}"]["data"]) for i in range(5)) == 120
        )
        single = http.get(
            f"/v1/projects/{project}/series", params={**common, "name": "n3"}, headers=headers
        )
        assert results["series.n3"] == single.json()
        tag = got.headers["etag"]
        again = http.get(
            url, params={"q": batch.decode()}, headers={**headers, "If-None-Match": tag}
        )
        assert again.status_code == 304
        post = http.post(url, content=batch, headers=headers)
        assert post.status_code == 200 and post.headers["etag"] == tag
