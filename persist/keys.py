"""API-key and project lookups for the request path, each on a pooled connection; a
Postgres failure raises Unavailable("postgres")."""

from __future__ import annotations

import asyncpg

from persist.db import postgres_unavailable
from persist.projects import lookup_key, project_exists


async def find_key(pool: asyncpg.Pool, key: str) -> tuple[tuple[str, ...], str] | None:
    """(projects, scope) of the key (its own project first), or None when it is unknown."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            return await lookup_key(conn, key)


async def has_project(pool: asyncpg.Pool, project: str) -> bool:
    """Whether the project has been created."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            return await project_exists(conn, project)
