"""Issue 11, "What to build" 2: a read that runs past its Postgres statement timeout is the
client's 400 (narrow the read), not a 503 outage retried forever (real Postgres)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from counters.core.errors import BadRequest, Unavailable
from persist.read_errors import read_postgres, statement_timeout
from tests.support import wait_for


async def test_statement_timeout_is_a_400_not_an_outage(pool: asyncpg.Pool) -> None:
    with pytest.raises(BadRequest) as info:
        with read_postgres("use a cross-tab"):
            async with pool.acquire() as conn:
                async with conn.transaction(readonly=True):
                    await statement_timeout(conn, 0.05)
                    await conn.execute("SELECT pg_sleep(5)")
    assert info.value.status == 400 and info.value.code == "read_too_large"
    assert "use a cross-tab" in info.value.message


async def test_a_cancelled_statement_that_is_not_a_timeout_stays_an_outage(
    pool: asyncpg.Pool,
) -> None:
    """An operator's pg_cancel_backend is not the client's fault: still a 503."""
    async with pool.acquire() as other, pool.acquire() as conn:
        victim = await conn.fetchval("SELECT pg_backend_pid()")
        running = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))

        async def sleeping() -> bool:
            state = await other.fetchval(
                "SELECT state FROM pg_stat_activity WHERE pid = $1", victim
            )
            return bool(state == "active")

        await wait_for(sleeping, bool, what="the statement to run")
        await other.execute("SELECT pg_cancel_backend($1)", victim)
        with pytest.raises(Unavailable):
            with read_postgres():
                await running
