"""Rebuild and reconcile of a split project as one project: every shard (a stored project
of its own, counters/core/shards.py) is rebuilt exactly on its own, one after the other
under its own lock and cut, and the reports and the progress are added up."""

from __future__ import annotations

import asyncpg

from counters.core.shards import shard_projects
from counters.engines.progress import Progress, planned_days
from counters.engines.rebuild import Rebuilder, RebuildReport
from persist.shards import load_plan


async def stored_names(pool: asyncpg.Pool, project: str) -> list[str]:
    """The stored project names of every shard of the project, its own first (itself
    alone when it was never split or does not exist)."""
    async with pool.acquire() as conn:
        plan = await load_plan(conn, project)
    return shard_projects(project, 1 if plan is None else plan.span)


class ShardDays:
    """The Progress of one shard inside a tracker planned over all of them: shard s's day d
    is the tracker's day d + s (days are multiples of DAY_MS, so these never meet)."""

    def __init__(self, inner: Progress, shard: int) -> None:
        self._inner = inner
        self._shard = shard

    def advance(self, day: int, events: int) -> None:
        """Progress.advance of the shard's day."""
        self._inner.advance(day + self._shard, events)

    def day_done(self, day: int, events: int) -> None:
        """Progress.day_done of the shard's day."""
        self._inner.day_done(day + self._shard, events)


async def planned_shard_days(
    pool: asyncpg.Pool, names: list[str], start: int, end: int, name: str | None
) -> dict[int, int]:
    """planned_days of every shard, shard s's day d under d + s (ShardDays's keys)."""
    plan: dict[int, int] = {}
    for s, stored in enumerate(names):
        for day, n in (await planned_days(pool, stored, start, end, name)).items():
            plan[day + s] = n
    return plan


def merged(project: str, reports: list[RebuildReport]) -> RebuildReport:
    """One report of the project from its shards' reports (counts add; the differing rows
    of every shard are listed)."""
    first = reports[0]
    out = RebuildReport(project, first.start, first.end)
    for r in reports:
        out.events += r.events
        out.rows += r.rows
        out.discrepancies += r.discrepancies
        out.written_days += r.written_days
        out.days_differing = sorted({*out.days_differing, *r.days_differing})
        out.rows_vs_parts += r.rows_vs_parts
        out.diffs.extend(r.diffs)
    return out


async def run_shards(
    rebuilder: Rebuilder,
    project: str,
    names: list[str],
    start: int,
    end: int,
    *,
    name: str | None = None,
    write: bool = True,
    kind: str = "rebuild",
    against_parts: bool = False,
    progress: Progress | None = None,
    nice: int = 0,
) -> RebuildReport:
    """Rebuilder.run (same options) over every shard's stored name in turn: one report for
    the project; with progress, a tracker planned by planned_shard_days."""
    reports = []
    for s, stored in enumerate(names):
        reports.append(
            await rebuilder.run(
                stored,
                start,
                end,
                name=name,
                write=write,
                kind=kind,
                against_parts=against_parts,
                nice=nice,
                progress=None if progress is None else ShardDays(progress, s),
            )
        )
    return merged(project, reports)
