"""Rebuild and reconcile: recompute rollups from the raw log in Postgres.

Works one UTC day at a time. For each day it holds the project's persister lock, takes a
consistent cut of the write stream (persister.drain_to_cut), then recomputes every sealed
bucket of that day from the raw events up to the cut, streaming them with a server-side
cursor (memory stays flat; uniques are rebuilt with PFADD into scratch keys, so the
registers are exactly those live ingest builds). Ingest keeps running: events after the cut
land in late generations that the persister applies on top afterwards, so each is counted
exactly once. Writing is all-or-nothing per day and only when something differs, so running
it twice changes nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, cast

import asyncpg
import msgspec
from redis.asyncio import Redis

from counters.core.buckets import (
    DAY_MS,
    GRAINS,
    Grain,
    bucket_ceil,
    bucket_start,
    format_ts,
    from_datetime,
    to_datetime,
)
from counters.core.config import Settings
from counters.core.grouping import group_minutes, roll_up
from counters.core.models import RawEvent
from counters.core.rollups import decode_field, encode_field, parse_rollup_id
from counters.engines.persister import (
    TABLE,
    Cut,
    Persister,
    project_lock,
    rollup_record,
    stream_key,
    upsert_rollups,
)
from counters.engines.retention import minute_edge, raw_edge
from lua.keys import ProjectKeys
from persist.db import Conn
from persist.hll import same_registers

FETCH_ROWS = 5_000
SCRATCH_TTL_MS = 3_600_000
DETAILS_KEPT = 50
"""Differing rows recorded in reconcile_runs."""
DETAILS_REPORTED = 1_000
"""Differing rows a report lists (the count covers them all)."""

Progress = Callable[[int], None]
"""Called with the number of raw events just processed."""

_dims = msgspec.json.Decoder(dict[str, str])


class BucketDiff(msgspec.Struct):
    """One rollup row whose stored value differs from what the raw log says."""

    grain: str
    bucket: str
    name: str
    rollup: str
    dims: list[str]
    stored_count: int
    rebuilt_count: int
    stored_sum: int
    rebuilt_sum: int
    uniques_differ: bool


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


RowKey = tuple[Grain, int, str]  # grain, bucket, field


def _raw_query(name: str | None) -> str:
    return (
        "SELECT name, ts, event_id, dims::text AS dims, value_micros, uid FROM raw_events"
        " WHERE project = $1 AND ts >= $2 AND ts < $3"
        " AND (split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint)"
        " <= ($4::bigint, $5::bigint)" + (" AND name = $6" if name else "")
    )


async def count_raw(
    pool: asyncpg.Pool, project: str, start: int, end: int, name: str | None
) -> int:
    """Raw events in [start, end) (for progress and ETA)."""
    sql = "SELECT count(*) FROM raw_events WHERE project = $1 AND ts >= $2 AND ts < $3"
    args: list[Any] = [project, to_datetime(start), to_datetime(end)]
    if name:
        sql += " AND name = $4"
        args.append(name)
    async with pool.acquire() as conn:
        n: int = await conn.fetchval(sql, *args)
    return n


class Rebuilder:
    """Recomputes one project's rollups from its raw log."""

    def __init__(
        self, pool: asyncpg.Pool, redis: Redis, settings: Settings, persister: Persister
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.settings = settings
        self.persister = persister
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
    ) -> RebuildReport:
        """Rebuilds every sealed bucket of the UTC days overlapping [start, end). With
        write=False only reports what differs. Records the run in reconcile_runs."""
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
                    await self._day(conn, keys, cut, day, name, write, report, progress)
        async with self.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO reconcile_runs (project, kind, started_at, range_from, range_to,"
                " events, discrepancies, fixed, details) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)",
                project,
                kind,
                started,
                to_datetime(first),
                to_datetime(last),
                report.events,
                report.discrepancies,
                write and report.discrepancies > 0,
                msgspec.json.encode(report.diffs[:DETAILS_KEPT]).decode(),
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
    ) -> None:
        limits = {g: min(day + DAY_MS, cut.sealed[g]) for g in GRAINS}
        lows = {g: day for g in GRAINS}
        lows[Grain.minute] = max(day, self._oldest_minute)
        if all(limits[g] <= lows[g] for g in GRAINS):
            return  # nothing of this day is sealed yet
        token = uuid.uuid4().hex
        acc: dict[RowKey, list[int]] = {}
        scratch: dict[RowKey, str] = {}
        ms, seq = stream_key(cut.stream_id)
        args: list[Any] = [keys.project, to_datetime(day), to_datetime(day + DAY_MS), ms, seq]
        if name:
            args.append(name)
        try:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                cursor = await conn.cursor(_raw_query(name), *args)
                while True:
                    rows = await cursor.fetch(FETCH_ROWS)
                    if not rows:
                        break
                    events = [
                        RawEvent(
                            r["name"],
                            from_datetime(r["ts"]),
                            r["event_id"],
                            _dims.decode(r["dims"]),
                            r["value_micros"],
                            r["uid"],
                            0,
                        )
                        for r in rows
                    ]
                    await self._fold(keys, token, events, lows, limits, acc, scratch)
                    report.events += len(events)
                    if progress is not None:
                        progress(len(events))
            blobs = await self._scratch_blobs(scratch)
            rebuilt = {k: (c, s, blobs.get(k)) for k, (c, s) in acc.items()}
            stored = await self._stored(conn, keys.project, lows, limits, name)
            diffs = _diff(rebuilt, stored)
            report.rows += len(rebuilt)
            report.discrepancies += len(diffs)
            report.diffs.extend(diffs[: max(0, DETAILS_REPORTED - len(report.diffs))])
            if write and diffs:
                await self._write(conn, keys.project, lows, limits, name, rebuilt)
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

    async def _stored(
        self,
        conn: Conn,
        project: str,
        lows: dict[Grain, int],
        limits: dict[Grain, int],
        name: str | None,
    ) -> dict[RowKey, tuple[int, int, bytes | None]]:
        out: dict[RowKey, tuple[int, int, bytes | None]] = {}
        for grain in GRAINS:
            if limits[grain] <= lows[grain]:
                continue
            sql = (
                f"SELECT name, rollup, dims, bucket, count, sum_micros, hll FROM {TABLE[grain]}"
                " WHERE project = $1 AND bucket >= $2 AND bucket < $3"
                + (" AND name = $4" if name else "")
            )
            args: list[Any] = [project, to_datetime(lows[grain]), to_datetime(limits[grain])]
            if name:
                args.append(name)
            for r in await conn.fetch(sql, *args):
                field = encode_field(r["name"], parse_rollup_id(r["rollup"]), r["dims"])
                out[(grain, from_datetime(r["bucket"]), field)] = (
                    r["count"],
                    r["sum_micros"],
                    r["hll"],
                )
        return out

    async def _write(
        self,
        conn: Conn,
        project: str,
        lows: dict[Grain, int],
        limits: dict[Grain, int],
        name: str | None,
        rebuilt: dict[RowKey, tuple[int, int, bytes | None]],
    ) -> None:
        by_grain: dict[Grain, list[tuple[Any, ...]]] = {g: [] for g in GRAINS}
        for (grain, bucket, field), (count, total, hll) in rebuilt.items():
            by_grain[grain].append(rollup_record(project, field, bucket, count, total, hll))
        async with conn.transaction():
            for grain in GRAINS:
                if limits[grain] <= lows[grain]:
                    continue
                sql = (
                    f"DELETE FROM {TABLE[grain]} WHERE project = $1 AND bucket >= $2"
                    " AND bucket < $3" + (" AND name = $4" if name else "")
                )
                args: list[Any] = [project, to_datetime(lows[grain]), to_datetime(limits[grain])]
                if name:
                    args.append(name)
                await conn.execute(sql, *args)
                await upsert_rollups(conn, grain, by_grain[grain], additive=False)


_GRAIN = {g.short: g for g in GRAINS}


def _diff(
    rebuilt: dict[RowKey, tuple[int, int, bytes | None]],
    stored: dict[RowKey, tuple[int, int, bytes | None]],
) -> list[BucketDiff]:
    out: list[BucketDiff] = []
    for key in sorted(rebuilt.keys() | stored.keys(), key=lambda k: (k[0].value, k[1], k[2])):
        new = rebuilt.get(key, (0, 0, None))
        old = stored.get(key, (0, 0, None))
        hll_differs = not same_registers(new[2], old[2])
        if new[0] != old[0] or new[1] != old[1] or hll_differs:
            grain, bucket, field = key
            n, rollup, values = decode_field(field)
            out.append(
                BucketDiff(
                    grain.name,
                    format_ts(bucket),
                    n,
                    ",".join(rollup),
                    list(values),
                    old[0],
                    new[0],
                    old[1],
                    new[1],
                    hll_differs,
                )
            )
    return out


class Ticker:
    """Progress as plain lines (not a terminal): at most one line every `every` seconds."""

    def __init__(self, label: str, total: int, echo: Callable[[str], None], every: float = 2.0):
        self.label = label
        self.total = total
        self.done = 0
        self.echo = echo
        self.every = every
        self.t0 = time.monotonic()
        self.last = 0.0

    def __call__(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            left = max(self.total - self.done, 0) / rate if rate else 0.0
            pct = 100.0 * self.done / self.total if self.total else 100.0
            self.echo(
                f"{self.label}: {self.done}/{self.total} events ({pct:.0f}%),"
                f" {rate:,.0f} events/s, ETA {left:.0f}s"
            )


def describe(diff: BucketDiff) -> str:
    """One line for a differing bucket."""
    dims = ",".join(
        f"{d}={v}" for d, v in zip(parse_rollup_id(diff.rollup), diff.dims, strict=True)
    )
    parts = [f"{diff.grain} {diff.bucket} {diff.name}" + (f" {dims}" if dims else " (total)")]
    if diff.stored_count != diff.rebuilt_count:
        parts.append(
            f"count {diff.stored_count} -> {diff.rebuilt_count}"
            f" ({diff.rebuilt_count - diff.stored_count:+d})"
        )
    if diff.stored_sum != diff.rebuilt_sum:
        parts.append(f"sum {diff.stored_sum / 1e6:g} -> {diff.rebuilt_sum / 1e6:g}")
    if diff.uniques_differ:
        parts.append("uniques sketch differs")
    return ": ".join([parts[0], ", ".join(parts[1:])])


async def reconcile_projects(
    rebuilder: Rebuilder,
    projects: list[str],
    *,
    now_ms: int,
    days: int,
    write: bool,
    echo: Callable[[str], None],
) -> int:
    """Compares every rollup of the last `days` days with the raw log for each project,
    reports what differs and (write=True) corrects it. Returns the number of differing
    rows found."""
    total = 0
    for project in projects:
        report = await rebuilder.run(
            project, now_ms - days * DAY_MS, now_ms, write=write, kind="reconcile"
        )
        total += report.discrepancies
        echo(
            f"{project}: {report.events} events, {report.rows} rollup rows checked,"
            f" {report.discrepancies} differ"
            + (" (fixed)" if write and report.discrepancies else "")
        )
        for diff in report.diffs:
            echo("  " + describe(diff))
    echo(f"discrepancies: {total}")
    return total
