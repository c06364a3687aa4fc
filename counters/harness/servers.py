"""Backend servers for tests and bench: the given URLs, else a private embedded Valkey and
Postgres in a temporary directory; databases and key prefixes created and removed."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis as sync_redis

from counters import embedded
from lua.client import cluster_enabled


@dataclass(frozen=True)
class Backends:
    """Where one test session or service points: Redis, its Postgres database, its key
    prefix, and the data dir of the embedded servers (None for external ones)."""

    redis_url: str
    database_url: str
    prefix: str
    data_dir: Path | None


@dataclass(frozen=True)
class Servers:
    """A Redis and a Postgres server; data_dir is set when they are private embedded ones
    that stop_servers stops and removes.

    server_url is an admin URL (creates and drops databases: the embedded superuser, or the
    given URL); owner_url, for embedded servers, is the service's non-superuser role that
    owns (and connects to) the databases create_database makes (None: server_url's user).
    """

    redis_url: str
    server_url: str
    data_dir: Path | None
    owner_url: str | None = None


def start_servers(
    redis_url: str | None,
    server_url: str | None,
    *,
    tmp_prefix: str,
    tmp_dir: str | None = None,
    redis_cluster: bool = False,
) -> Servers:
    """The given URLs; for any that is None, a private embedded server in a new temporary
    data dir (mode 711: the `nobody` Postgres can traverse it, nobody else can list it).
    With redis_cluster, the private Redis is a 3-master embedded Valkey Cluster."""
    data_dir: Path | None = None
    owner_url: str | None = None
    if not redis_url or not server_url:
        data_dir = Path(tempfile.mkdtemp(prefix=tmp_prefix, dir=tmp_dir))
        data_dir.chmod(0o711)
        if not redis_url:
            start = embedded.ensure_valkey_cluster if redis_cluster else embedded.ensure_valkey
            redis_url = start(data_dir)
        if not server_url:
            owner_url = embedded.ensure_postgres(data_dir)
            server_url = embedded.postgres_admin_url(data_dir)
    return Servers(redis_url, server_url, data_dir, owner_url)


def stop_servers(servers: Servers) -> None:
    """Stops and removes the private embedded servers (external ones are left alone)."""
    if servers.data_dir is not None:
        embedded.stop_embedded(servers.data_dir)
        shutil.rmtree(servers.data_dir, ignore_errors=True)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def database_url(server_url: str, database: str) -> str:
    """The URL of another database on the same server (same user and password)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


def create_database(server_url: str, database: str, owner_url: str | None = None) -> str:
    """Creates an empty database through the admin server_url, owned by owner_url's user
    when given; returns its URL as that owner (else as server_url's user)."""
    owner = urlsplit(owner_url).username if owner_url else None

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            suffix = f' OWNER "{owner}"' if owner else ""
            await conn.execute(f'CREATE DATABASE "{database}"{suffix}')
        finally:
            await conn.close()

    asyncio.run(run())
    return database_url(owner_url or server_url, database)


def drop_database(server_url: str, database: str) -> None:
    """Drops the database (and any connection still open to it)."""

    async def run() -> None:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(run())


def sync_client(redis_url: str) -> sync_redis.Redis | sync_redis.RedisCluster:
    """A blocking client for harness chores: a RedisCluster when the server is one."""
    if cluster_enabled(redis_url):
        return sync_redis.RedisCluster.from_url(redis_url)
    return sync_redis.Redis.from_url(redis_url)


def drop_prefix(redis_url: str, prefix: str) -> None:
    """Deletes every key under the prefix."""
    client = sync_client(redis_url)
    try:
        batch = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(batch), 500):
            client.delete(*batch[i : i + 500])
    finally:
        close_sync(client)


def close_sync(client: sync_redis.Redis | sync_redis.RedisCluster) -> None:
    """Closes a sync_client and every connection it opened (RedisCluster.close leaves the
    nodes' pools open)."""
    if isinstance(client, sync_redis.RedisCluster):
        for node in client.get_nodes():  # type: ignore[no-untyped-call]
            if node.redis_connection is not None:
                node.redis_connection.connection_pool.disconnect()
    client.close()
