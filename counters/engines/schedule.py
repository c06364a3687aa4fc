"""The nightly reconcile that `counters serve` runs (one process at a time)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg
from redis.exceptions import RedisError

from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.core.clock import Clock
from counters.engines.rebuild import Rebuilder, reconcile_projects
from counters.metrics import Metrics
from persist.db import PG_ERRORS, Conn
from persist.projects import list_projects

log = logging.getLogger("counters.reconcile")

RECONCILE_LOCK = 7_412_005
_BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, *PG_ERRORS)


def next_run(now_ms: int, at: str) -> int:
    """The next UTC HH:MM strictly after now (epoch ms)."""
    hh, mm = (int(x) for x in at.split(":"))
    today = bucket_start(now_ms, Grain.day) + (hh * 60 + mm) * 60_000
    return today if today > now_ms else today + DAY_MS


async def latest_discrepancies(conn: Conn) -> int:
    """Sum over projects of what each project's latest reconcile found."""
    n: int = await conn.fetchval(
        "SELECT coalesce(sum(discrepancies), 0) FROM (SELECT DISTINCT ON (project)"
        " discrepancies FROM reconcile_runs WHERE kind = 'reconcile'"
        " ORDER BY project, id DESC) latest"
    )
    return n


async def nightly_reconcile(
    rebuilder: Rebuilder,
    pool: asyncpg.Pool,
    clock: Clock,
    metrics: Metrics,
    *,
    at: str,
    days: int,
    stop: asyncio.Event,
) -> None:
    """Sleeps until `at` (UTC) every day and reconciles the last `days` days of every
    project, fixing what differs, unless another process is already doing it."""
    while not stop.is_set():
        wait_s = (next_run(clock.now_ms(), at) - clock.now_ms()) / 1000
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(wait_s, 0.0))
            return
        except TimeoutError:
            pass
        try:
            async with pool.acquire() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", RECONCILE_LOCK):
                    continue
                try:
                    found = await reconcile_projects(
                        rebuilder,
                        await list_projects(conn),
                        now_ms=clock.now_ms(),
                        days=days,
                        write=True,
                        echo=log.info,
                    )
                    metrics.reconcile_discrepancies.set(found)
                finally:
                    await conn.execute("SELECT pg_advisory_unlock($1)", RECONCILE_LOCK)
        except _BACKEND_ERRORS as exc:
            log.warning("nightly reconcile failed, next try tomorrow: %s", exc)
        except Exception:  # the schedule must outlive any single bad run
            log.exception("nightly reconcile failed, next try tomorrow")
