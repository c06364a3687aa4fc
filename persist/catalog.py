"""Catalog and health reads: which names and single dims a project stored lately; whether
Postgres answers."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from counters.core.buckets import Grain, to_datetime
from counters.core.rollups import parse_rollup_id
from persist.db import postgres_unavailable
from persist.schema import ROLLUP_TABLE

_CATALOG_SQL = (
    f"SELECT DISTINCT name, rollup FROM {ROLLUP_TABLE[Grain.day]}"
    " WHERE project = ANY($1::text[]) AND bucket >= $2 AND position(',' in rollup) = 0"
)


async def names_and_dims(
    pool: asyncpg.Pool, projects: Sequence[str], since_ms: int
) -> dict[str, set[str]]:
    """Every event name with day rollups from since_ms on in any of the stored projects (a
    project's shards), and the single dims it was rolled up by (cross-tabs left out); a
    Postgres failure raises Unavailable."""
    with postgres_unavailable():
        async with pool.acquire() as conn:
            rows = await conn.fetch(_CATALOG_SQL, list(projects), to_datetime(since_ms))
    seen: dict[str, set[str]] = {}
    for r in rows:
        dims = seen.setdefault(r["name"], set())
        dims.update(parse_rollup_id(r["rollup"]))
    return seen


async def ping(pool: asyncpg.Pool) -> bool:
    """Whether Postgres answers a trivial query (any failure raises, for the caller's
    timeout and error handling)."""
    async with pool.acquire() as conn:
        return bool(await conn.fetchval("SELECT 1") == 1)
