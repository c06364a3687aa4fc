"""Rebuild and reconcile: recompute rollups from the raw log in Postgres.

Works one UTC day at a time. For each day it holds the project's persister lock, takes a
consistent cut of the write stream (Persister.drain_to_cut), then recomputes every sealed
bucket of that day from the raw events up to the cut, streaming them with a server-side
cursor (memory stays flat; uniques are rebuilt with PFADD into scratch keys, so the
registers are exactly those live ingest builds). Ingest keeps running: events after the cut
land in late generations that the persister applies on top afterwards, so each is counted
exactly once. Writing is all-or-nothing per day and only when something differs, so running
it twice changes nothing."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import cast

import asyncpg
import msgspec
from redis.asyncio import Redis

from counters.core.buckets import (
    DAY_MS,
    GRAINS,
    HOUR_MS,
    Grain,
    bucket_ceil,
    bucket_start,
    format_ts,
)
from counters.core.config import Settings
from counters.core.grouping import group_minutes, roll_up
from counters.core.models import RawEvent
from counters.engines.diffs import BucketDiff as BucketDiff  # re-exported for reconcile
from counters.engines.diffs import bucket_diff
from counters.engines.persister import Cut, Persister
from counters.engines.retention import minute_edge, raw_edge
from counters.engines.rollcheck import RollupChecker, Span, day_spans, parts_edge
from lua.keys import ProjectKeys
from persist import rawlog
from persist.db import Conn
from persist.hll import same_registers
from persist.locks import project_lock
from persist.rollups import Record, read_rollup_range, replace_rollup_range, rollup_record
from persist.runs import record_run

FETCH_ROWS = 5_000
SCRATCH_TTL_MS = HOUR_MS
DETAILS_KEPT = 50
"""Differing rows recorded in reconcile_runs."""
DETAILS_REPORTED = 1_000
"""Differing rows a report lists (the count covers them all)."""

Progress = Callable[[int], None]
"""Called with the number of raw events just processed."""


class RebuildReport(msgspec.Struct):
    """What one rebuild or reconcile of one project found and did."""

    project: str
    start: int
    end: int
    events: int = 0
    rows: int = 0
    discrepancies: int = 0
    written_days: int = 0
    diffs: list[BucketDiff] = msgspec.field(default_factory=list)
    rows_vs_parts: int = 0
    """Hour and day rows compared with the rows they are made of (reconcile only)."""


RowKey = tuple[Grain, int, str]  # grain, bucket, field
RowValue = tuple[int, int, bytes | None]  # count, sum_micros, hll


async def count_raw(
    pool: asyncpg.Pool, project: str, start: int, end: int, name: str | None
) -> int:
    """Raw events in [start, end) (for progress and ETA)."""
    async with pool.acquire() as conn:
        return await rawlog.count_raw(conn, project, start, end, name)


class Rebuilder:
    """Recomputes one project's rollups from its raw log."""

    def __init__(
        self, pool: asyncpg.Pool, redis: Redis, settings: Settings, persister: Persister
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.settings = settings
        self.persister = persister
        self.rollcheck = RollupChecker(redis)
        self._oldest_minute = 0

    async def run(
        self,
        project: str,
        start: int,
        end: int,
        *,
        name: str | None = None,
        write: bool = True,
        kind: str = "rebuild",
        progress: Progress | None = None,
        against_parts: bool = False,
    ) -> RebuildReport:
        """Rebuilds every sealed bucket of the UTC days overlapping [start, end). With
        write=False only reports what differs. With against_parts, also compares each
        sealed hour and day row with the rows it is made of (engines/rollcheck.py) at the
        same cut; a row found on both bases counts once. Records the run in
        reconcile_runs."""
        first = bucket_start(start, Grain.day)
        last = bucket_ceil(end, Grain.day)
        now = self.persister.clock.now_ms()
        kept = raw_edge(now, self.settings.raw_retention_days)
        if first < kept:
            raise ValueError(
                f"the raw log is kept for {self.settings.raw_retention_days} days: nothing"
                f" before {format_ts(kept)} can be rebuilt"
            )
        self._oldest_minute = minute_edge(now, self.settings.minute_retention_days)
        report = RebuildReport(project, first, last)
        started = datetime.now(UTC)
        keys = ProjectKeys(self.settings.key_prefix, project)
        for day in range(first, last, DAY_MS):
            async with self.pool.acquire() as conn:
                async with project_lock(conn, project, wait=True):
                    cut = await self.persister.drain_to_cut(conn, keys)
                    checks = (
                        day_spans(day, cut.sealed, parts_edge(self._oldest_minute))
                        if against_parts
                        else []
                    )
                    await self._day(conn, keys, cut, day, name, write, report, progress, checks)
        async with self.pool.acquire() as conn:
            await record_run(
                conn,
                project=project,
                kind=kind,
                started=started,
                start=first,
                end=last,
                events=report.events,
                discrepancies=report.discrepancies,
                fixed=write and report.discrepancies > 0,
                details=msgspec.json.encode(report.diffs[:DETAILS_KEPT]).decode(),
            )
        return report

    async def _day(
        self,
        conn: Conn,
        keys: ProjectKeys,
        cut: Cut,
        day: int,
        name: str | None,
        write: bool,
        report: RebuildReport,
        progress: Progress | None,
        checks: list[Span],
    ) -> None:
        limits = {g: min(day + DAY_MS, cut.sealed[g]) for g in GRAINS}
        lows = {g: day for g in GRAINS}
        lows[Grain.minute] = max(day, self._oldest_minute)
        part = DayPart(keys.project, name, lows, limits)
        if not part.ranges():
            return  # nothing of this day is sealed yet
        token = uuid.uuid4().hex
        acc: dict[RowKey, list[int]] = {}
        scratch: dict[RowKey, str] = {}
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                batches = rawlog.raw_batches(
                    conn, keys.project, day, day + DAY_MS, cut.stream_id, name, rows=FETCH_ROWS
                )
                async with contextlib.aclosing(batches):
                    async for events in batches:
                        await self._fold(keys, token, events, lows, limits, acc, scratch)
                        report.events += len(events)
                        if progress is not None:
                            progress(len(events))
            blobs = await self._scratch_blobs(scratch)
            rebuilt = {k: (c, s, blobs.get(k)) for k, (c, s) in acc.items()}
            stored = await self._stored(conn, part)
            diffs = _diff(rebuilt, stored)
            found = await self.rollcheck.check(conn, keys, checks, name)
            seen = {d.row() for d in diffs}
            extra = [d for d in found.diffs if d.row() not in seen]
            report.rows += len(rebuilt)
            report.rows_vs_parts += found.rows
            report.discrepancies += len(diffs) + len(extra)
            report.diffs.extend((diffs + extra)[: max(0, DETAILS_REPORTED - len(report.diffs))])
            if write and diffs:  # rows from the raw log also agree with their minutes
                await self._write(conn, part, rebuilt)
                report.written_days += 1
            elif write and extra:  # the raw log agrees with the minutes: only parts differ
                await self.rollcheck.repair(conn, keys, found)
                report.written_days += 1
        finally:
            if scratch:
                names = list(scratch.values())
                for i in range(0, len(names), 1000):
                    await self.redis.delete(*names[i : i + 1000])

    async def _fold(
        self,
        keys: ProjectKeys,
        token: str,
        events: list[RawEvent],
        lows: dict[Grain, int],
        limits: dict[Grain, int],
        acc: dict[RowKey, list[int]],
        scratch: dict[RowKey, str],
    ) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pending = False
        for grain, bucket, field, count, total, uids in roll_up(
            group_minutes(events, self.settings.crosstabs)
        ).cells():
            if bucket >= limits[grain] or bucket < lows[grain]:
                continue
            key = (grain, bucket, field)
            row = acc.get(key)
            if row is None:
                acc[key] = row = [0, 0]
            row[0] += count
            row[1] += total
            if uids:
                tmp = scratch.get(key)
                if tmp is None:
                    tmp = scratch[key] = keys.tmp(f"rb:{token}:{len(scratch)}")
                pipe.pfadd(tmp, *uids)
                pipe.pexpire(tmp, SCRATCH_TTL_MS)
                pending = True
        if pending:
            await pipe.execute()

    async def _scratch_blobs(self, scratch: dict[RowKey, str]) -> dict[RowKey, bytes]:
        items = list(scratch.items())
        out: dict[RowKey, bytes] = {}
        for i in range(0, len(items), 1000):
            part = items[i : i + 1000]
            values = cast(list[bytes | None], await self.redis.mget([n for _, n in part]))
            out.update({k: v for (k, _), v in zip(part, values, strict=True) if v is not None})
        return out

    async def _stored(self, conn: Conn, part: DayPart) -> dict[RowKey, RowValue]:
        out: dict[RowKey, RowValue] = {}
        for grain, lo, hi in part.ranges():
            rows = await read_rollup_range(conn, part.project, grain, lo, hi, part.name)
            out.update({(grain, bucket, field): v for (bucket, field), v in rows.items()})
        return out

    async def _write(self, conn: Conn, part: DayPart, rebuilt: dict[RowKey, RowValue]) -> None:
        by_grain: dict[Grain, list[Record]] = {g: [] for g in GRAINS}
        for (grain, bucket, field), (count, total, hll) in rebuilt.items():
            by_grain[grain].append(rollup_record(part.project, field, bucket, count, total, hll))
        async with conn.transaction():
            for grain, lo, hi in part.ranges():
                await replace_rollup_range(
                    conn, part.project, grain, lo, hi, part.name, by_grain[grain]
                )


@dataclass(frozen=True)
class DayPart:
    """What of one UTC day a rebuild covers: per grain [low, limit) (limits stop at the
    cut's watermarks; minutes start at minute retention), of one name or all."""

    project: str
    name: str | None
    lows: dict[Grain, int]
    limits: dict[Grain, int]

    def ranges(self) -> list[tuple[Grain, int, int]]:
        """(grain, low, limit) of every grain whose part of the day is not empty."""
        return [(g, self.lows[g], self.limits[g]) for g in GRAINS if self.limits[g] > self.lows[g]]


def _diff(
    rebuilt: dict[RowKey, RowValue],
    stored: dict[RowKey, RowValue],
) -> list[BucketDiff]:
    out: list[BucketDiff] = []
    for key in sorted(rebuilt.keys() | stored.keys(), key=lambda k: (k[0].value, k[1], k[2])):
        new = rebuilt.get(key, (0, 0, None))
        old = stored.get(key, (0, 0, None))
        hll_differs = not same_registers(new[2], old[2])
        if new[0] != old[0] or new[1] != old[1] or hll_differs:
            grain, bucket, field = key
            out.append(bucket_diff(grain, bucket, field, old[:2], new[:2], hll_differs))
    return out
