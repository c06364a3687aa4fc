"""The pixel's lean route (issue 13): answered before Starlette's middleware with the same
fields the middleware gave it, and group-committed hits charged to their key and project
in one script call per batch, exactly as if each had been charged alone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest_asyncio

from api.pixel import strict_query
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.metrics import Metrics
from persist.projects import create_key
from tests.support import T0, InProcessApp

SITE = "https://shop.example"


class Ctx(msgspec.Struct):
    app: InProcessApp
    project: str
    key: str

    @property
    def client(self) -> httpx.AsyncClient:
        assert self.app.client is not None
        return self.app.client

    def metric(self, name: str, **labels: str) -> float:
        metrics: Metrics = self.app.state["services"].metrics
        if "project" in labels:
            labels["project"] = metrics.project(labels["project"])
        return metrics.registry.get_sample_value(name, labels) or 0.0

    def url(self, name: str = "click", **extra: str) -> str:
        q = "&".join(f"{k}={v}" for k, v in {"key": self.key, "name": name, **extra}.items())
        return f"/v1/pixel.gif?{q}"


async def _ctx(settings: Settings, pool: asyncpg.Pool, **overrides: Any) -> AsyncIterator[Ctx]:
    project = "pr" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        key = await create_key(conn, project, "ingest")
    clock = ManualClock(T0)  # frozen: no bucket refills during a test
    async with InProcessApp(msgspec.structs.replace(settings, **overrides), clock) as app:
        yield Ctx(app, project, key)


@pytest_asyncio.fixture(loop_scope="session")
async def small(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Ctx]:
    """5 requests/s per key: a burst of 10."""
    async for ctx in _ctx(settings, pool, rate_limit_ingest=5):
        yield ctx


@pytest_asyncio.fixture(loop_scope="session")
async def few_events(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[Ctx]:
    """1 event/s per project: a burst of 2; keys unlimited."""
    async for ctx in _ctx(settings, pool, rate_limit_ingest=0, rate_limit_project_events=1):
        yield ctx


async def test_answer_fields_are_the_middlewares(small: Ctx) -> None:
    r = await small.client.get(small.url(), headers={"Origin": SITE})
    assert r.status_code == 200 and r.content.startswith(b"GIF89a")
    assert [k for k, _ in r.headers.raw] == [
        b"cache-control",
        b"pragma",
        b"content-length",
        b"content-type",
        b"vary",
        b"access-control-allow-origin",
        b"access-control-expose-headers",
        b"ratelimit-policy",
        b"ratelimit",
        b"server-timing",
    ]
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["content-length"] == str(len(r.content))
    assert r.headers["access-control-allow-origin"] == SITE
    assert r.headers["ratelimit-policy"] == '"default";q=10;w=2'
    assert r.headers["ratelimit"].startswith('"default";r=9;t=')
    assert r.headers["server-timing"].startswith("app;dur=")
    # HEAD: the GIF's fields, nothing counted, nothing charged
    before = small.metric("counters_events_accepted_total", project=small.project)
    h = await small.client.head(small.url())
    assert h.status_code == 200 and h.headers["content-type"] == "image/gif"
    assert "ratelimit" not in h.headers
    assert small.metric("counters_events_accepted_total", project=small.project) == before
    # what the lean route does not take still goes through Starlette
    p = await small.client.post(small.url())
    assert p.status_code == 405 and p.json()["error"]["code"] == "method_not_allowed"
    o = await small.client.options("/v1/pixel.gif", headers={"Origin": SITE})
    assert o.status_code == 204 and o.headers["access-control-allow-origin"] == SITE


async def test_concurrent_hits_over_the_key_limit(small: Ctx) -> None:
    """14 hits at once against a burst of 10 (clock frozen): exactly 10 counted whatever
    the batching, each passed one with its own remaining count, 4 refused rate_limited
    (still the GIF); a refused hit with a bad name is counted as rate_limited, not
    invalid, as before (the key's charge comes first)."""
    rs = await asyncio.gather(
        *(small.client.get(small.url(uid=f"u{i}")) for i in range(13)),
        small.client.get(small.url("BAD NAME")),
    )
    assert all(r.status_code == 200 and r.content.startswith(b"GIF") for r in rs)
    limits = [r.headers["ratelimit"] for r in rs]
    passed = [x for x in limits if not x.startswith('"default";r=0;')]
    remaining = sorted(int(x.split(";")[1][2:]) for x in passed)
    assert remaining in (list(range(10)), list(range(1, 10)))  # the bad name may pass
    counted = small.metric("counters_events_accepted_total", project=small.project)
    refused = small.metric("counters_events_rejected_total", reason="rate_limited")
    invalid = small.metric("counters_events_rejected_total", reason="invalid")
    assert counted + invalid == 10 and refused == 4
    assert small.metric("counters_rate_limited_total", limit="ingest") == 4


async def test_project_events_limit_in_the_batch_charge(few_events: Ctx) -> None:
    for i in range(4):
        r = await few_events.client.get(few_events.url(uid=f"u{i}"))
        assert r.status_code == 200 and r.content.startswith(b"GIF")
        assert "ratelimit" not in r.headers  # no key limit: no key fields
    assert few_events.metric("counters_events_accepted_total", project=few_events.project) == 2
    assert few_events.metric("counters_events_rejected_total", reason="rate_limited") == 2
    assert few_events.metric("counters_rate_limited_total", limit="project_events") == 2


def test_strict_query_is_parse_qsl() -> None:
    import urllib.parse

    for text in ["", "a", "a=", "=b", "a=b&&c=d", "a+b=c+d%20e", "a=1&a=2", "&a=1&", "a=b=c"]:
        raw = text.encode()
        expected = dict(urllib.parse.parse_qsl(text, keep_blank_values=True, errors="strict"))
        assert strict_query(raw) == expected, text
    for bad in [b"k=%FF", b"k=%ED%A0%80", b"%C3=1"]:
        try:
            strict_query(bad)
        except UnicodeDecodeError:
            continue
        raise AssertionError(bad)


async def test_an_unexpected_failure_is_the_apps_json_error(small: Ctx) -> None:
    """What the pixel does not turn into a GIF (here a lifespan state without the group
    committer) is answered as the app's exception handlers answer it: JSON, with the fields
    the middleware would add."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    state = {k: v for k, v in small.app.state.items() if k != "pixel"}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/pixel.gif",
        "raw_path": b"/v1/pixel.gif",
        "root_path": "",
        "query_string": small.url().split("?", 1)[1].encode(),
        "headers": [(b"host", b"app"), (b"origin", SITE.encode())],
        "server": ("app", 80),
        "client": ("127.0.0.1", 1),
        "state": state,
    }
    await small.app.app(scope, receive, send)
    start, body = sent
    assert start["status"] == 500
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"access-control-allow-origin"] == SITE.encode()
    assert b"server-timing" in headers
    assert msgspec.json.decode(body["body"])["error"]["code"] == "internal"
