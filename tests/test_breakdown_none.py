"""Breakdowns that add up (issue 10, item 5): every breakdown ends with `__other__` and
`__none__` (the events lacking a grouped dim), so for count and sum the top tuples +
`__other__` + `__none__` equal the total, per period and over the range, on the rollup path
(Postgres rows, hot Redis buckets, pending late deltas) and on the raw-log path. For
uniques `__none__` is the uids seen only in events lacking a grouped dim:
max(0, uniques(total) - uniques(union of every tuple)), exact on the raw path."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pytest
import pytest_asyncio

from counters.core.buckets import HOUR_MS, parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from lua.client import RedisClient
from lua.keys import ProjectKeys
from persist.projects import create_key
from tests.support import InProcessApp

NOW = parse_ts("2026-04-15T12:20:30Z")
START = parse_ts("2026-04-15T08:00:00Z")
END = START + 5 * HOUR_MS
WINDOW = {"from": str(START), "to": str(END), "excluding_current": "false"}
Event = dict[str, Any]


class Reader:
    def __init__(
        self, app: InProcessApp, redis: RedisClient, keys: ProjectKeys, ingest: str, read: str
    ) -> None:
        self.app = app
        self.redis = redis
        self.keys = keys
        self.ingest_h = {"Authorization": f"Bearer {ingest}"}
        self.read_h = {"Authorization": f"Bearer {read}"}
        self.events: list[Event] = []

    async def post(self, events: list[Event]) -> None:
        """Posts in batches of 300 (600 events over four sealed hours with uids are over
        the ingest script budget, max_batch_groups)."""
        assert self.app.client is not None
        for i in range(0, len(events), 300):
            chunk = events[i : i + 300]
            r = await self.app.client.post("/v1/events", json=chunk, headers=self.ingest_h)
            assert r.status_code == 200 and r.json()["accepted"] == len(chunk), r.text
        self.events += events

    async def get(self, path: str, **params: Any) -> Any:
        """The reply with every number exact (Decimal for fractions)."""
        assert self.app.client is not None
        r = await self.app.client.get(
            f"/v1/projects/{self.keys.project}/{path}",
            params={"name": "bn", **WINDOW, **params},
            headers=self.read_h,
        )
        assert r.status_code == 200, r.text
        return json.loads(r.text, parse_float=Decimal)

    async def fresh_uniques(self, uids: set[str]) -> int:
        """PFCOUNT of a fresh sketch of these uids as the service stores them (keyed hashes:
        a union of sketches has the very registers of a fresh sketch of the union)."""
        if not uids:
            return 0
        hasher = await self.app.state["services"].uid_secrets.hasher(self.keys.project)
        key = self.keys.tmp(uuid.uuid4().hex)
        await self.redis.pfadd(key, *(hasher(u) for u in uids))
        n = int(await self.redis.pfcount(key, self.keys.tmp("none-such")))
        await self.redis.delete(key)
        return n


@pytest_asyncio.fixture(loop_scope="session")
async def reader(
    settings: Settings, pool: asyncpg.Pool, redis: RedisClient
) -> AsyncIterator[Reader]:
    project = "bn" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    s = msgspec.structs.replace(settings, crosstabs=(("country", "source"),))
    async with InProcessApp(s, ManualClock(NOW)) as app:
        yield Reader(app, redis, ProjectKeys(s.key_prefix, project), ingest, read)


def events(rng: random.Random, n: int, lo: int, hi: int) -> list[Event]:
    """Events some of which lack source, country or device (or all of them)."""
    out = []
    for _ in range(n):
        dims = {}
        if rng.random() < 0.6:
            dims["source"] = rng.choice("abcd")
        if rng.random() < 0.7:
            dims["country"] = rng.choice(["DE", "FR"])
        if rng.random() < 0.4:
            dims["device"] = rng.choice(["ios", "web"])
        out.append(
            {
                "name": "bn",
                "ts": rng.randrange(lo, hi),
                "dims": dims,
                "value": rng.randrange(-5_000, 100_000) / 1000,
                "uid": f"u{rng.randrange(400)}",
            }
        )
    return out


async def live_and_persisted(reader: Reader, check: Callable[[], Any]) -> None:
    """Runs check over persisted rows only, then with hot buckets, sealed minutes of a hot
    hour and a pending late generation in Redis, then with everything persisted."""
    rng = random.Random(10)
    await reader.post(events(rng, 600, START, START + 4 * HOUR_MS))
    await reader.app.persist(reader.keys.project)
    await check()
    await reader.post(events(rng, 150, START + 4 * HOUR_MS, NOW))  # the hour in progress
    await reader.post(events(rng, 80, START + HOUR_MS, START + 2 * HOUR_MS))  # late
    await check()
    await reader.app.persist(reader.keys.project)
    await check()


def hour_of(e: Event) -> int:
    return (int(e["ts"]) - START) // HOUR_MS


def lacks(group_by: tuple[str, ...]) -> Callable[[Event], bool]:
    return lambda e: any(d not in e["dims"] for d in group_by)


def truth(evs: list[Event], measure: str, keep: Callable[[Event], bool]) -> list[Any]:
    """Count or exact sum per hour of the events kept, then over the range."""
    per = [0] * 6
    for e in evs:
        if keep(e):
            v = 1 if measure == "count" else round(e["value"] * 1_000_000)
            per[hour_of(e)] += v
            per[5] += v
    return per if measure == "count" else [Decimal(v).scaleb(-6) for v in per]


async def additive(
    reader: Reader,
    measure: str,
    group_by: tuple[str, ...],
    params: dict[str, str] | None = None,
    **filters: str,
) -> dict[str, Any]:
    """Asserts top + __other__ + __none__ == the total per period and over the range;
    returns the __none__ series."""
    asked = {"measure": measure, **(params or {}), **filters}
    bd = await reader.get("series", group_by=",".join(group_by), limit="2", **asked)
    plain = await reader.get("series", **asked)
    total = (await reader.get("total", **asked))["value"]
    series = bd["series"]
    assert [s["dims"] for s in series[-2:]] == [
        {**filters, **{d: "__other__" for d in group_by}},
        {**filters, **{d: "__none__" for d in group_by}},
    ]
    for i, point in enumerate(plain["data"]):
        assert sum(s["data"][i]["value"] for s in series) == point["value"], (i, series)
    assert sum(s["total"] for s in series) == total
    none: dict[str, Any] = series[-1]
    return none


@pytest.mark.parametrize("measure", ["count", "sum"])
async def test_none_makes_breakdowns_add_up(reader: Reader, measure: str) -> None:
    """One dim, a cross-tab of two, and a filter: __none__ is exactly the events lacking a
    grouped dim, and everything adds up to the total, per hour and over the range."""

    async def check() -> None:
        evs = reader.events
        for group_by in (("source",), ("country", "source")):
            none = await additive(reader, measure, group_by)
            want = truth(evs, measure, lacks(group_by))
            assert [p["value"] for p in none["data"]] + [none["total"]] == want
        none = await additive(reader, measure, ("source",), country="DE")
        de = truth(
            evs, measure, lambda e: e["dims"].get("country") == "DE" and lacks(("source",))(e)
        )
        assert [p["value"] for p in none["data"]] + [none["total"]] == de
        # periods composed of several stored buckets (minutes, in a half-hour zone)
        await additive(reader, measure, ("source",), {"precision": "15m"})
        await additive(reader, measure, ("country",), {"precision": "1d", "tz": "Asia/Kolkata"})

    await live_and_persisted(reader, check)


@pytest.mark.parametrize("measure", ["count", "sum", "uniques"])
async def test_none_on_the_raw_path_is_exact(reader: Reader, measure: str) -> None:
    """No rollup (device, source): the raw log answers, and __none__ is exact there too
    (for uniques: the uids seen only in events without a device)."""

    async def check() -> None:
        evs = [e for e in reader.events if e["dims"].get("source") == "a"]
        bd = await reader.get("series", group_by="device", limit="1", measure=measure, source="a")
        assert bd["source"] == "raw"
        none = bd["series"][-1]
        assert none["dims"] == {"source": "a", "device": "__none__"}
        got = [p["value"] for p in none["data"]] + [none["total"]]
        if measure != "uniques":
            assert got == truth(evs, measure, lacks(("device",)))
            await additive(reader, measure, ("device",), source="a")
            return
        periods: list[list[Event]] = [[e for e in evs if hour_of(e) == h] for h in range(5)]
        want = []
        for p in [*periods, evs]:
            only = {e["uid"] for e in p if "device" not in e["dims"]}
            want.append(len(only - {e["uid"] for e in p if "device" in e["dims"]}))
        assert got == want

    await live_and_persisted(reader, check)


async def test_none_uniques_is_the_total_minus_the_union_of_every_tuple(reader: Reader) -> None:
    """On the rollup path: per hour and over the range, __none__ uniques =
    max(0, uniques(total) - uniques(union of every source's sketch)), and the union of every
    series is the total (a fresh sketch of all uids counts what the total reads)."""

    async def check() -> None:
        evs = reader.events
        bd = await reader.get("series", group_by="source", limit="2", measure="uniques")
        plain = await reader.get("series", measure="uniques")
        total = (await reader.get("total", measure="uniques"))["value"]
        none = bd["series"][-1]
        assert none["dims"] == {"source": "__none__"}
        periods: list[list[Event]] = [[e for e in evs if hour_of(e) == h] for h in range(5)]
        whole = [p["value"] for p in plain["data"]] + [total]
        got = [p["value"] for p in none["data"]] + [none["total"]]
        for i, p in enumerate([*periods, evs]):
            assert whole[i] == await reader.fresh_uniques({e["uid"] for e in p})
            tuples = await reader.fresh_uniques({e["uid"] for e in p if "source" in e["dims"]})
            assert got[i] == max(0, whole[i] - tuples), i

    await live_and_persisted(reader, check)
