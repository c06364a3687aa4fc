"""Export formats, in-process on a manual clock (real Redis and Postgres): format=long rows
(what Grafana's Infinity reads), CSV (format=csv or Accept: text/csv) with RFC 3339 labels
in the zone, quoting and ETag/304, and the raw log streamed as NDJSON from Postgres."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator

import asyncpg
import msgspec
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.config import Settings
from tests.support import ApiClient, project_api

NOW = parse_ts("2026-04-15T12:00:30Z")
BASE = parse_ts("2026-04-15T10:00:00Z")
RANGE = {"from": str(BASE), "to": str(BASE + 2 * HOUR_MS)}


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    async with project_api(settings, pool, "ex", NOW) as c:
        await c.post(
            [
                {"name": "click", "ts": BASE + 1, "dims": {"source": "google"}, "value": 2.5},
                {"name": "click", "ts": BASE + 2, "dims": {"source": 'a,"b"'}, "uid": "u1"},
                {"name": "click", "ts": BASE + HOUR_MS + 5, "dims": {"source": "google"}},
                {"name": "signup", "ts": BASE + 3 * MINUTE_MS, "id": "s1"},
            ]
        )
        yield c


async def raw(ctx: ApiClient, path: str, headers: dict[str, str] | None = None, **params: str):  # type: ignore[no-untyped-def]
    assert ctx.app.client is not None
    return await ctx.app.client.get(
        f"/v1/projects/{ctx.project}/{path}",
        params=params,
        headers={**ctx.read_h, **(headers or {})},
    )


async def test_long_series_and_breakdown(ctx: ApiClient) -> None:
    body = await ctx.get("series", name="click", format="long", **RANGE)
    assert body == [
        {"time": "2026-04-15T10:00:00Z", "value": 2},
        {"time": "2026-04-15T11:00:00Z", "value": 1},
    ]
    body = await ctx.get("series", name="click", group_by="source", format="long", **RANGE)
    assert {"time": "2026-04-15T10:00:00Z", "value": 1, "source": "google"} in body
    assert {"time": "2026-04-15T11:00:00Z", "value": 1, "source": "google"} in body
    assert {"time": "2026-04-15T10:00:00Z", "value": 1, "source": 'a,"b"'} in body
    assert {r["source"] for r in body} == {"google", 'a,"b"', "__other__", "__none__"}
    two = await ctx.get("series", name=["click", "signup"], measure="sum", format="long", **RANGE)
    assert {"time": "2026-04-15T10:00:00Z", "value": 2.5, "name": "click"} in two
    assert {"time": "2026-04-15T10:00:00Z", "value": 0, "name": "signup"} in two


async def test_csv_series_quoting_zone_and_etag(ctx: ApiClient) -> None:
    r = await raw(
        ctx, "series", {"Accept": "text/csv"}, name="click", group_by="source", tz="Asia/Kolkata",
        precision="1h", **RANGE,
    )  # fmt: skip
    assert r.status_code == 200 and r.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["bucket", "name", "source", "value"]
    assert ["2026-04-15T15:00:00+05:30", "click", 'a,"b"', "1"] in rows
    assert '"a,""b"""' in r.text  # RFC 4180 quoting
    tag = r.headers["etag"]
    again = await raw(
        ctx, "series", {"Accept": "text/csv", "If-None-Match": tag}, name="click",
        group_by="source", tz="Asia/Kolkata", precision="1h", **RANGE,
    )  # fmt: skip
    assert again.status_code == 304 and again.content == b""
    as_json = await raw(ctx, "series", {"If-None-Match": tag}, name="click", **RANGE)
    assert as_json.status_code == 200 and as_json.headers["etag"] != tag


async def test_csv_totals_and_bad_format(ctx: ApiClient) -> None:
    r = await raw(ctx, "total", name=["click", "signup"], format="csv", source="google", **RANGE)
    assert r.status_code == 200, r.text
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows == [
        ["bucket", "name", "source", "value"],
        ["2026-04-15T10:00:00Z", "click", "google", "2"],
        ["2026-04-15T10:00:00Z", "signup", "google", "0"],
    ]
    bad = await raw(ctx, "series", name="click", format="xml")
    assert bad.status_code == 400 and "format must be one of" in bad.json()["error"]["message"]


async def test_events_export_streams_ndjson(ctx: ApiClient) -> None:
    await ctx.app.persist(ctx.project)  # the raw log is in Postgres now
    r = await raw(ctx, "events", **{"from": "2026-04-15T00:00:00Z", "to": str(NOW)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [e["name"] for e in lines] == ["click", "click", "signup", "click"]
    first = lines[0]
    assert first["ts"] == "2026-04-15T10:00:00.001Z" and first["dims"] == {"source": "google"}
    assert first["value"] == 2.5 and "uid" not in first
    assert lines[1]["uid"] != "u1" and len(lines[1]["uid"]) > 8  # as stored: hashed
    assert lines[2]["id"] == "s1"
    only = await raw(ctx, "events", name="signup", **{"from": str(BASE), "to": str(NOW)})
    assert [json.loads(x)["name"] for x in only.text.splitlines()] == ["signup"]


async def test_events_export_bad_input(ctx: ApiClient) -> None:
    cases = [
        ({"to": str(NOW)}, "from is required"),
        ({"from": str(NOW), "to": str(BASE)}, "from must be before to"),
        ({"from": "1776240000", "to": str(NOW)}, "looks like epoch seconds"),
        ({"from": "2026-01-01T00:00:00Z", "to": str(NOW)}, "at most 31 days"),
        ({"from": str(BASE), "to": str(NOW), "nme": "x"}, "unknown parameter 'nme'"),
        ({"from": str(BASE), "to": str(NOW), "name": "Bad Name"}, "name must match"),
    ]
    for params, message in cases:
        r = await raw(ctx, "events", **params)
        assert r.status_code == 400 and message in r.json()["error"]["message"], (params, r.text)
    assert ctx.app.client is not None
    anon = await ctx.app.client.get(f"/v1/projects/{ctx.project}/events")
    assert anon.status_code == 401
    assert msgspec.json.decode(anon.content)["error"]["code"] == "unauthorized"
