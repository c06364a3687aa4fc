"""The per-project uid secret (migration 010): read, never written after creation."""

from __future__ import annotations

import asyncpg

from persist.db import postgres_unavailable
from persist.schema import PROJECTS_TABLE

UID_SECRET_COLUMN = "uid_secret"


async def uid_secret(pool: asyncpg.Pool, project: str) -> bytes | None:
    """The project's uid secret (32 bytes), or None when the project does not exist; a
    Postgres failure raises Unavailable("postgres")."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            value = await conn.fetchval(
                f"SELECT {UID_SECRET_COLUMN} FROM {PROJECTS_TABLE} WHERE project = $1", project
            )
    return None if value is None else bytes(value)
