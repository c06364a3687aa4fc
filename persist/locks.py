"""Advisory locks: the per-project persister lock and the try-locks of jobs one process runs
at a time (lock ids come from persist.schema)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from persist.db import Conn
from persist.schema import PROJECT_LOCK_CLASS


@contextlib.asynccontextmanager
async def project_lock(conn: Conn, project: str, *, wait: bool) -> AsyncIterator[bool]:
    """Holds the project's persister lock (a session advisory lock) for the block; yields
    whether it is held (always True with wait=True)."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", PROJECT_LOCK_CLASS, project)
        held = True
    else:
        held = bool(
            await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", PROJECT_LOCK_CLASS, project
            )
        )
    try:
        yield held
    finally:
        if held:
            await conn.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))", PROJECT_LOCK_CLASS, project
            )


@contextlib.asynccontextmanager
async def try_lock(conn: Conn, lock_id: int) -> AsyncIterator[bool]:
    """Tries the session advisory lock `lock_id` without waiting; yields whether it is held
    and releases it after the block when it was."""
    held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", lock_id))
    try:
        yield held
    finally:
        if held:
            await conn.execute("SELECT pg_advisory_unlock($1)", lock_id)
