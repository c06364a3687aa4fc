"""Resolving the backends: real URLs when configured, else the embedded Valkey and
Postgres under the data dir."""

from __future__ import annotations

import msgspec

from counters.core.config import Settings


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
