"""counters.services: the one wiring (open_services / build_services) and the one channel
that hands resolved settings to uvicorn workers."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import msgspec
import pytest

from api.app import create_app_from_env
from counters.core.clock import ManualClock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.harness.servers import Backends, free_port
from counters.harness.service import Service, create_key, service_env
from counters.services import (
    SETTINGS_ENV,
    decode_settings,
    encode_settings,
    is_resolved,
    open_services,
)
from tests.support import T0


def test_resolved_settings_round_trip(settings: Settings) -> None:
    tuned = msgspec.structs.replace(settings, crosstabs=(("country", "source"),), port=9123)
    assert decode_settings(encode_settings(tuned)) == tuned


def test_only_resolved_settings_cross_the_channel(settings: Settings) -> None:
    unresolved = msgspec.structs.replace(settings, database_url=None)
    assert not is_resolved(unresolved)
    with pytest.raises(ValueError, match="resolved"):
        encode_settings(unresolved)
    with pytest.raises(ValueError, match="resolved"):
        decode_settings(msgspec.json.encode(unresolved).decode())


async def test_open_services_wires_one_of_each_and_closes(settings: Settings) -> None:
    clock = ManualClock(T0)
    async with open_services(settings, clock, pool_max_size=2) as s:
        assert await s.redis.ping()
        async with s.pool.acquire() as conn:
            assert await conn.fetchval("SELECT 1") == 1
        # one persister, shared by the rebuilder, on the same clients, clock and metrics
        assert s.persister.redis is s.redis and s.persister.pool is s.pool
        assert s.persister.scripts is s.scripts and s.persister.clock is clock
        assert s.persister.metrics is s.metrics
        assert s.rebuilder.persister is s.persister
        assert s.settings is settings
        pool = s.pool
    assert pool.is_closing()


async def test_open_services_maps_a_dead_postgres_to_unavailable(settings: Settings) -> None:
    dead = msgspec.structs.replace(
        settings, database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    with pytest.raises(Unavailable) as info:
        async with open_services(dead, ManualClock(T0)):
            raise AssertionError("opened on a dead Postgres")
    assert info.value.backend == "postgres"


async def test_open_services_refuses_unresolved_settings(settings: Settings) -> None:
    unresolved = msgspec.structs.replace(settings, redis_url=None)
    with pytest.raises(ValueError, match="resolved"):
        async with open_services(unresolved, ManualClock(T0)):
            raise AssertionError("opened without a Redis URL")


async def test_worker_factory_reads_only_the_channel(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The factory takes its settings from COUNTERS_RESOLVED_SETTINGS alone: a bogus
    COUNTERS_* URL in the environment is not read, and nothing is resolved again."""
    quiet = msgspec.structs.replace(settings, persister_enabled=False, reconcile_enabled=False)
    monkeypatch.setenv(SETTINGS_ENV, encode_settings(quiet))
    monkeypatch.setenv("COUNTERS_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("COUNTERS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    app = create_app_from_env()
    async with app.router.lifespan_context(app) as state:
        assert state["counters"].settings == quiet
        assert await state["services"].redis.ping()


def test_worker_factory_without_the_channel_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    with pytest.raises(KeyError):
        create_app_from_env()


@pytest.mark.e2e
def test_serve_with_workers_and_no_persister(backends: Backends, tmp_path: Path) -> None:
    """`serve --workers 2 --no-persister` resolves once and its workers serve the same
    deployment: an event ingested through one is read back."""
    env = service_env(backends, tmp_path)
    project = "w" + uuid.uuid4().hex[:10]
    ingest = {"Authorization": "Bearer " + create_key(env, project, "ingest")}
    read = {"Authorization": "Bearer " + create_key(env, project, "read")}
    svc = Service(env, tmp_path / "service.log", ["--workers", "2", "--no-persister"])
    svc.start(timeout=60)
    try:
        with httpx.Client(base_url=svc.url, timeout=10) as c:
            r = c.post("/v1/events", json=[{"name": "served"}], headers=ingest)
            assert r.status_code == 200, r.text
            params = {"name": "served", "grain": "minute", "excluding_current": "false"}
            for _ in range(4):  # whichever worker answers sees the same Redis
                v = c.get(f"/v1/projects/{project}/total", params=params, headers=read)
                assert v.status_code == 200, v.text
                assert v.json()["value"] == 1
            # no persister anywhere: not in the workers, and no process of its own
            deadline = time.monotonic() + 30  # until the second worker has started too
            while 'counters_processes{role="api"} 2.0' not in (text := c.get("/metrics").text):
                assert time.monotonic() < deadline, text
                time.sleep(0.05)
            assert 'counters_processes{role="persister"}' not in text
    finally:
        svc.stop()
    log = (tmp_path / "service.log").read_text()
    assert "persister process" not in log
    assert "Traceback" not in log, log[-3000:]
