"""The nightly reconcile that `counters serve` runs, shared by every process that runs it:
each walks the project list and reconciles the projects whose claim it gets and that no
process reconciled since the night's scheduled time, so each project is done once a night
and N processes split the work."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain, bucket_start, to_datetime
from counters.core.clock import Clock
from counters.core.errors import Unavailable
from counters.engines.rebuild import Rebuilder
from counters.engines.reconcile import reconcile_projects
from counters.metrics import Metrics
from lua.client import REDIS_ERRORS
from persist.db import PG_ERRORS
from persist.locks import reconcile_claim
from persist.projects import list_projects
from persist.runs import latest_discrepancies, reconciled_since

__all__ = ["NightShare", "latest_discrepancies", "next_run", "nightly_reconcile", "reconcile_share"]

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
    """Sleeps until `at` (UTC) every day and reconciles the last `days` days of the projects
    no other process reconciles or reconciled since that time (rollups against the raw
    log, sealed hour and day rows against their minutes), fixing what differs. Afterwards
    reconcile_discrepancies holds, as /metrics does, the sum over projects of what each
    project's latest reconcile found (whichever process ran it)."""
    while not stop.is_set():
        scheduled = next_run(clock.now_ms(), at)
        wait_s = (scheduled - clock.now_ms()) / 1000
        try:
            await asyncio.wait_for(stop.wait(), timeout=max(wait_s, 0.0))
            return
        except TimeoutError:
            pass
        try:
            await _reconcile_once(rebuilder, pool, clock, metrics, days=days, scheduled=scheduled)
        except _BACKEND_ERRORS as exc:
            log.warning("nightly reconcile failed, next try tomorrow: %s", exc)
        except Exception:  # the schedule must outlive any single bad run
            log.exception("nightly reconcile failed, next try tomorrow")


async def _reconcile_once(
    rebuilder: Rebuilder,
    pool: asyncpg.Pool,
    clock: Clock,
    metrics: Metrics,
    *,
    days: int,
    scheduled: int,
) -> None:
    async with pool.acquire() as conn:
        projects = await list_projects(conn)
    share = await reconcile_share(
        rebuilder,
        pool,
        projects,
        now_ms=clock.now_ms(),
        days=days,
        since=to_datetime(scheduled),
    )
    log.info(
        "nightly reconcile: this process reconciled %d project(s) (%d differing rows),"
        " %d were done by another",
        len(share.reconciled),
        share.discrepancies,
        len(share.done_elsewhere),
    )
    async with pool.acquire() as conn:
        metrics.reconcile_discrepancies.set(await latest_discrepancies(conn))


@dataclass
class NightShare:
    """What one process did of one night's reconcile."""

    reconciled: list[str] = field(default_factory=list)
    """Projects this process reconciled (and fixed)."""
    done_elsewhere: list[str] = field(default_factory=list)
    """Projects already reconciled since the night's scheduled time, by another process."""
    discrepancies: int = 0
    """Differing rows this process found (and fixed) over its projects."""


async def reconcile_share(
    rebuilder: Rebuilder,
    pool: asyncpg.Pool,
    projects: list[str],
    *,
    now_ms: int,
    days: int,
    since: datetime,
    echo: Callable[[str], None] = log.info,
) -> NightShare:
    """Reconciles (write=True) the last `days` days of each project that no reconcile
    finished since `since` covered and fixed, each under the project's reconcile claim,
    checked after taking it: run by N processes at once, every project is done exactly
    once and each process takes the next free project. Projects another process held on
    the first pass are waited for afterwards (then found done, or done here if that
    process failed), so none is left out."""
    night = _Night(rebuilder, pool, now_ms, days, since, echo)
    busy = [p for p in projects if not await night.claim(p, wait=False)]
    for project in busy:
        await night.claim(project, wait=True)
    return night.share


@dataclass
class _Night:
    """One process's walk over one night's projects."""

    rebuilder: Rebuilder
    pool: asyncpg.Pool
    now_ms: int
    days: int
    since: datetime
    echo: Callable[[str], None]
    share: NightShare = field(default_factory=NightShare)

    async def claim(self, project: str, *, wait: bool) -> bool:
        """Reconciles the project unless its claim is taken (wait=False) or a reconcile
        since `since` covered it; returns whether the claim was had."""
        covering = bucket_start(self.now_ms - self.days * DAY_MS, Grain.day)
        async with self.pool.acquire() as conn:
            async with reconcile_claim(conn, project, wait=wait) as held:
                if not held:
                    return False
                if await reconciled_since(conn, project, since=self.since, covering=covering):
                    self.share.done_elsewhere.append(project)
                    return True
                self.share.discrepancies += await reconcile_projects(
                    self.rebuilder,
                    [project],
                    now_ms=self.now_ms,
                    days=self.days,
                    write=True,
                    echo=self.echo,
                    nice=self.rebuilder.settings.reconcile_nice,
                )
                self.share.reconciled.append(project)
                return True
