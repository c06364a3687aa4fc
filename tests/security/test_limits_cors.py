"""Issue 11, browsers: CORS on POST /v1/events and GET /v1/pixel.gif (preflight 204 with the
allow fields, Access-Control-Allow-Origin on the actual answer) and navigator.sendBeacon
(POST, `Content-Type: text/plain;charset=UTF-8`, a JSON body, the key in `?key=`). On the
code before issue 11 the preflight was a 405, no answer carried Access-Control-Allow-Origin
and a beacon was a 401 (the key was only read from Authorization)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
import pytest_asyncio

from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.metrics import Metrics
from persist.projects import create_key
from tests.support import T0, InProcessApp

SITE = "https://shop.example"


@pytest_asyncio.fixture(loop_scope="session")
async def app(
    settings: Settings, pool: asyncpg.Pool
) -> AsyncIterator[tuple[InProcessApp, str, str]]:
    project = "co" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        ingest = await create_key(conn, project, "ingest")
    async with InProcessApp(settings, ManualClock(T0)) as a:
        yield a, project, ingest


def client(app: tuple[InProcessApp, str, str]) -> httpx.AsyncClient:
    assert app[0].client is not None
    return app[0].client


def accepted(app: tuple[InProcessApp, str, str]) -> float:
    metrics: Metrics = app[0].state["services"].metrics
    return (
        metrics.registry.get_sample_value(
            "counters_events_accepted_total", {"project": metrics.project(app[1])}
        )
        or 0.0
    )


@pytest.mark.parametrize("path", ["/v1/events", "/v1/pixel.gif"])
async def test_preflight_is_204_with_the_allow_fields(
    app: tuple[InProcessApp, str, str], path: str
) -> None:
    r = await client(app).options(
        path,
        headers={
            "Origin": SITE,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert r.status_code == 204, r.text
    assert r.headers["Access-Control-Allow-Origin"] == SITE
    assert r.headers["Access-Control-Allow-Methods"] == "POST, GET, OPTIONS"
    assert r.headers["Access-Control-Allow-Headers"] == (
        "Authorization, Content-Type, Idempotency-Key"
    )
    assert r.headers["Access-Control-Max-Age"] == "86400"
    assert "Origin" in r.headers["Vary"]
    assert r.content == b""


async def test_actual_answers_carry_allow_origin(app: tuple[InProcessApp, str, str]) -> None:
    _, _, key = app
    r = await client(app).post(
        "/v1/events",
        content=b'[{"name":"click"}]',
        headers={
            "Origin": SITE,
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/json",
        },
    )
    assert r.status_code == 200, r.text
    assert r.headers["Access-Control-Allow-Origin"] == SITE
    assert "Origin" in r.headers["Vary"]
    assert "RateLimit" in r.headers["Access-Control-Expose-Headers"]
    r = await client(app).get(f"/v1/pixel.gif?key={key}&name=click", headers={"Origin": SITE})
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["Access-Control-Allow-Origin"] == SITE
    # no Origin, no CORS fields; other routes are not opened to browsers
    r = await client(app).get(f"/v1/pixel.gif?key={key}&name=click")
    assert "Access-Control-Allow-Origin" not in r.headers
    r = await client(app).get("/v1/whoami", headers={"Origin": SITE})
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_send_beacon_is_counted(app: tuple[InProcessApp, str, str]) -> None:
    """Exactly what Chromium's navigator.sendBeacon(url, JSON.stringify(events)) sends."""
    _, _, key = app
    before = accepted(app)
    events: list[dict[str, Any]] = [{"name": "click", "dims": {"source": "beacon"}}]
    r = await client(app).post(
        f"/v1/events?key={key}",
        content=msgspec.json.encode(events),
        headers={
            "Content-Type": "text/plain;charset=UTF-8",
            "Origin": SITE,
            "Sec-Fetch-Mode": "no-cors",
            "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Dest": "empty",
            "Accept": "*/*",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert accepted(app) == before + 1
    # a single object (what a beacon of one event usually is) works the same
    r = await client(app).post(
        f"/v1/events?key={key}",
        content=b'{"name":"click"}',
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": SITE},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1
    # an unknown key in the query string is a 401 like an unknown bearer key
    r = await client(app).post(
        "/v1/events?key=nope", content=b'{"name":"click"}', headers={"Content-Type": "text/plain"}
    )
    assert r.status_code == 401


def test_origin_matching() -> None:
    from api.cors import origin_allowed

    assert origin_allowed(SITE, None)
    assert origin_allowed(SITE, ("https://shop.example/",))
    assert origin_allowed("HTTPS://Shop.Example", (SITE,))
    assert not origin_allowed("https://evil.example", (SITE,))
    assert not origin_allowed("https://shop.example.evil", (SITE,))
