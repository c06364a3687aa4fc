"""Click-tracking links (issue 14 item 8) through a real `counters serve`: `counters links
create|list|disable`, GET /r/<id> counting one event (name, dims, link=<id>, utm_* dims, the
counters_uid cookie as uid) and answering 302 to the registered target only; unknown and
disabled ids are a 404 page; a disable is honoured within a second; and, in-process on a
manual clock, the rate limit and a Redis outage (still 302, counted as dropped)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.errors import BadRequest
from counters.core.links import check_target
from counters.engines.links import create_link
from counters.harness.servers import free_port
from counters.harness.service import run_cli
from lua.client import RedisClient
from persist.projects import ensure_project
from tests.service import Service, cli
from tests.support import T0, InProcessApp, wait_for

TARGET = "https://shop.example/landing?ref=abc&x=%2F#top"


async def _project(pool: asyncpg.Pool) -> str:
    name = "lnk" + uuid.uuid4().hex[:8]
    async with pool.acquire() as conn:
        await ensure_project(conn, name)
    return name


def _create(service: Service, project: str, *args: str) -> dict[str, Any]:
    out = cli(service.env, "links", "create", "--project", project, *args, "--json")
    link: dict[str, Any] = json.loads(out)
    return link


async def _first_follow(c: httpx.AsyncClient, path: str, **kw: Any) -> httpx.Response:
    """Follows path once the service's link cache has the new link (a 404 counts nothing)."""
    return await wait_for(
        lambda: c.get(path, **kw), lambda r: r.status_code != 404, what="link loaded"
    )


async def test_follow_counts_and_redirects(service: Service, pool: asyncpg.Pool) -> None:
    assert f"listening on http://127.0.0.1:{service.port}" in service.log_path.read_text()
    project = await _project(pool)
    link = _create(service, project, "--target", TARGET, "--dim", "campaign=spring")
    assert re.fullmatch("[a-z0-9]{12}", link["id"]) and link["target"] == TARGET
    path = f"/r/{link['id']}"
    async with httpx.AsyncClient(base_url=service.url) as c:
        first = await _first_follow(
            c,
            path,
            params={
                "utm_source": "news",
                "utm_medium": "email",
                "utm_bad key": "x",  # not a dim name: left out
                "utm_term": "a\nb",  # not a dim value: left out
                "target": "https://evil.example/",  # never changes the target
            },
        )
        assert first.status_code == 302 and first.headers["location"] == TARGET
        assert first.headers["cache-control"] == "no-store"
        cookie = first.headers["set-cookie"]
        assert cookie.startswith("counters_uid=") and "HttpOnly" in cookie
        assert "SameSite=lax" in cookie and "Path=/r/" in cookie
        uid = first.cookies["counters_uid"]
        again = await c.get(
            path + "?next=//evil.example&url=https://evil.example",
            headers={"Cookie": f"counters_uid={uid}"},
        )
        assert again.status_code == 302 and again.headers["location"] == TARGET
        assert "set-cookie" not in again.headers  # the browser's uid is kept
        head = await c.head(path, headers={"Cookie": f"counters_uid={uid}"})
        assert head.status_code == 302  # a link checker: redirected, not counted

    async def raw() -> list[asyncpg.Record]:
        async with pool.acquire() as conn:
            return await conn.fetch(
                "SELECT name, dims::text AS dims, uid FROM raw_events WHERE project = $1"
                " ORDER BY ts, seq",
                project,
            )

    rows = await wait_for(raw, lambda r: len(r) >= 2, timeout=20, what="clicks in the raw log")
    assert len(rows) == 2 and {r["name"] for r in rows} == {"click"}
    dims = [json.loads(r["dims"]) for r in rows]
    base = {"campaign": "spring", "link": link["id"]}
    assert {**base, "utm_source": "news", "utm_medium": "email"} in dims and base in dims
    assert rows[0]["uid"] is not None and rows[0]["uid"] == rows[1]["uid"]  # one clicker


async def test_unknown_disabled_and_open_redirects(service: Service, pool: asyncpg.Pool) -> None:
    project = await _project(pool)
    link = _create(service, project, "--target", "https://example.com/a", "--name", "promo")
    path = f"/r/{link['id']}"
    async with httpx.AsyncClient(base_url=service.url) as c:
        assert (await _first_follow(c, path)).status_code == 302
        for probe in (
            "/r/aaaaaaaaaaaa",  # well-formed, unknown
            "/r/" + link["id"].upper(),
            "/r/%2F%2Fevil.example",
            "/r/" + link["id"] + "/https://evil.example",
            "/r/" + link["id"] + "%2F..",
        ):
            r = await c.get(probe)
            assert r.status_code == 404 and "location" not in r.headers, probe
        unknown = await c.get("/r/aaaaaaaaaaaa")
        assert unknown.headers["content-type"].startswith("text/html")

        disabled = json.loads(cli(service.env, "links", "disable", link["id"], "--json"))
        asked = time.monotonic()
        assert disabled["id"] == link["id"] and disabled["disabled_at"] is not None
        await wait_for(
            lambda: c.get(path), lambda r: r.status_code == 404, timeout=5, what="disabled"
        )
        assert time.monotonic() - asked < 1.5  # honoured within a second or so
    listed = json.loads(cli(service.env, "links", "list", "--project", project, "--json"))
    assert [(x["id"], x["name"], x["disabled_at"] is not None) for x in listed] == [
        (link["id"], "promo", True)
    ]
    bad = run_cli(
        service.env, "links", "create", "--project", project, "--target", "//evil.example/"
    )
    assert bad.returncode == 1 and "target: must be an absolute http" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown_id = run_cli(service.env, "links", "disable", "zzzzzzzzzzzz")
    assert unknown_id.returncode == 1 and "unknown link 'zzzzzzzzzzzz'" in unknown_id.stderr


@pytest.mark.parametrize(
    "target",
    [
        "javascript:alert(1)",
        "//evil.example/",
        "/relative/path",
        "ftp://files.example/x",
        "https://",
        "https://user:pw@shop.example/",
        "https://shop.example/a b",
        "https://shop.example/\r\nSet-Cookie: x=1",
        "https:\\\\evil.example",
        "https://shop.example:99999/",
        "data:text/html,<script>alert(1)</script>",
    ],
)
def test_only_absolute_http_targets_are_accepted(target: str) -> None:
    with pytest.raises(BadRequest, match="^target: "):
        check_target(target)


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)"
    found = re.search(r"^" + pattern + "$", text, re.M)
    return float(found.group(1)) if found else 0.0


async def _app_link(app: InProcessApp, pool: asyncpg.Pool, redis: RedisClient | None) -> str:
    project = await _project(pool)
    async with pool.acquire() as conn:
        link = await create_link(
            conn, redis, app.settings.key_prefix, project, "https://example.com/rl"
        )
    cache = app.state["links"]

    async def loaded() -> bool:
        return cache.get(link.id) is not None

    await wait_for(loaded, bool, what="link in the app's cache")
    return link.id


async def test_rate_limited_like_the_pixel(
    settings: Settings, pool: asyncpg.Pool, redis: RedisClient
) -> None:
    limited = msgspec.structs.replace(settings, rate_limit_ingest=2.0)  # burst: 4 follows
    async with InProcessApp(limited, ManualClock(T0)) as app:
        assert app.client is not None
        link_id = await _app_link(app, pool, redis)
        answers = [await app.client.get(f"/r/{link_id}") for _ in range(6)]
        assert [r.status_code for r in answers] == [302] * 6  # the user always goes on
        assert {r.headers["location"] for r in answers} == {"https://example.com/rl"}
        text = (await app.client.get("/metrics")).text
        assert _metric(text, "counters_link_clicks_total") == 4
        assert _metric(text, "counters_link_clicks_dropped_total", reason="rate_limited") == 2


async def test_redis_down_still_redirects(settings: Settings, pool: asyncpg.Pool) -> None:
    dead = msgspec.structs.replace(
        settings, redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_cluster="off"
    )
    async with InProcessApp(dead, ManualClock(T0)) as app:
        assert app.client is not None
        link_id = await _app_link(app, pool, None)  # loaded from Postgres alone
        started = time.monotonic()
        r = await app.client.get(f"/r/{link_id}")
        assert r.status_code == 302 and r.headers["location"] == "https://example.com/rl"
        assert time.monotonic() - started < 1.5

        async def dropped() -> float:
            assert app.client is not None
            text = (await app.client.get("/metrics")).text
            return _metric(text, "counters_link_clicks_dropped_total", reason="unavailable")

        await wait_for(dropped, lambda n: n == 1, what="the click counted as dropped")
