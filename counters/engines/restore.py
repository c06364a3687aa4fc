"""Restoring a project's watermarks into Redis from Postgres after Redis lost its state."""

from __future__ import annotations

import asyncpg
from redis.asyncio import Redis

from lua import Scripts
from lua.client import redis_unavailable
from lua.keys import ProjectKeys
from persist.db import postgres_unavailable
from persist.state import load_state


async def restore_watermarks(
    pool: asyncpg.Pool, redis: Redis, scripts: Scripts, prefix: str, project: str
) -> bool:
    """Ensures Redis holds the project's watermarks, restoring them from Postgres when Redis
    lost them (the late generation restarts after the last one applied). Returns True when
    it restored. Raises Unavailable naming the backend that is down."""
    keys = ProjectKeys(prefix, project)
    with postgres_unavailable():
        async with pool.acquire() as conn:
            state = await load_state(conn, project)
    with redis_unavailable():
        restored = await scripts.restore(
            keys=[keys.watermarks],
            args=[
                state.minute_until,
                state.hour_until,
                state.day_until,
                state.late_applied + 1,
                state.raw_stream_id,
            ],
        )
    return bool(restored)
