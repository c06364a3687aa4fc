"""Shared fixtures: real Redis/Valkey and Postgres for the whole session.

By default the session starts its own embedded Valkey and Postgres in a temporary data dir
(with COUNTERS_TEST_REDIS_CLUSTER=1, a 3-master embedded Valkey Cluster instead of one Valkey).
COUNTERS_TEST_REDIS_URL / COUNTERS_TEST_DATABASE_URL point it at real servers instead; the
suite then uses its own key prefix and its own database (created and dropped here), so it
never touches anything else on those servers.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import pytest_asyncio

from counters.core.config import Settings
from counters.harness.servers import (
    Backends,
    create_database,
    drop_database,
    drop_prefix,
    start_servers,
    stop_servers,
)
from counters.harness.service import Service, service_env
from lua import Scripts
from lua.client import RedisClient, open_redis
from persist.db import create_pool
from persist.projects import ensure_project
from tests.support import Harness

RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def backends() -> Iterator[Backends]:
    """URLs of the Redis and the (per-run) Postgres database the suite uses."""
    servers = start_servers(
        os.environ.get("COUNTERS_TEST_REDIS_URL"),
        os.environ.get("COUNTERS_TEST_DATABASE_URL"),
        tmp_prefix="counters-test-",
        redis_cluster=os.environ.get("COUNTERS_TEST_REDIS_CLUSTER", "") not in ("", "0"),
    )
    database = f"counters_test_{RUN_ID}"
    # as the service's own role (no superuser) on embedded servers
    database_url = create_database(servers.server_url, database, servers.owner_url)
    prefix = f"cttest{RUN_ID}"
    try:
        yield Backends(servers.redis_url, database_url, prefix, servers.data_dir)
    finally:
        drop_prefix(servers.redis_url, prefix)
        drop_database(servers.server_url, database)
        stop_servers(servers)


@pytest.fixture(scope="session")
def settings(backends: Backends) -> Settings:
    """Settings pointing at the test backends, with a short grace for fast tests."""
    return Settings(
        redis_url=backends.redis_url,
        database_url=backends.database_url,
        key_prefix=backends.prefix,
        grace_seconds=5,
        persist_interval_seconds=0.2,
        data_dir=str(backends.data_dir or tempfile.gettempdir()),
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def redis(backends: Backends) -> AsyncIterator[RedisClient]:
    client = open_redis(backends.redis_url)
    yield client
    await client.aclose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def pool(backends: Backends) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(backends.database_url)
    yield p
    await p.close()


@pytest.fixture(scope="session")
def scripts(redis: RedisClient) -> Scripts:
    return Scripts(redis)


@pytest_asyncio.fixture(loop_scope="session")
async def project(pool: asyncpg.Pool) -> str:
    """A fresh project (its own keys in Redis, its own rows in Postgres)."""
    name = "t" + uuid.uuid4().hex[:12]
    async with pool.acquire() as conn:
        await ensure_project(conn, name)
    return name


@pytest_asyncio.fixture(loop_scope="session")
async def harness(
    settings: Settings, redis: RedisClient, pool: asyncpg.Pool, scripts: Scripts, project: str
) -> Harness:
    """Ingest, persist and read one fresh project in-process, on a manual clock."""
    return Harness.build(settings, redis, pool, scripts, project)


@pytest.fixture(scope="module")
def service(backends: Backends, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """A real `counters serve` (uvicorn) on the test backends, for the module."""
    workdir = tmp_path_factory.mktemp("service")
    svc = Service(service_env(backends, workdir), workdir / "service.log")
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()
