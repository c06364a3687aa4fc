"""API-key and project lookups for the request path, each on a pooled connection; a
Postgres failure raises Unavailable("postgres")."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from counters.core.keys import KeyInfo
from persist.db import postgres_unavailable
from persist.projects import lookup_key, touch_keys


async def find_key(pool: asyncpg.Pool, key: str) -> KeyInfo | None:
    """The key (its own project first), or None when it is unknown or revoked."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            return await lookup_key(conn, key)


async def mark_used(pool: asyncpg.Pool, key_ids: Sequence[str]) -> None:
    """last_used_at = now() for a batch of keys, in one statement."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            await touch_keys(conn, key_ids)
