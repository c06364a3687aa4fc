"""Issue 11, "What was found" 2 (the event loop was blocked 11-16 s by one read): the
biggest reads the points limit allows (100,000 points: 998 tuples + __other__ + __none__
over 100 minutes, from rollups by count and by uniques, and from the raw log) run while
a ticker task on the same event loop measures how long it is kept waiting."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import MINUTE_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from persist.projects import create_key
from tests.support import ApiClient, InProcessApp

pytestmark = pytest.mark.serial  # measures time: runs alone, after the parallel pass

NOW = parse_ts("2026-04-15T12:00:30Z")
TUPLES = 1_000
MINUTES = 100
LIMIT = 998
"""998 top tuples + __other__ + __none__ = 1,000 series x 100 buckets = the 100,000 points."""
MAX_LAG_SECONDS = 0.2
"""Generous: the machine is shared by several test runs at once (unloaded, the longest
wait measured is 30-100 ms; before the reads were paced it was 0.36-1.7 s)."""


@pytest_asyncio.fixture(scope="module")
async def big(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[ApiClient]:
    """h0 with TUPLES sources in every one of the last MINUTES minutes (one uid each),
    persisted (rollups and raw log in Postgres)."""
    project = "lg" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, raw_row_budget=5_000_000)
    async with InProcessApp(s, ManualClock(NOW)) as app:
        client = ApiClient(app, project, ingest, read)
        end = NOW - NOW % MINUTE_MS
        await client.post(
            [
                {
                    "name": "h0",
                    "ts": end - (1 + m) * MINUTE_MS,
                    "dims": {"source": f"s{v:04d}", "country": "c1"},
                    "uid": f"u{v}",
                }
                for m in range(MINUTES)
                for v in range(TUPLES)
            ]
        )
        await app.persist(project)
        yield client


async def read_with_lag(api: ApiClient, **params: Any) -> tuple[Any, float, float]:
    """(reply JSON, seconds the read took, longest the ticker waited for the loop)."""
    assert api.app.client is not None
    lag = 0.0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal lag
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.001)
            lag = max(lag, time.perf_counter() - t0 - 0.001)

    task = asyncio.ensure_future(ticker())
    t0 = time.perf_counter()
    try:
        r = await api.app.client.get(
            f"/v1/projects/{api.project}/series", params=params, headers=api.read_h
        )
    finally:
        took = time.perf_counter() - t0
        done.set()
        await task
    assert r.status_code == 200, r.text[:300]
    return r.json(), took, lag


@pytest.mark.parametrize(
    ("measure", "filters"),
    [("count", {}), ("uniques", {}), ("count", {"country": "c1"})],
    ids=["rollups-count", "rollups-uniques", "raw-log"],
)
async def test_biggest_allowed_read_does_not_block_the_loop(
    big: ApiClient, measure: str, filters: dict[str, str]
) -> None:
    params = {
        "name": "h0",
        "group_by": "source",
        "limit": LIMIT,
        "precision": "1m",
        "measure": measure,
        "from": str(NOW - NOW % MINUTE_MS - MINUTES * MINUTE_MS),
        **filters,
    }
    # a block the read causes shows every time; the OS descheduling this process on the
    # shared machine does not: the best of two runs is the read's own
    body, took, lag = await read_with_lag(big, **params)
    if lag >= MAX_LAG_SECONDS:
        body, took, lag = await read_with_lag(big, **params)
    assert body["source"] == ("raw" if filters else "rollups")
    series = body["series"]
    assert len(series) == LIMIT + 2 and all(len(s["data"]) == MINUTES for s in series)
    assert sum(s["total"] for s in series[:LIMIT]) + series[LIMIT]["total"] == (
        TUPLES if measure == "uniques" else TUPLES * MINUTES
    )
    where = "raw" if filters else "rollups"
    print(f"\n{measure} {where}: read {took:.2f} s, loop lag {lag * 1000:.0f} ms")
    assert lag < MAX_LAG_SECONDS, f"{measure} {where}: the loop waited {lag:.3f} s"
