"""Issue 11, build 10 (first half): `counters serve` starts while Redis and Postgres are
down and answers 503 naming them (healthz too) until they come; then it migrates the
schema itself and counts events, without a restart. Before, the lifespan's pool creation
failed and uvicorn exited."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from counters import embedded
from counters.harness.servers import Backends, create_database
from counters.harness.service import Service, create_key, service_env
from tests.support import wait_for


@pytest.fixture
def stopped() -> Iterator[tuple[Path, Path, str, str]]:
    """A Valkey and a Postgres (with an empty database) of this test's own, stopped."""
    vdir = Path(tempfile.mkdtemp(prefix="counters-privstart-v-"))
    pdir = Path(tempfile.mkdtemp(prefix="counters-privstart-p-"))
    for d in (vdir, pdir):
        d.chmod(0o755)
    try:
        redis_url = embedded.ensure_valkey(vdir)
        database_url = create_database(embedded.ensure_postgres(pdir), "privstart")
        embedded.stop_embedded(vdir)
        embedded.stop_embedded(pdir)
        yield vdir, pdir, redis_url, database_url
    finally:
        for d in (vdir, pdir):
            embedded.stop_embedded(d)
            shutil.rmtree(d, ignore_errors=True)


def health(c: httpx.Client) -> tuple[int, dict[str, object]]:
    r = c.get("/healthz")
    return r.status_code, r.json()


SHIPPED = len(list((Path(__file__).parents[2] / "persist" / "migrations").glob("*.sql")))


async def migrated(database_url: str) -> int:
    """How many migrations the database has applied (0 while it has none)."""
    conn = await asyncpg.connect(database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return 0
        n: int = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        return n
    finally:
        await conn.close()


def test_serve_starts_without_backends_and_recovers(
    stopped: tuple[Path, Path, str, str], tmp_path: Path
) -> None:
    vdir, pdir, redis_url, database_url = stopped
    env = service_env(Backends(redis_url, database_url, "privstart", None), tmp_path)
    svc = Service(env, tmp_path / "service.log")
    svc.start(timeout=60, healthy=False)
    project = "ps" + uuid.uuid4().hex[:8]
    try:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            status, body = health(c)
            assert status == 503 and body["checks"] == {"redis": "down", "postgres": "down"}
            r = c.post(
                "/v1/events", json=[{"name": "click"}], headers={"Authorization": "Bearer x"}
            )
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["error"]["code"] == "postgres_unavailable"
            pixel = c.get("/v1/pixel.gif", params={"key": "x", "name": "click"})
            assert pixel.status_code == 200 and pixel.content.startswith(b"GIF")

            embedded.ensure_postgres(pdir)  # Postgres comes (same port): serve migrates it

            async def postgres_up() -> tuple[int, dict[str, object]]:
                return health(c)

            asyncio.run(
                wait_for(
                    postgres_up,
                    lambda h: h[1].get("checks") == {"redis": "down", "postgres": "ok"},
                    timeout=30,
                    what="postgres ok in /healthz",
                )
            )
            n = asyncio.run(
                wait_for(lambda: migrated(database_url), lambda n: n == SHIPPED, what="migrated")
            )
            assert n == SHIPPED >= 8
            ingest = {"Authorization": "Bearer " + create_key(env, project, "ingest")}
            read = {"Authorization": "Bearer " + create_key(env, project, "read")}
            r = c.post("/v1/events", json=[{"name": "click"}], headers=ingest)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
            assert r.json()["error"]["code"] == "redis_unavailable"

            embedded.ensure_valkey(vdir)  # Redis comes too

            async def healthy() -> int:
                return health(c)[0]

            asyncio.run(wait_for(healthy, lambda s: s == 200, timeout=30, what="/healthz 200"))
            r = c.post("/v1/events", json=[{"name": "click", "uid": "u1"}], headers=ingest)
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
            total = f"/v1/projects/{project}/total"
            params = {"name": "click", "grain": "minute", "excluding_current": "false"}
            v = c.get(total, params=params, headers=read)
            assert v.status_code == 200 and v.json()["value"] == 1, v.text

            # the project's uid secret is cached now: uids are hashed while Postgres is down
            embedded.stop_embedded(pdir)
            r = c.post("/v1/events", json=[{"name": "click", "uid": "u2"}], headers=ingest)
            assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    finally:
        svc.stop()
    log = (tmp_path / "service.log").read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log[-3000:]
