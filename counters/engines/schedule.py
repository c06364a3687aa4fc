"""The nightly reconcile that `counters serve` runs (one process at a time)."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start
from counters.core.clock import Clock
from counters.core.errors import Unavailable
from counters.engines.rebuild import Rebuilder
from counters.engines.reconcile import reconcile_projects
from counters.metrics import Metrics
from lua.client import REDIS_ERRORS
from persist.db import PG_ERRORS
from persist.locks import try_lock
from persist.projects import list_projects
from persist.runs import latest_discrepancies
from persist.schema import RECONCILE_LOCK

__all__ = ["latest_discrepancies", "next_run", "nightly_reconcile"]

log = logging.getLogger("counters.reconcile")

_BACKEND_ERRORS: tuple[type[BaseException], ...] = (Unavailable, *REDIS_ERRORS, *PG_ERRORS)


def next_run(now_ms: int, at: str) -> int:
    """The next UTC HH:MM strictly after now (epoch ms)."""
    hh, mm = (int(x) for x in at.split(":"))
    today = bucket_start(now_ms, Grain.day) + hh * HOUR_MS + mm * MINUTE_MS
    return today if today > now_ms else today + DAY_MS


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
    project (rollups against the raw log, sealed hour and day rows against their minutes),
    fixing what differs and publishing the count, unless another process is doing it."""
    while not stop.is_set():
        wait_s = (next_run(clock.now_ms(), at) - clock.now_ms()) / 1000
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(wait_s, 0.0))
            return
        except TimeoutError:
            pass
        try:
            await _reconcile_once(rebuilder, pool, clock, metrics, days=days)
        except _BACKEND_ERRORS as exc:
            log.warning("nightly reconcile failed, next try tomorrow: %s", exc)
        except Exception:  # the schedule must outlive any single bad run
            log.exception("nightly reconcile failed, next try tomorrow")


async def _reconcile_once(
    rebuilder: Rebuilder, pool: asyncpg.Pool, clock: Clock, metrics: Metrics, *, days: int
) -> None:
    async with pool.acquire() as conn:
        async with try_lock(conn, RECONCILE_LOCK) as held:
            if not held:
                return
            found = await reconcile_projects(
                rebuilder,
                await list_projects(conn),
                now_ms=clock.now_ms(),
                days=days,
                write=True,
                echo=log.info,
            )
            metrics.reconcile_discrepancies.set(found)
