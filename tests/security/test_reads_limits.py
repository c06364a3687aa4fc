"""Issue 11, "What was found" 2, 3 and 5: reads whose work is unbounded or whose mistakes
were answered as server errors. Each is now a fast 400 naming the limit, refused before
the backends do the work (real app, real Redis and Postgres, manual clock)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import DAY_MS, MINUTE_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.engines.read.parse import MIN_EPOCH_MS
from persist.projects import create_key
from tests.support import ApiClient, InProcessApp

pytestmark = pytest.mark.serial  # measures time: runs alone, after the parallel pass

NOW = parse_ts("2026-04-15T12:00:30Z")
VALUES = 200
"""Distinct `source` values of h0 (scaled down from the 1,000 of the report)."""


@pytest_asyncio.fixture(scope="module")
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    """A project with h0 over VALUES sources, each with a country, in the last hours."""
    project = "sr" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, raw_row_budget=1_000)
    async with InProcessApp(s, ManualClock(NOW)) as app:
        client = ApiClient(app, project, ingest, read)
        events = [
            {
                "name": "h0",
                "ts": NOW - (1 + i % 120) * MINUTE_MS,
                "dims": {"source": f"s{i % VALUES:04d}", "country": f"c{i % 3}"},
            }
            for i in range(2 * VALUES)
        ]
        await client.post(events)
        await app.persist(project)
        yield client


async def get(api: ApiClient, path: str, **params: Any) -> httpx.Response:
    assert api.app.client is not None
    return await api.app.client.get(
        f"/v1/projects/{api.project}/{path}", params=params, headers=api.read_h
    )


def refused(r: httpx.Response, code: str, *needles: str) -> str:
    """The message of a 400 JSON error with this code, holding every needle."""
    assert r.status_code == 400, (r.status_code, r.text[:500])
    error = r.json()["error"]
    assert error["code"] == code, error
    for needle in needles:
        assert needle in error["message"], error
    return str(error["message"])


async def timed(api: ApiClient, path: str, **params: Any) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    r = await get(api, path, **params)
    return r, time.perf_counter() - t0


# --- found 2: a read key asking for gigabytes ---------------------------------------------


async def test_breakdown_over_too_many_points_is_a_fast_400(api: ApiClient) -> None:
    """The report's attack: limit=1000 breakdown at 1m over 9,999 minutes (10 M points)."""
    r, took = await timed(
        api,
        "series",
        name="h0",
        group_by="source",
        limit=1000,
        precision="1m",
        **{"from": str(NOW - 9999 * MINUTE_MS)},
    )
    message = refused(r, "too_many_points", "100,000", "9999 buckets", "1002 series", "10,018,998")
    for advice in ("fewer names", "smaller limit", "coarser precision", "shorter range"):
        assert advice in message
    assert took < 1.0


async def test_many_names_over_the_points_limit_is_a_400(api: ApiClient) -> None:
    names = [f"n{i}" for i in range(20)]
    week = {"from": str(NOW - 6 * DAY_MS)}
    r = await get(api, "series", name=names, precision="1m", **week)
    refused(r, "too_many_points", "20 names", "8640 buckets", "172,800")
    # the same read at a coarser precision is well inside the limit
    r = await get(api, "series", name=names, precision="1h", **week)
    assert r.status_code == 200, r.text


async def test_breakdown_inside_the_points_limit_still_answers(api: ApiClient) -> None:
    r = await get(api, "series", name="h0", group_by="source", limit=VALUES, precision="1h")
    assert r.status_code == 200, r.text
    series = r.json()["series"]
    assert len(series) == VALUES + 2
    assert sum(s["total"] for s in series) == 2 * VALUES


# --- found 3: raw-log reads were unbounded --------------------------------------------------


@pytest.mark.parametrize("path", ["total", "series"])
async def test_raw_read_from_epoch_is_a_fast_400(api: ApiClient, path: str) -> None:
    """Two filters without a cross-tab (the raw log answers) from 1970: was a 500 after
    41 s; now the bucket cap refuses it at once."""
    for start in (str(MIN_EPOCH_MS), str(NOW - 20 * 365 * DAY_MS)):
        r, took = await timed(
            api, path, name="h0", source="s0001", country="c1", precision="1m", **{"from": start}
        )
        refused(r, "too_many_buckets", "10000")
        assert took < 1.0


async def test_total_has_the_bucket_cap_and_minute_retention(api: ApiClient) -> None:
    r = await get(api, "total", name="h0", precision="1h", **{"from": str(MIN_EPOCH_MS)})
    refused(r, "too_many_buckets", "coarser precision")
    r = await get(api, "total", name="h0", precision="15m", **{"from": str(NOW - 20 * DAY_MS)})
    refused(r, "past_retention", "oldest available minute")


async def test_raw_read_past_raw_retention_is_a_400(api: ApiClient) -> None:
    """Raw partitions are dropped after raw_retention_days (90): older is not answerable."""
    start = str(NOW - 200 * DAY_MS)
    for path in ("total", "series"):
        r = await get(
            api, path, name="h0", source="s0001", country="c1", precision="1d", **{"from": start}
        )
        refused(r, "past_retention", "raw_retention_days", "2026-01-15T00:00:00Z")


async def test_raw_read_over_the_row_budget_is_a_400_suggesting_a_crosstab(
    api: ApiClient,
) -> None:
    """The budget is 1,000 rows here: 400 events over 2 hours fit, a third name does not."""
    ok = await get(api, "total", name="h0", source="s0001", country="c1", precision="1h")
    assert ok.status_code == 200, ok.text
    assert ok.json()["value"] == 1  # i=1 (s0001, c1); i=201 is s0001 in c0
    r = await get(
        api,
        "series",
        name=["h0", "h1", "h2"],
        source="s0001",
        country="c1",
        precision="1h",
    )
    refused(
        r, "raw_budget_exceeded", "1,000", "raw_row_budget", "COUNTERS_CROSSTABS=country:source"
    )


# --- found 5: client mistakes answered as 5xx -----------------------------------------------


@pytest.mark.parametrize("path", ["total", "series"])
@pytest.mark.parametrize(
    "params",
    [
        {"from": "-9999999999999999"},
        {"to": "9999999999999999"},
        {"from": "-1"},
        {"to": "253402300800000"},
        {"from": "0001-01-01T00:00:00Z"},
        {"from": "-9999999999999999", "tz": "Asia/Kolkata", "precision": "1mo"},
        {"to": "9999999999999999", "tz": "America/New_York", "precision": "1w"},
    ],
)
async def test_timestamps_outside_1970_to_9999_are_400(
    api: ApiClient, path: str, params: dict[str, str]
) -> None:
    r = await get(api, path, name="h0", **params)
    refused(r, "bad_parameter", "1970-01-01", "9999-12-31")


async def test_far_future_to_inside_the_range_is_capped(api: ApiClient) -> None:
    r = await get(
        api, "total", name="h0", tz="America/New_York", precision="1w", to="9999-12-31T23:59:59Z"
    )
    assert r.status_code == 200, r.text


async def test_group_by_of_2000_dims_is_a_400(api: ApiClient) -> None:
    """Was a 503 postgres_unavailable with Retry-After (retried forever)."""
    dims = ",".join(f"d{i}" for i in range(2000))
    r = await get(api, "series", name="h0", group_by=dims)
    refused(r, "bad_parameter", "at most 3")
    r = await get(api, "series", name="h0", group_by="a,b,c,d")
    refused(r, "bad_parameter", "at most 3")


async def test_nine_filters_are_a_400(api: ApiClient) -> None:
    filters = {f"d.f{i}": "x" for i in range(9)}
    for path in ("series", "total"):
        r = await get(api, path, name="h0", **filters)
        refused(r, "bad_parameter", "at most 8")
    eight = {f"d.f{i}": "x" for i in range(8)}
    r = await get(api, "total", name="h0", **eight)
    assert r.status_code == 200 and r.json()["value"] == 0, r.text
