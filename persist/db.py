"""Postgres connection pool and versioned migrations (applied under an advisory lock)."""

from __future__ import annotations

import contextlib
import logging
from importlib.resources import files
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from counters.core.errors import unavailable
from persist.schema import MIGRATION_LOCK, MIGRATIONS_TABLE

log = logging.getLogger("counters.persist")

Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A plain connection or one borrowed from a pool."""

PG_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
"""What a Postgres that is down, restarting or unreachable raises (answered with a 503)."""


def postgres_unavailable() -> contextlib.AbstractContextManager[None]:
    """`with postgres_unavailable(): await conn...`: a Postgres failure becomes a 503 naming
    postgres."""
    return unavailable("postgres", PG_ERRORS)


def _migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    out = []
    for entry in files("persist").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            out.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(out)


async def migrate(conn: Conn) -> list[str]:
    """Brings the schema up to date; safe to run from many processes at once. Returns the
    names of the migrations this call applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                    version,
                    name,
                )
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    return applied


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections are ready to use (schema migrated once on creation)."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


CONNECT_TIMEOUT = 5.0
"""Seconds a lazy pool waits for a new connection (asyncpg's default is 60)."""


class _MigrateFirst:
    """A pool's `init`: until one migration run has succeeded, each new connection brings
    the schema up to date (under the migration lock) before it is handed out."""

    def __init__(self) -> None:
        self.done = False

    async def __call__(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        if self.done:
            return
        applied = await migrate(conn)
        self.done = True
        if applied:
            log.info("migrated: %s", ", ".join(applied))


async def create_lazy_pool(dsn: str, *, max_size: int = 10) -> asyncpg.Pool:
    """A pool that does not connect yet (so it opens while Postgres is down): connections
    are made on use, and the first that connects migrates the schema before any query runs
    on it. A Postgres that is down makes each acquire fail (OSError or asyncpg errors)."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=0, max_size=max_size, init=_MigrateFirst(), timeout=CONNECT_TIMEOUT
    )
    return pool
