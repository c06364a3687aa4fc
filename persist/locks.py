"""Advisory locks: the per-project persister lock, the per-project reconcile claim and the
try-locks of jobs one process runs at a time (lock ids come from persist.schema)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from persist.db import Conn
from persist.schema import PROJECT_LOCK_CLASS, RECONCILE_CLAIM_CLASS


@contextlib.asynccontextmanager
async def project_lock(conn: Conn, project: str, *, wait: bool) -> AsyncIterator[bool]:
    """Holds the project's persister lock (a session advisory lock) for the block; yields
    whether it is held (always True with wait=True)."""
    async with _project_keyed(conn, PROJECT_LOCK_CLASS, project, wait=wait) as held:
        yield held


@contextlib.asynccontextmanager
async def reconcile_claim(conn: Conn, project: str, *, wait: bool) -> AsyncIterator[bool]:
    """Holds the project's reconcile claim (a session advisory lock, apart from the
    persister lock) for the block; yields whether it is held (always True with wait=True).
    Two projects whose names hash alike share a claim: one waits, neither is skipped for
    good (see engines/schedule.py)."""
    async with _project_keyed(conn, RECONCILE_CLAIM_CLASS, project, wait=wait) as held:
        yield held


@contextlib.asynccontextmanager
async def _project_keyed(
    conn: Conn, lock_class: int, project: str, *, wait: bool
) -> AsyncIterator[bool]:
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", lock_class, project)
        held = True
    else:
        held = bool(
            await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", lock_class, project
            )
        )
    try:
        yield held
    finally:
        if held:
            await conn.execute("SELECT pg_advisory_unlock($1, hashtext($2))", lock_class, project)


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
