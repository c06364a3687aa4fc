"""Sums are exact end to end (issue 10, item 3): stored as integer micros, answered as
decimal JSON numbers built from them, never through a float, on every read path (series,
total, breakdown, several names, several projects and their union, the raw log), hot in
Redis and persisted in Postgres."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import HOUR_MS, MINUTE_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from persist.projects import create_key
from tests.support import ApiClient, InProcessApp

NOW = parse_ts("2026-04-15T12:20:30Z")
HOUR = parse_ts("2026-04-15T10:00:00Z")
BIG = 999999999.999999
EXACT = "11999999999.999988"
"""12 x BIG: a float64 sum answers 11999999999.999989."""


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (10_000_000, "10"),
        (12_500_000, "12.5"),
        (5, "0.000005"),
        (-5, "-0.000005"),
        (-12_500_000, "-12.5"),
        (0, "0"),
        (1_000_000_000_000_000, "1000000000"),
        (12 * 999_999_999_999_999, EXACT),
        (2**63 - 1, "9223372036854.775807"),
    ],
)
def test_micros_to_decimal_is_exact_and_shortest(micros: int, text: str) -> None:
    from counters.core.measures import micros_to_decimal

    d = micros_to_decimal(micros)
    assert str(d) == text
    assert msgspec.json.Encoder(decimal_format="number").encode(d) == text.encode()
    assert d * 1_000_000 == micros


Reader = ApiClient


@pytest_asyncio.fixture(loop_scope="session")
async def reader(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Reader]:
    project = "xs" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, [project], "read")
    async with InProcessApp(settings, ManualClock(NOW)) as app:
        yield Reader(app, project, ingest, read)


def exact(text: str) -> Any:
    """The JSON body with every number exact (Decimal for fractions)."""
    return json.loads(text, parse_float=Decimal)


async def test_twelve_large_values_sum_exactly_everywhere(reader: Reader) -> None:
    """12 x 999999999.999999 in one hour: every reply carries 11999999999.999988 as JSON
    number text, whether the hour is hot in Redis or persisted in Postgres."""
    events = [
        {
            "name": "pay",
            "ts": HOUR + i * MINUTE_MS,
            "value": BIG,
            "dims": {"source": "a", "device": "d"},
        }
        for i in range(12)
    ]
    await reader.post(events)
    project = f"/v1/projects/{reader.project}"
    one_hour = {"from": str(HOUR), "to": str(HOUR + HOUR_MS), "measure": "sum"}
    for state in ("hot", "persisted"):
        series = await reader.text(f"{project}/series", name="pay", precision="1h", **one_hour)
        assert f'"value":{EXACT}' in series, (state, series)
        assert exact(series)["data"] == [
            {"bucket": "2026-04-15T10:00:00Z", "value": Decimal(EXACT)}
        ]
        # a period built from several stored buckets (minutes), and a zone
        quarter = await reader.text(
            f"{project}/series",
            name="pay",
            precision="1d",
            tz="Asia/Kolkata",
            excluding_current="false",  # that day is in progress
            **one_hour,
        )
        assert f'"value":{EXACT}' in quarter, quarter
        total = await reader.text(f"{project}/total", name="pay", **one_hour)
        assert total.endswith(f'"value":{EXACT}}}'), total
        filtered = await reader.text(f"{project}/total", name="pay", source="a", **one_hour)
        assert filtered.endswith(f'"value":{EXACT}}}'), filtered
        many = await reader.text(f"{project}/total", name=["pay", "nope"], **one_hour)
        assert exact(many)["totals"] == [
            {"name": "pay", "value": Decimal(EXACT)},
            {"name": "nope", "value": 0},
        ]
        breakdown = exact(
            await reader.text(f"{project}/series", name="pay", group_by="source", **one_hour)
        )
        top = breakdown["series"][0]
        assert (top["dims"], top["total"]) == ({"source": "a"}, Decimal(EXACT))
        assert [p["value"] for p in top["data"]] == [Decimal(EXACT)]
        across = exact(
            await reader.text("/v1/series", project=reader.project, name="pay", **one_hour)
        )
        assert across["series"][0]["total"] == Decimal(EXACT)
        assert across["union"][0]["total"] == Decimal(EXACT)
        assert across["union"][0]["data"][0]["value"] == Decimal(EXACT)
        # no rollup (device, source): the raw log (Redis stream, then Postgres), exact too
        raw = exact(
            await reader.text(f"{project}/series", name="pay", source="a", device="d", **one_hour)
        )
        assert raw["source"] == "raw" and raw["data"][0]["value"] == Decimal(EXACT)
        raw_total = await reader.text(
            f"{project}/total", name="pay", source="a", device="d", **one_hour
        )
        assert raw_total.endswith(f'"value":{EXACT}}}'), raw_total
        await reader.app.persist(reader.project)


async def test_small_and_negative_values_sum_exactly(reader: Reader) -> None:
    """Micros add exactly where floats drift (0.1 + 0.2), negatives included, and a sum
    that comes out whole is written without a fraction."""
    ts = HOUR + 30 * MINUTE_MS
    values = [0.1, 0.2, -0.000001, 0.000001, -1000000.5, 1000000.5, 7.25]
    await reader.post([{"name": "drift", "ts": ts, "value": v} for v in values])
    window = {"from": str(HOUR), "to": str(HOUR + HOUR_MS), "measure": "sum"}
    project = f"/v1/projects/{reader.project}"
    total = await reader.text(f"{project}/total", name="drift", **window)
    assert total.endswith('"value":7.55}'), total  # added as floats: 7.550000000046566
    await reader.post([{"name": "whole", "ts": ts, "value": v} for v in (0.25, 0.75, -3)])
    whole = await reader.text(f"{project}/total", name="whole", **window)
    assert whole.endswith('"value":-2}'), whole
    minutes = exact(
        await reader.text(
            f"{project}/series",
            name="drift",
            precision="1m",
            **{**window, "from": str(ts), "to": str(ts + 2 * MINUTE_MS)},
        )
    )
    assert [p["value"] for p in minutes["data"]] == [Decimal("7.55"), 0]
