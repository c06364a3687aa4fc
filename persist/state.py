"""The persister's Postgres state (watermarks, late generation, raw cursor) and its restore
into Redis after Redis lost its state."""

from __future__ import annotations

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.buckets import Grain
from counters.core.errors import Unavailable
from lua import Scripts
from lua.keys import ProjectKeys
from persist.db import PG_ERRORS, Conn

UNTIL_COLUMN = {Grain.minute: "minute_until", Grain.hour: "hour_until", Grain.day: "day_until"}


class PersistState(msgspec.Struct, frozen=True):
    """One project's row of persist_state."""

    minute_until: int
    hour_until: int
    day_until: int
    late_applied: int
    raw_stream_id: str

    def until(self, grain: Grain) -> int:
        """Every bucket of this grain before the returned epoch ms is in Postgres."""
        return {
            Grain.minute: self.minute_until,
            Grain.hour: self.hour_until,
            Grain.day: self.day_until,
        }[grain]


EMPTY_STATE = PersistState(0, 0, 0, 0, "0-0")


async def load_state(
    conn: Conn, project: str, *, for_update: bool = False, create: bool = True
) -> PersistState:
    """The project's state row (created empty when missing, unless create=False)."""
    sql = (
        "SELECT minute_until, hour_until, day_until, late_applied, raw_stream_id"
        " FROM persist_state WHERE project = $1" + (" FOR UPDATE" if for_update else "")
    )
    row = await conn.fetchrow(sql, project)
    if row is None and not create:
        return EMPTY_STATE
    if row is None:
        await conn.execute(
            "INSERT INTO persist_state (project) VALUES ($1) ON CONFLICT DO NOTHING", project
        )
        row = await conn.fetchrow(sql, project)
        assert row is not None
    return PersistState(**dict(row))


async def restore_watermarks(
    pool: asyncpg.Pool, redis: Redis, scripts: Scripts, prefix: str, project: str
) -> bool:
    """Ensures Redis holds the project's watermarks, restoring them from Postgres when Redis
    lost them. Returns True when it restored. Raises Unavailable when a backend is down."""
    keys = ProjectKeys(prefix, project)
    try:
        async with pool.acquire() as conn:
            state = await load_state(conn, project)
    except PG_ERRORS as exc:
        raise Unavailable("postgres", str(exc) or type(exc).__name__) from exc
    try:
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
    except (RedisError, OSError) as exc:
        raise Unavailable("redis", str(exc) or type(exc).__name__) from exc
    return bool(restored)
