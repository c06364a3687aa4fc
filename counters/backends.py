"""Resolving and opening the two backends: real URLs when configured, else the embedded
Valkey and Postgres under the data dir."""

from __future__ import annotations

import msgspec
from redis.asyncio import Redis

from counters.config import Settings


def resolve_settings(settings: Settings) -> Settings:
    """Settings with both URLs filled in, starting (or reusing) embedded servers for any URL
    left unset. Every CLI command goes through here, so all reach the same instance."""
    redis_url = settings.redis_url
    database_url = settings.database_url
    if redis_url is None or database_url is None:
        from counters import embedded

        data_dir = settings.resolved_data_dir()
        data_dir.mkdir(parents=True, exist_ok=True)
        if redis_url is None:
            redis_url = embedded.ensure_valkey(data_dir)
        if database_url is None:
            database_url = embedded.ensure_postgres(data_dir)
    return msgspec.structs.replace(settings, redis_url=redis_url, database_url=database_url)


def open_redis(url: str) -> Redis:
    """An asyncio client that fails fast when the server is down (callers answer 503)."""
    return Redis.from_url(
        url,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=15,
        max_connections=256,
    )
