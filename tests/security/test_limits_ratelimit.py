"""Issue 11, rate limits: a token bucket per API key and a per-project events cap in Redis.
Over a limit: 429 rate_limited with Retry-After and the IETF RateLimit fields; the pixel
still answers its GIF and counts rejected{reason="rate_limited"}; 0 turns a limit off; the
limiter fails open when Redis is unreachable. On the code before issue 11 nothing was ever
refused (each test below got 200s where it expects a 429)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest_asyncio

from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, open_redis
from persist.projects import create_key
from tests.support import T0, InProcessApp, wait_for


@dataclass
class Ctx:
    app: InProcessApp
    clock: ManualClock
    project: str
    ingest: str
    read: str

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.app.client is not None
        return self.app.client

    async def post(self, events: list[dict[str, Any]]) -> httpx.Response:
        return await self.client.post(
            "/v1/events",
            content=msgspec.json.encode(events),
            headers={"Authorization": f"Bearer {self.ingest}"},
        )

    async def total(self) -> httpx.Response:
        return await self.client.get(
            f"/v1/projects/{self.project}/total",
            params={"name": "click", "from": str(T0 - 3_600_000), "to": str(T0 + 60_000)},
            headers={"Authorization": f"Bearer {self.read}"},
        )

    @property
    def metrics(self) -> Metrics:
        metrics: Metrics = self.app.state["services"].metrics
        return metrics

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0


async def _ctx(settings: Settings, pool: asyncpg.Pool, **overrides: Any) -> AsyncIterator[Ctx]:
    project = "rl" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
        read = await create_key(conn, project, "read")
    clock = ManualClock(T0)
    async with InProcessApp(msgspec.structs.replace(settings, **overrides), clock) as app:
        yield Ctx(app, clock, project, ingest, read)


@pytest_asyncio.fixture(loop_scope="session")
async def small(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Ctx]:
    """5 requests/s per key (burst 10), 100 events/s per project (burst 200)."""
    async for ctx in _ctx(
        settings, pool, rate_limit_ingest=5, rate_limit_read=5, rate_limit_project_events=100
    ):
        yield ctx


@pytest_asyncio.fixture(loop_scope="session")
async def off(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Ctx]:
    async for ctx in _ctx(
        settings, pool, rate_limit_ingest=0, rate_limit_read=0, rate_limit_project_events=0
    ):
        yield ctx


def ev(i: int = 0) -> dict[str, Any]:
    return {"name": "click", "ts": T0 - 1000 + i}


async def test_ingest_burst_is_429_with_retry_after_and_ratelimit_fields(small: Ctx) -> None:
    for i in range(10):  # burst: 2 s worth
        r = await small.post([ev(i)])
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"] == '"default";q=10;w=2'
        assert r.headers["RateLimit"].startswith(f'"default";r={9 - i};t=')
    for _ in range(3):
        r = await small.post([ev()])
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "rate_limited"
        assert r.headers["Retry-After"] == "1"
        assert r.headers["RateLimit-Policy"] == '"default";q=10;w=2'
        assert r.headers["RateLimit"] == '"default";r=0;t=1'  # = Retry-After
    assert small.metric("counters_rate_limited_total", limit="ingest") == 3
    assert small.metric("counters_events_rejected_total", reason="rate_limited") == 3
    small.clock.advance(200)  # one token refilled (5/s)
    assert (await small.post([ev()])).status_code == 200
    assert (await small.post([ev()])).status_code == 429
    small.clock.advance(2000)  # the whole bucket
    for _ in range(10):
        assert (await small.post([ev()])).status_code == 200


async def test_read_key_has_its_own_bucket(small: Ctx) -> None:
    for _ in range(10):
        assert (await small.post([ev()])).status_code == 200
    assert (await small.post([ev()])).status_code == 429
    for _ in range(10):  # the read key is not charged for the ingest key's requests
        r = await small.total()
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Policy"] == '"default";q=10;w=2'
    r = await small.total()
    assert r.status_code == 429 and r.headers["Retry-After"] == "1", r.text
    assert small.metric("counters_rate_limited_total", limit="read") == 1


async def test_every_authenticated_request_counts_even_refused_ones(small: Ctx) -> None:
    """A key asking for a project it does not cover still spends its tokens."""
    for _ in range(10):
        r = await small.client.get(
            "/v1/projects/someone-else/total",
            params={"name": "click"},
            headers={"Authorization": f"Bearer {small.read}"},
        )
        assert r.status_code in (403, 404)
    assert (await small.total()).status_code == 429


async def test_whoami_counts_too(small: Ctx) -> None:
    auth = {"Authorization": f"Bearer {small.read}"}
    for _ in range(10):
        assert (await small.client.get("/v1/whoami", headers=auth)).status_code == 200
    assert (await small.client.get("/v1/whoami", headers=auth)).status_code == 429


def test_limits_come_from_the_environment() -> None:
    from counters.core.config import load_settings

    s = load_settings(
        env={
            "COUNTERS_RATE_LIMIT_INGEST": "7",
            "COUNTERS_RATE_LIMIT_READ": "0",
            "COUNTERS_RATE_LIMIT_PROJECT_EVENTS": "1e6",
        }
    )
    assert (s.rate_limit_ingest, s.rate_limit_read, s.rate_limit_project_events) == (7, 0, 1e6)


async def test_project_events_cap(small: Ctx) -> None:
    """100 events/s per project, burst 200, over all its keys; the batch is counted whole
    or not at all."""
    r = await small.post([ev(i) for i in range(150)])
    assert r.status_code == 200 and r.json()["accepted"] == 150
    r = await small.post([ev(i) for i in range(60)])  # 210 > 200
    assert r.status_code == 429, r.text
    assert r.json()["error"]["code"] == "rate_limited"
    assert r.headers["RateLimit-Policy"] == '"events";q=200;w=2'
    assert r.headers["Retry-After"] == "1"  # 10 events short: 100 ms
    assert small.metric("counters_rate_limited_total", limit="project_events") == 1
    small.clock.advance(100)
    assert (await small.post([ev(i) for i in range(60)])).status_code == 200
    # nothing of the refused batch was counted
    body = (await small.total()).json()
    assert body["value"] == 210


async def test_pixel_over_the_limit_still_answers_the_gif(small: Ctx) -> None:
    url = f"/v1/pixel.gif?key={small.ingest}&name=click"
    for _ in range(10):
        r = await small.client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    for _ in range(4):
        r = await small.client.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/gif"
    assert small.metric("counters_events_rejected_total", reason="rate_limited") == 4
    assert small.metric("counters_rate_limited_total", limit="ingest") == 4
    assert (
        small.metric("counters_events_accepted_total", project=small.metrics.project(small.project))
        == 10
    )


async def test_zero_turns_every_limit_off(off: Ctx) -> None:
    for _ in range(50):
        r = await off.post([ev(i) for i in range(100)])
        assert r.status_code == 200
        assert "RateLimit" not in r.headers
    for _ in range(50):
        assert (await off.total()).status_code == 200
    assert off.metric("counters_rate_limited_total", limit="ingest") == 0


async def test_default_limits_let_a_normal_burst_through(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async for ctx in _ctx(settings, pool):
        for _ in range(300):
            assert (await ctx.post([ev()])).status_code == 200
        assert ctx.app.settings.rate_limit_ingest == 1000


async def test_limiter_on_redis_time_refills_and_leaves_only_named_keys(
    settings: Settings, redis: RedisClient, scripts: Scripts
) -> None:
    """Without an injected clock the script uses the server's TIME: after the burst a
    request is refused, and at 2/s a token is back within ~500 ms."""
    from counters.engines.ratelimit import RateLimiter
    from lua.keys import ProjectKeys, parse_key

    project = "rl" + uuid.uuid4().hex[:10]
    s = msgspec.structs.replace(settings, rate_limit_ingest=2, rate_limit_project_events=2)
    limiter = RateLimiter(redis, scripts, s, Metrics())
    for _ in range(4):  # the burst: 2 s worth
        d = await limiter.charge(project, "0123456789abcdef", "ingest")
        assert d is not None and d.allowed
    d = await limiter.charge(project, "0123456789abcdef", "ingest")
    assert d is not None and not d.allowed and 0 < d.retry_after_ms <= 500

    async def probe() -> bool:
        d = await limiter.charge(project, "0123456789abcdef", "ingest")
        return d is not None and d.allowed

    await wait_for(probe, bool, timeout=5, what="a refilled token")
    big = await limiter.charge_events(project, 1000)  # more than the burst: bucket full, passes
    assert big is not None and big.allowed and big.remaining == 0
    keys = ProjectKeys(s.key_prefix, project)
    names = {k.decode() async for k in redis.scan_iter(match=keys.base + "*")}
    assert names == {keys.rate_key("0123456789abcdef"), keys.rate_events}
    assert {parse_key(n).kind for n in names} == {"rate_key", "rate_events"}
    # idle buckets vanish: a minute after the bucket is full again (2 s here)
    assert 60_000 < await redis.pttl(keys.rate_events) <= 62_001


async def test_limiter_fails_open_when_redis_is_unreachable(settings: Settings) -> None:
    from counters.engines.ratelimit import RateLimiter

    dead = open_redis("redis://127.0.0.1:9/0")
    try:
        limiter = RateLimiter(dead, Scripts(dead), settings, Metrics())
        assert await limiter.charge("p", "0123456789abcdef", "read") is None
        assert await limiter.charge_events("p", 5) is None
    finally:
        await dead.aclose()


async def test_a_clock_gone_back_costs_at_most_one_burst(
    settings: Settings, redis: RedisClient, scripts: Scripts
) -> None:
    from counters.engines.ratelimit import RateLimiter

    project = "rl" + uuid.uuid4().hex[:10]
    clock = ManualClock(T0)
    s = msgspec.structs.replace(settings, rate_limit_read=10)
    limiter = RateLimiter(redis, scripts, s, Metrics(), clock)
    d = await limiter.charge(project, "00000000000000aa", "read")
    assert d is not None and d.allowed and d.remaining == 19 and d.quota == 20
    clock.advance(-3_600_000)  # an hour back: the stored time is an hour ahead
    d = await limiter.charge(project, "00000000000000aa", "read")
    assert d is not None and not d.allowed and d.retry_after_ms == 100
    clock.advance(100)
    d = await limiter.charge(project, "00000000000000aa", "read")
    assert d is not None and d.allowed
