"""Issue 11, found 9 / build 9: `/metrics` listed every project to anyone. Now project
names appear in metrics only with metrics_project_labels on, and with metrics_token set
/metrics needs the token and /healthz without it tells only ok/unavailable."""

from __future__ import annotations

import uuid

import asyncpg
import msgspec

from counters.core.buckets import parse_ts
from counters.core.clock import ManualClock
from counters.core.config import Settings
from persist.projects import create_key
from tests.support import InProcessApp

NOW = parse_ts("2026-05-20T12:30:30Z")
TOKEN = "metrics-" + uuid.uuid4().hex


async def _ingest_and_scrape(settings: Settings, pool: asyncpg.Pool) -> tuple[str, str]:
    """A new project posts one event and its pixel one more; returns (project, /metrics)."""
    project = "pm" + uuid.uuid4().hex[:10]
    async with pool.acquire() as conn:
        key = await create_key(conn, project, "ingest")
    async with InProcessApp(settings, ManualClock(NOW)) as app:
        assert app.client is not None
        r = await app.client.post(
            "/v1/events",
            content=msgspec.json.encode([{"name": "a", "id": "x"}, {"name": "a", "id": "x"}]),
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.json() == {"accepted": 1, "duplicates": 1}, r.text
        r = await app.client.get("/v1/pixel.gif", params={"key": key, "name": "a"})
        assert r.status_code == 200
        r = await app.client.get("/metrics")
        assert r.status_code == 200, r.text
        return project, r.text


async def test_metrics_name_no_project_by_default(settings: Settings, pool: asyncpg.Pool) -> None:
    assert Settings().metrics_project_labels is False
    project, text = await _ingest_and_scrape(settings, pool)
    assert project not in text
    assert 'counters_events_accepted_total{project="_"} 2.0' in text, text
    assert 'counters_events_duplicate_total{project="_"} 1.0' in text


async def test_metrics_name_projects_when_asked(settings: Settings, pool: asyncpg.Pool) -> None:
    on = msgspec.structs.replace(settings, metrics_project_labels=True)
    project, text = await _ingest_and_scrape(on, pool)
    assert f'counters_events_accepted_total{{project="{project}"}} 2.0' in text, text


async def test_metrics_token_guards_metrics_and_health_details(settings: Settings) -> None:
    guarded = msgspec.structs.replace(settings, metrics_token=TOKEN)
    async with InProcessApp(guarded, ManualClock(NOW)) as app:
        c = app.client
        assert c is not None
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = await c.get("/metrics", headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"]["code"] == "unauthorized"
            assert "counters_" not in r.text
            h = await c.get("/healthz", headers=headers)
            assert h.status_code == 200 and h.json() == {"status": "ok"}, h.text
        auth = {"Authorization": f"Bearer {TOKEN}"}
        r = await c.get("/metrics", headers=auth)
        assert r.status_code == 200 and "counters_events_accepted" in r.text
        h = await c.get("/healthz", headers=auth)
        assert h.status_code == 200
        assert h.json() == {"status": "ok", "checks": {"redis": "ok", "postgres": "ok"}}


async def test_without_a_token_metrics_stay_open(settings: Settings) -> None:
    """The default (no metrics_token): /metrics and the /healthz checks need nothing."""
    assert Settings().metrics_token is None
    async with InProcessApp(settings, ManualClock(NOW)) as app:
        assert app.client is not None
        assert (await app.client.get("/metrics")).status_code == 200
        assert "checks" in (await app.client.get("/healthz")).json()
