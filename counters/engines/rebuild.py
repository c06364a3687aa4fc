"""Rebuild and reconcile: recompute rollups from the raw log in Postgres.

Works one UTC day at a time. For each day it holds the project's persister lock, takes a
consistent cut of the write stream (Persister.drain_to_cut), then recomputes every sealed
bucket of that day from the raw events up to the cut, a window at a time (whole hours, or
parts of an hour too busy for one window): the window's raw events and stored rows come out
of Postgres with COPY into Arrow tables while the previous window is computed with numpy in
a thread (counters/engines/recompute.py: counts, sums and the HyperLogLog registers PFADD
would build, byte for byte) and compared with the stored rows in bulk
(counters/engines/rowdiff.py). Memory holds one window and the day's fields with their
registers (counters/engines/day_registers.py), whatever the day's size. Ingest keeps
running: events after the cut land in late generations that the persister applies on top
afterwards, so each is counted exactly once. Writing is all-or-nothing per day and only of
the rows that differ, so running it twice changes nothing."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import sys
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec

from counters.core.buckets import (
    DAY_MS,
    GRAINS,
    HOUR_MS,
    MINUTE_MS,
    MINUTES_PER_HOUR,
    Grain,
    bucket_ceil,
    bucket_start,
    format_ts,
)
from counters.core.config import Settings
from counters.engines.diffs import BucketDiff as BucketDiff  # re-exported for reconcile
from counters.engines.history_version import bump_history
from counters.engines.persister import Cut, Persister
from counters.engines.progress import Progress
from counters.engines.retention import minute_edge, raw_edge
from counters.engines.rollcheck import RollupChecker, Span, day_spans, parts_edge
from lua.client import RedisClient
from lua.keys import ProjectKeys
from persist.db import PG_ERRORS, Conn, postgres_unavailable
from persist.locks import project_lock
from persist.nice import is_local, nice_this_thread, niced_backend
from persist.runs import record_run

if TYPE_CHECKING:  # numpy and Arrow are imported when a rebuild runs, not with the service
    import pyarrow as pa

    from counters.engines.recompute import DayRecompute
    from counters.engines.rowdiff import RowDiffs, Writes

SLICE_EVENTS = 50_000
"""Raw events a window holds at most (an hour holding more is cut into parts): memory holds
about one window and the fields of its day. Measured on 2 days of 1M events (42k an hour):
at 50k, 11.0 s and 265 MB peak RSS; at 25k (every hour in two parts), 13.1 s and 244 MB."""
MIN_SLICE_EVENTS = 5_000
"""The smallest window budget (each window costs a few queries)."""
DETAILS_KEPT = 50
"""Differing rows recorded in reconcile_runs."""
DETAILS_REPORTED = 1_000
"""Differing rows a report lists (the count covers them all)."""


class RebuildReport(msgspec.Struct):
    """What one rebuild or reconcile of one project found and did."""

    project: str
    start: int
    end: int
    events: int = 0
    rows: int = 0
    discrepancies: int = 0
    written_days: int = 0
    days_differing: list[int] = msgspec.field(default_factory=list)
    """Start (epoch ms) of each day holding a differing row (a dry run would rewrite it)."""
    diffs: list[BucketDiff] = msgspec.field(default_factory=list)
    rows_vs_parts: int = 0
    """Hour and day rows compared with the rows they are made of (reconcile only)."""


class Rebuilder:
    """Recomputes one project's rollups from its raw log."""

    def __init__(
        self, pool: asyncpg.Pool, redis: RedisClient, settings: Settings, persister: Persister
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.settings = settings
        self.persister = persister
        self.rollcheck = RollupChecker(redis)
        self._oldest_minute = 0
        self._nice = 0
        self._local = settings.database_url is None or is_local(settings.database_url)
        self._workers: dict[int, ThreadPoolExecutor] = {}

    async def _compute(self, fn: Callable[..., None], *args: Any) -> None:
        """Runs fn(*args) on the rebuild's one compute thread of this run's niceness (numpy
        and Arrow release the GIL, so Postgres reads go on meanwhile; one thread keeps one
        malloc arena)."""
        worker = self._workers.get(self._nice)
        if worker is None:
            worker = self._workers[self._nice] = ThreadPoolExecutor(
                max_workers=1,
                thread_name_prefix="rebuild",
                initializer=nice_this_thread,
                initargs=(self._nice,),
            )
        await asyncio.get_running_loop().run_in_executor(worker, fn, *args)
        _release_memory()

    @contextlib.asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Conn]:
        """A pool connection whose backend runs at this run's niceness (persist/nice.py)."""
        async with self.pool.acquire() as conn:
            async with niced_backend(conn, self._nice, local=self._local):
                yield conn

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
        nice: int = 0,
    ) -> RebuildReport:
        """Rebuilds every sealed bucket of the UTC days overlapping [start, end). With
        write=False only reports what differs. With against_parts, also compares each
        sealed hour and day row with the rows it is made of (engines/rollcheck.py) at the
        same cut; a row found on both bases counts once. nice (0-19): the niceness of the
        run's compute thread and, where Postgres is local, of its backends, so that ingest
        beside it keeps the CPU. Records the run in reconcile_runs."""
        import pyarrow as pa

        # Arrow's own allocator (mimalloc) keeps what a window freed: with malloc's, the
        # memory of one window is reused by the next and peak RSS stays near one window's
        pa.set_memory_pool(pa.system_memory_pool())
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
        self._nice = nice
        report = RebuildReport(project, first, last)
        started = datetime.now(UTC)
        keys = ProjectKeys(self.settings.key_prefix, project)
        for day in range(first, last, DAY_MS):
            async with self._acquire() as conn:
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
        from counters.engines.recompute import DayRecompute, empty_rows
        from counters.engines.rowdiff import RowDiffs, compare_rows
        from persist.rebuild_sql import day_dims, discover_day_dims, stored_rows

        limits = {g: min(day + DAY_MS, cut.sealed[g]) for g in GRAINS}
        lows = {g: day for g in GRAINS}
        lows[Grain.minute] = max(day, self._oldest_minute)
        part = DayPart(keys.project, name, lows, limits)
        if not part.ranges():
            return  # nothing of this day is sealed yet
        project = keys.project
        with postgres_unavailable():
            dims = await day_dims(conn, project, day)
            if dims is None:
                dims = await discover_day_dims(conn, project, day)
        recompute = DayRecompute(day, dims, self.settings.crosstabs)
        found = RowDiffs(
            project,
            minutes_kept=max(0, DETAILS_REPORTED - len(report.diffs)),
            keep_coarse=bool(checks),  # parts checks dedupe against every hour and day diff
        )
        async with contextlib.AsyncExitStack() as stack:
            side = await stack.enter_async_context(self._acquire())
            writer = DayWriter(self._acquire, project, stack) if write else None
            with postgres_unavailable():
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    # every hour is read (the report counts every raw event up to the
                    # cut); only the sealed part is compared
                    await self._slices(
                        conn, side, part, cut, recompute, found, progress, dims, writer
                    )
                if limits[Grain.day] > day:
                    stored = await stored_rows(side, project, Grain.day, day, day + 1, name)
                    rows = recompute.finish() or empty_rows(Grain.day)
                    await self._compute(compare_rows, project, rows, stored, day, day + 1, found)
                    if writer is not None:
                        await writer.flush(found)
            report.events += recompute.events
            if progress is not None:
                progress.day_done(day, recompute.events)
            diffs = sorted(found.diffs, key=lambda d: (_GRAIN_ORDER[d.grain], d.bucket, d.field))
            rechecks = _rechecks(checks, sorted(found.touched))
            parts = await self.rollcheck.check(conn, keys, rechecks, name)
            extra: list[BucketDiff] = []
            if parts.diffs:  # parts checks cover hours and days, whose diffs are all kept
                seen = {d.diff().row() for d in diffs if d.grain is not Grain.minute}
                extra = [d for d in parts.diffs if d.row() not in seen]
            report.rows += found.rows
            report.rows_vs_parts += sum(found.rows_in(c.whole, c.low, c.high) for c in checks)
            report.discrepancies += found.count + len(extra)
            if found.count or extra:
                report.days_differing.append(day)
            room = max(0, DETAILS_REPORTED - len(report.diffs))
            report.diffs.extend(
                [d.diff() for d in diffs[:room]] + extra[: max(0, room - len(diffs))]
            )
            if writer is not None and found.count:
                # rows from the raw log also agree with their minutes
                await writer.commit()
                await bump_history(self.redis, keys)
                report.written_days += 1
            elif write and extra:  # the raw log agrees with the minutes: only parts differ
                await self.rollcheck.repair(conn, keys, parts)
                report.written_days += 1

    async def _slices(
        self,
        conn: Conn,
        side: Conn,
        part: DayPart,
        cut: Cut,
        recompute: DayRecompute,
        found: RowDiffs,
        progress: Progress | None,
        dims: list[str],
        writer: DayWriter | None,
    ) -> None:
        """Recomputes the day window by window (at most about SLICE_EVENTS raw events each:
        whole hours, or parts of a busier hour; planned from the day's events per hour):
        the next window's raw events and stored rows are read while this one is computed in
        a thread, so Postgres and numpy overlap."""
        from persist.rebuild_sql import hour_counts, raw_slice, stored_rows

        day = recompute.day
        project, name = part.project, part.name

        def fetch(w: Window) -> asyncio.Future[tuple[pa.Table, pa.Table, pa.Table]]:
            async def stored() -> tuple[pa.Table, pa.Table]:
                lo, hi = w.span(part, Grain.minute)
                minutes = await stored_rows(side, project, Grain.minute, lo, hi, name)
                lo, hi = w.span(part, Grain.hour)
                return minutes, await stored_rows(side, project, Grain.hour, lo, hi, name)

            async def read() -> tuple[pa.Table, pa.Table, pa.Table]:
                raw_read = raw_slice(conn, project, w.start, w.end, cut.stream_id, name, dims)
                if self._nice > 0:
                    # beside ingest: one backend busy at a time (a backend's niceness ranks
                    # it only against other backends: with two at once, ingest at full speed
                    # kept 0.58-0.59 x its rate beside a 7 x 1M reconcile, against
                    # 0.67-0.68 x; the reconcile took 38 s against 43 s)
                    raw_table = await raw_read
                    return raw_table, *(await stored())
                # full speed: the raw events and the stored rows at once, on their two
                # backends (the reads, not the computing, set the pace of a window)
                raw = asyncio.ensure_future(raw_read)
                rows = asyncio.ensure_future(stored())
                try:
                    minutes, hours = await rows
                    return await raw, minutes, hours
                except BaseException:
                    for task in (raw, rows):
                        task.cancel()
                        with contextlib.suppress(BaseException):
                            await task
                    raise

            return asyncio.ensure_future(read())

        per_hour = await hour_counts(conn, project, day, name)
        windows = plan_windows(day, per_hour, window_budget(sum(per_hour.values())))
        pending: asyncio.Future[tuple[pa.Table, pa.Table, pa.Table]] | None = fetch(windows[0])
        for i, current in enumerate(windows):
            assert pending is not None
            raw, minutes, hour_rows = await pending
            pending = fetch(windows[i + 1]) if i + 1 < len(windows) else None
            try:
                await self._compute(
                    self._window, recompute, current, part, raw, minutes, hour_rows, found
                )
            except BaseException:
                if pending is not None:
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
                raise
            if writer is not None:
                await writer.flush(found)
            if progress is not None:
                progress.advance(day, raw.num_rows)

    @staticmethod
    def _window(
        recompute: DayRecompute,
        window: Window,
        part: DayPart,
        raw: pa.Table,
        minutes: pa.Table,
        hour_rows: pa.Table,
        found: RowDiffs,
    ) -> None:
        from counters.engines.recompute import empty_rows
        from counters.engines.rowdiff import compare_rows

        m_lo, m_hi = window.span(part, Grain.minute)
        h_lo, h_hi = window.span(part, Grain.hour)
        rows = {
            r.grain: r
            for r in recompute.add(
                raw,
                minutes=m_hi > m_lo,
                hours=window.end % HOUR_MS == 0,
                part_of_hour=window.part_of_hour,
            )
        }
        if m_hi > m_lo:
            got = rows.get(Grain.minute) or empty_rows(Grain.minute)
            compare_rows(part.project, got, minutes, m_lo, m_hi, found)
        if h_hi > h_lo:
            got = rows.get(Grain.hour) or empty_rows(Grain.hour)
            compare_rows(part.project, got, hour_rows, h_lo, h_hi, found)


class DayWriter:
    """Writes one day's differing rows as windows find them, in one transaction on a
    connection of its own that commits only when the whole day is done (all or nothing),
    so memory holds a window or two of rows, not the day's. Each window's rows are written
    in the background, in order, while the next window is computed."""

    def __init__(
        self,
        acquire: Callable[[], contextlib.AbstractAsyncContextManager[Conn]],
        project: str,
        stack: contextlib.AsyncExitStack,
    ) -> None:
        self.acquire = acquire
        self.project = project
        self.stack = stack
        self._conn: Conn | None = None
        self._tx: Any = None
        self._pending: asyncio.Task[None] | None = None

    async def flush(self, found: RowDiffs) -> None:
        """Starts writing (uncommitted) the rows found since the last flush, once the rows
        of the flush before are written (whose error, if any, is raised here)."""
        writes = found.take_writes()
        if not writes:
            return
        await self._wait()
        if self._conn is None:
            self._conn = await self.stack.enter_async_context(self.acquire())
            self._tx = self._conn.transaction()
            await self._tx.start()
            self.stack.push_async_callback(self._rollback)
        self._pending = asyncio.ensure_future(self._write(self._conn, writes))

    async def _write(self, conn: Conn, writes: Writes) -> None:
        from persist.rebuild_sql import delete_rows, insert_rows, write_rows

        with postgres_unavailable():
            for grain, tables in writes.updates.items():
                await write_rows(conn, self.project, grain, tables)
            for grain, tables in writes.inserts.items():
                await insert_rows(conn, self.project, grain, tables)
            for grain, tables in writes.deletes.items():
                await delete_rows(conn, self.project, grain, tables)

    async def _wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    async def commit(self) -> None:
        """Makes the day's writes visible at once."""
        await self._wait()
        if self._tx is not None:
            with postgres_unavailable():
                await self._tx.commit()
            self._tx = None

    async def _rollback(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        if self._tx is not None:
            tx, self._tx = self._tx, None
            with contextlib.suppress(*PG_ERRORS):
                await tx.rollback()


@dataclass(frozen=True)
class Window:
    """What of one day a rebuild reads and computes at once, [start, end): whole hours, or
    whole minutes of one hour (part_of_hour)."""

    start: int
    end: int

    @property
    def part_of_hour(self) -> bool:
        """Whether the window is less than its hour (one of its parts)."""
        return self.start % HOUR_MS != 0 or self.end % HOUR_MS != 0

    def span(self, part: DayPart, grain: Grain) -> tuple[int, int]:
        """The buckets of this grain that the window finishes and the rebuild covers: its
        minutes; hours ending inside it (a split hour with its last part); empty when
        low >= high."""
        start, end = self.start, self.end
        if grain is Grain.hour:
            start, end = bucket_start(start, Grain.hour), bucket_start(end, Grain.hour)
        low = max(start, part.lows[grain])
        return low, max(low, min(end, part.limits[grain]))


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


_GRAIN_ORDER = {g: i for i, g in enumerate(GRAINS)}
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6") if sys.platform == "linux" else None
)


def _release_memory() -> None:
    """Hands the memory a window freed back to the OS (glibc keeps freed blocks in each
    thread's arena otherwise, and RSS would climb to the largest window times the arenas)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def _rechecks(checks: list[Span], diffs: list[tuple[Grain, int]]) -> list[Span]:
    """The parts of `checks` that can still find something once the raw log has been
    compared: a sealed hour whose every minute and itself agree with the raw log also agrees
    with its minutes (both are the same events), and so does a day whose rows all agree. So
    only the hours holding a differing minute or hour, and the day when anything of it
    differs, are checked against their parts."""
    if not diffs:
        return []
    hours = {bucket_start(b, Grain.hour) for g, b in diffs if g is not Grain.day}
    out: list[Span] = []
    for span in checks:
        if span.whole is Grain.day:
            out.append(span)
            continue
        out.extend(
            Span(span.whole, span.part, h, h + HOUR_MS)
            for h in sorted(hours)
            if span.low <= h < span.high
        )
    return out


def window_budget(day_events: int) -> int:
    """Raw events per window for a day holding `day_events`: SLICE_EVENTS, but at least two
    windows for a day that fits in one (the next window is read while one is computed, and
    its rows written while the next is: one window a day would leave the two cores taking
    turns), never under MIN_SLICE_EVENTS."""
    return min(SLICE_EVENTS, max(MIN_SLICE_EVENTS, -(-day_events // 2)))


def plan_windows(day: int, per_hour: dict[int, int], budget: int) -> list[Window]:
    """The day's 24 hours cut into windows each holding about `budget` events at most:
    consecutive whole hours, and an hour holding more cut into as many parts of whole
    minutes as it needs (its events taken as even over the hour)."""
    out: list[Window] = []
    start, held = day, 0
    for hour in range(day, day + DAY_MS, HOUR_MS):
        n = per_hour.get(hour, 0)
        if hour > start and held + n > budget:
            out.append(Window(start, hour))
            start, held = hour, 0
        if n > budget:  # this hour alone, in parts
            parts = min(-(-n // budget), MINUTES_PER_HOUR)
            cuts = [hour + (i * MINUTES_PER_HOUR // parts) * MINUTE_MS for i in range(parts)]
            out.extend(itertools.starmap(Window, itertools.pairwise([*cuts, hour + HOUR_MS])))
            start, held = hour + HOUR_MS, 0
            continue
        held += n
    if start < day + DAY_MS:
        out.append(Window(start, day + DAY_MS))
    return out
