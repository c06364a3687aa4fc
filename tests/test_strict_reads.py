"""Strict reads (issue 14): an unknown parameter is a 400 naming it, `d.<dim>=` always
filters, epoch seconds are refused, and any whole number of minutes dividing the day is a
precision (in-process app on a manual clock, real Redis and Postgres)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.config import Settings
from tests.support import ApiClient, project_api

NOW = parse_ts("2026-04-15T12:00:30Z")
BASE = parse_ts("2026-04-15T00:00:00Z")


@pytest_asyncio.fixture(loop_scope="session")
async def ctx(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    async with project_api(
        settings, pool, "sr", NOW, max_event_age_days=30, minute_retention_days=30
    ) as c:
        # one event every 7 minutes from midnight to noon, source alternating
        await c.post(
            [
                {"name": "click", "ts": BASE + i * 7 * MINUTE_MS, "dims": {"source": "ab"[i % 2]}}
                for i in range(12 * 60 // 7)
            ]
        )
        yield c


async def _status(c: ApiClient, path: str, **params: str) -> tuple[int, dict[str, object]]:
    assert c.app.client is not None
    r = await c.app.client.get(
        f"/v1/projects/{c.project}/{path}", params={"name": "click", **params}, headers=c.read_h
    )
    return r.status_code, r.json()


@pytest.mark.asyncio(loop_scope="session")
async def test_unknown_parameter_is_named(ctx: ApiClient) -> None:
    status, body = await _status(ctx, "series", precison="1m")
    assert status == 400
    assert "unknown parameter 'precison'" in str(body["error"])


@pytest.mark.asyncio(loop_scope="session")
async def test_seen_dim_bare_and_any_dim_explicit(ctx: ApiClient) -> None:
    day = {"from": "2026-04-15T00:00:00Z", "to": "2026-04-15T12:00:00Z"}
    total = (await ctx.get("total", name="click", **day))["value"]
    bare = (await ctx.get("total", name="click", source="a", **day))["value"]
    explicit = (await ctx.get("total", name="click", **{"d.source": "a"}, **day))["value"]
    deep = (await ctx.get("total", name="click", **{"d[source]": "b"}, **day))["value"]
    assert bare == explicit and bare + deep == total and bare > 0
    never = await ctx.get("total", name="click", **{"d.planet": "mars"}, **day)
    assert never["value"] == 0
    status, body = await _status(ctx, "total", planet="mars")
    assert status == 400 and "unknown parameter 'planet'" in str(body["error"])


@pytest.mark.asyncio(loop_scope="session")
async def test_epoch_seconds_refused(ctx: ApiClient) -> None:
    for param in ("from", "to"):
        status, body = await _status(ctx, "series", **{param: str(NOW // 1000)})
        assert status == 400, body
        assert "looks like epoch seconds; send milliseconds or RFC 3339" in str(body["error"])
    assert (await _status(ctx, "series", **{"from": str(NOW - HOUR_MS)}))[0] == 200


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize(
    ("precision", "size_min"),
    [("2m", 2), ("10m", 10), ("30m", 30), ("2h", 120), ("120m", 120), ("6h", 360), ("12h", 720)],
)
async def test_any_precision_dividing_the_day(
    ctx: ApiClient, precision: str, size_min: int
) -> None:
    day = {"from": "2026-04-15T00:00:00Z", "to": "2026-04-15T12:00:00Z"}
    reply = await ctx.get("series", name="click", precision=precision, **day)
    points = reply["data"]
    assert reply["precision"] == ("2h" if precision == "120m" else precision)
    assert len(points) == 12 * 60 // size_min
    truth = [0] * len(points)
    for i in range(12 * 60 // 7):
        truth[i * 7 // size_min] += 1
    assert [p["value"] for p in points] == truth


@pytest.mark.asyncio(loop_scope="session")
async def test_precision_not_dividing_the_day_refused(ctx: ApiClient) -> None:
    for bad in ("7m", "5h", "0m", "2d"):
        status, body = await _status(ctx, "series", precision=bad)
        assert status == 400 and "precision" in str(body["error"]), bad
