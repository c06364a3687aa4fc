"""Redis or Postgres down: 503 with Retry-After naming the backend, never a 500, nothing
lost; both recover without restarting the service."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from counters import embedded
from counters.core.clock import SystemClock
from counters.harness.servers import Backends, create_database, free_port
from counters.harness.service import Service, create_key, service_env
from counters.services import build_services
from lua.client import open_redis
from persist.projects import ensure_project
from tests.support import wait_for


@pytest.fixture(scope="module")
def private() -> Iterator[tuple[Path, Path, str, str]]:
    """A Valkey and a Postgres of this module's own, so they can be stopped."""
    vdir = Path(tempfile.mkdtemp(prefix="counters-outage-v-"))
    pdir = Path(tempfile.mkdtemp(prefix="counters-outage-p-"))
    for d in (vdir, pdir):
        d.chmod(0o755)
    try:
        redis_url = embedded.ensure_valkey(vdir)
        owner_url = embedded.ensure_postgres(pdir)
        server_url = embedded.postgres_admin_url(pdir)
        yield vdir, pdir, redis_url, create_database(server_url, "outage", owner_url)
    finally:
        for d in (vdir, pdir):
            embedded.stop_embedded(d)
            shutil.rmtree(d, ignore_errors=True)


def settled_health(c: httpx.Client, want: dict[str, str], timeout: float = 30) -> httpx.Response:
    """GET /healthz until its checks read `want` (a probe on a loaded machine can miss its
    2 s deadline once; a backend just stopped or started can take a moment to show)."""
    deadline = time.monotonic() + timeout
    while True:
        h = c.get("/healthz")
        if h.json().get("checks") == want:
            return h
        assert time.monotonic() < deadline, f"/healthz never read {want}: {h.text}"
        time.sleep(0.05)  # the poll's interval


def test_redis_then_postgres_down_and_back(
    private: tuple[Path, Path, str, str], backends: Backends, tmp_path: Path
) -> None:
    vdir, pdir, redis_url, database_url = private
    own = Backends(redis_url, database_url, "outage", None)
    env = service_env(own, tmp_path)
    svc = Service(env, tmp_path / "service.log")
    svc.start()
    project = "out" + uuid.uuid4().hex[:6]
    ingest = {"Authorization": "Bearer " + create_key(env, project, "ingest")}
    read = {"Authorization": "Bearer " + create_key(env, project, "read")}
    total_url = f"/v1/projects/{project}/total?name=click&grain=minute&excluding_current=false"
    try:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            assert c.post("/v1/events", json=[{"name": "click"}], headers=ingest).status_code == 200
            assert c.get(total_url, headers=read).json()["value"] == 1

            embedded.stop_embedded(vdir)  # Redis down
            r = c.post("/v1/events", json=[{"name": "click"}], headers=ingest)
            assert r.status_code == 503 and r.headers["retry-after"]
            assert r.json()["error"]["code"] == "redis_unavailable"
            r = c.get(total_url, headers=read)
            assert r.status_code == 503 and r.headers["retry-after"]
            h = settled_health(c, {"redis": "down", "postgres": "ok"})
            assert h.status_code == 503
            pixel = c.get(
                "/v1/pixel.gif", params={"key": ingest["Authorization"][7:], "name": "click"}
            )
            assert pixel.status_code == 200 and pixel.content.startswith(b"GIF")

            assert embedded.ensure_valkey(vdir) == redis_url  # back, same port, AOF intact
            r = c.post("/v1/events", json=[{"name": "click"}], headers=ingest)
            assert r.status_code == 200, r.text
            assert c.get(total_url, headers=read).json()["value"] == 2

            embedded.stop_embedded(pdir)  # Postgres down
            h = settled_health(c, {"redis": "ok", "postgres": "down"})
            assert h.status_code == 503
            assert "postgres" in h.json()["error"]["message"]
            # a read whose Postgres part is cached (read a moment ago) still answers, exactly,
            # unless a minute sealed since (then it needs Postgres: 503); one never read
            # before needs Postgres
            r = c.get(total_url, headers=read)
            assert (r.status_code, r.json().get("value")) in ((200, 2), (503, None)), r.text
            r = c.get(total_url.replace("name=click", "name=other"), headers=read)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["error"]["code"] == "postgres_unavailable"
            # ingest goes on: the key is cached and Redis holds the events
            r = c.post("/v1/events", json=[{"name": "click"}], headers=ingest)
            assert r.status_code == 200, r.text

            embedded.ensure_postgres(pdir)
            r = c.get(total_url, headers=read)
            assert r.status_code == 200 and r.json()["value"] == 3

            async def copied() -> int:
                conn = await asyncpg.connect(database_url)
                try:
                    n: int = await conn.fetchval("SELECT count(*) FROM raw_events")
                    return n
                finally:
                    await conn.close()

            # the persister backed off while Postgres was down and catches up now
            asyncio.run(wait_for(copied, lambda n: n == 3, timeout=30, what="raw log copied"))
    finally:
        svc.stop()
    log = (tmp_path / "service.log").read_text()
    assert "unexpected error" not in log, log[-3000:]


async def test_persister_loop_survives_a_dead_redis(settings: Any, pool: Any) -> None:
    """A pass that fails (here: Redis unreachable while restoring watermarks) is counted and
    retried; the loop never dies."""
    dead = open_redis(f"redis://127.0.0.1:{free_port()}/0")
    services = build_services(settings, SystemClock(), dead, pool)
    persister, metrics = services.persister, services.metrics
    async with pool.acquire() as conn:
        await ensure_project(conn, "deadredis")
    stop = asyncio.Event()
    task = asyncio.create_task(persister.run(stop))

    def errors() -> float:
        return sum(
            s.value
            for m in metrics.registry.collect()
            if m.name == "counters_persister_errors"
            for s in m.samples
            if s.name.endswith("_total")
        )

    async def probe() -> float:
        return errors()

    await wait_for(probe, lambda n: n >= 2, timeout=20, what="two failed passes")
    assert not task.done()
    stop.set()
    await task
    await dead.aclose()
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM persist_state WHERE project = 'deadredis'")
        await conn.execute("DELETE FROM projects WHERE project = 'deadredis'")
