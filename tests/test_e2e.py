"""End to end through a real uvicorn server: events over the last 3 hours are read back
exactly (uniques within 2%), a new event is visible within 1 s, drained buckets answer from
Postgres once Redis forgets them, and a restart loses nothing."""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from counters.core.buckets import HOUR_MS, MINUTE_MS, bucket_start, format_ts
from lua.client import RedisClient
from lua.keys import ProjectKeys
from tests.service import Service, create_key, service_env
from tests.support import Backends, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.serial]

N_EVENTS = 4000
N_UIDS = 3000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Truth:
    """What the driver sent, aggregated."""

    def __init__(self) -> None:
        self.count: Counter[tuple[int, str]] = Counter()
        self.sum_micros: Counter[tuple[int, str]] = Counter()
        self.uids: defaultdict[str, set[str]] = defaultdict(set)

    def add(self, ev: dict[str, Any]) -> None:
        hour = bucket_start(ev["ts"], _Hour)
        for dim in ("", ev["dims"]["source"]):
            self.count[(hour, dim)] += 1
            self.sum_micros[(hour, dim)] += round(ev["value"] * 1_000_000)
            self.uids[dim].add(ev["uid"])


class _HourGrain:
    value = HOUR_MS


_Hour: Any = _HourGrain


async def read_all(c: httpx.AsyncClient, project: str, key: str, start: int) -> dict[str, Any]:
    """Every answer the test compares: hourly series of count and sum, per source too, and
    the totals (count, sum, uniques)."""
    out: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {key}"}
    for measure in ("count", "sum"):
        for source in ("", "google", "bing"):
            params = {
                "name": "click",
                "measure": measure,
                "grain": "hour",
                "from": str(start),
                "excluding_current": "false",
            }
            if source:
                params["source"] = source
            r = await c.get(f"/v1/projects/{project}/series", params=params, headers=headers)
            assert r.status_code == 200, r.text
            out[f"series:{measure}:{source}"] = [
                (p["bucket"], p["value"]) for p in r.json()["data"]
            ]
    for measure in ("count", "sum", "uniques"):
        params = {
            "name": "click",
            "measure": measure,
            "grain": "minute",
            "from": str(start),
            "excluding_current": "false",
        }
        r = await c.get(f"/v1/projects/{project}/total", params=params, headers=headers)
        assert r.status_code == 200, r.text
        out[f"total:{measure}"] = r.json()["value"]
    return out


async def test_end_to_end(
    backends: Backends, tmp_path: Path, pool: asyncpg.Pool, redis: RedisClient
) -> None:
    env = service_env(backends, tmp_path)
    svc = Service(env, tmp_path / "service.log")
    svc.start()
    try:
        project = "e2e" + uuid.uuid4().hex[:8]
        ingest = create_key(env, project, "ingest")
        read = create_key(env, project, "read")
        rng = random.Random(7)
        t = now_ms()
        start = bucket_start(t - 3 * HOUR_MS, _Hour)
        truth = Truth()
        events = []
        for i in range(N_EVENTS):
            ev = {
                "name": "click",
                "ts": t - rng.randrange(0, 3 * HOUR_MS),
                "id": f"e{i}",
                "dims": {
                    "source": rng.choice(["google", "bing", "mail"]),
                    "country": rng.choice(["DE", "FR", "US", "BR"]),
                },
                "uid": f"u{rng.randrange(N_UIDS)}",
                "value": rng.randrange(0, 10_000) / 100,
            }
            events.append(ev)
            truth.add(ev)
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as c:
            auth = {"Authorization": f"Bearer {ingest}"}
            # batches of 250: 500 events over 3 hours of sealed minutes with ids and uids
            # are over the ingest script budget (max_batch_groups; a 413 asks to split)
            for i in range(0, N_EVENTS, 250):
                r = await c.post("/v1/events", json=events[i : i + 250], headers=auth)
                assert r.json() == {"accepted": 250, "duplicates": 0}
            # a client retry of a whole batch counts nothing twice
            r = await c.post("/v1/events", json=events[:250], headers=auth)
            assert r.json() == {"accepted": 0, "duplicates": 250}

            answers = await read_all(c, project, read, start)
            buckets = [
                format_ts(b) for b in range(start, bucket_start(t, _Hour) + HOUR_MS, HOUR_MS)
            ]
            for source in ("", "google", "bing"):
                expect_count = [
                    truth.count[(b, source)]
                    for b in range(start, start + len(buckets) * HOUR_MS, HOUR_MS)
                ]
                got = answers[f"series:count:{source}"]
                assert [b for b, _ in got] == buckets
                assert [v for _, v in got] == expect_count
                expect_sum = [
                    truth.sum_micros[(b, source)] / 1_000_000
                    for b in range(start, start + len(buckets) * HOUR_MS, HOUR_MS)
                ]
                assert [v for _, v in answers[f"series:sum:{source}"]] == expect_sum
            assert answers["total:count"] == N_EVENTS
            exact = len(truth.uids[""])
            assert abs(answers["total:uniques"] - exact) / exact < 0.02

            # freshness: a new event is readable within 1 s of its 2xx
            fresh = "fresh" + uuid.uuid4().hex[:6]
            r = await c.post("/v1/events", json=[{"name": fresh}], headers=auth)
            acked = time.monotonic()
            params = {"name": fresh, "grain": "minute", "excluding_current": "false"}

            async def probe() -> int:
                resp = await c.get(
                    f"/v1/projects/{project}/total",
                    params=params,
                    headers={"Authorization": f"Bearer {read}"},
                )
                value: int = resp.json()["value"]
                return value

            await wait_for(probe, lambda v: v == 1, timeout=1.0, what="fresh event")
            assert time.monotonic() - acked < 1.0

            # wait for the persister to drain every closed bucket, late delta and raw event
            keys = ProjectKeys(backends.prefix, project)

            async def drained() -> tuple[Any, ...]:
                async with pool.acquire() as conn:
                    row = await conn.fetchrow(
                        "SELECT minute_until, hour_until, late_applied FROM persist_state"
                        " WHERE project = $1",
                        project,
                    )
                gen = int(await redis.hget(keys.watermarks, "gen") or 0)
                rawn = int(await redis.hget(keys.watermarks, "rawn") or 0)
                open_late = await redis.exists(keys.late(gen), keys.late_hll_index(gen))
                assert row is not None
                return (
                    row["minute_until"],
                    row["hour_until"],
                    row["late_applied"],
                    gen,
                    rawn + open_late,
                )

            edge = now_ms() - 1000
            state = await wait_for(
                drained,
                lambda s: (
                    s[0] >= bucket_start(edge, _MinuteG)
                    and s[1] >= bucket_start(edge, _Hour)
                    and s[2] == s[3] - 1
                    and s[4] == 0
                ),
                timeout=20,
                what="persister to drain",
            )
            minute_until, hour_until = state[0], state[1]
            doomed = []
            async for k in redis.scan_iter(match=keys.base + "*"):
                parts = k.decode()[len(keys.base) :].split(":")
                if parts[0] in ("h", "u") and parts[1] in ("m", "h"):
                    until = minute_until if parts[1] == "m" else hour_until
                    if int(parts[2]) < until:
                        doomed.append(k)
                elif parts[0] == "late":
                    doomed.append(k)
            assert doomed
            await redis.delete(*doomed)
            assert await read_all(c, project, read, start) == answers
        async with pool.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM raw_events WHERE project = $1 AND name = 'click'", project
            )
        assert stored == N_EVENTS

        # stop and restart: nothing lost
        svc.stop()
        svc.start()
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as c:
            assert await read_all(c, project, read, start) == answers
            r = await c.post(
                "/v1/events",
                json=[{"name": "click", "dims": {"source": "google"}, "uid": "new", "value": 1}],
                headers={"Authorization": f"Bearer {ingest}"},
            )
            assert r.status_code == 200
            after = await read_all(c, project, read, start)
            assert after["total:count"] == N_EVENTS + 1
    finally:
        svc.stop()


class _MinuteGrain:
    value = MINUTE_MS


_MinuteG: Any = _MinuteGrain
