"""Putting a project back into Redis from Postgres after Redis lost its state.

Postgres is the authority: before ingest or sealing run again (both answer NOWM while the
watermarks hash is missing), the restore puts back

- every unsealed hour's and day's part that Postgres already holds, exactly as seal.lua
  had left it in Redis: hour H (H >= hour_until) = the minute rows of [H, minute_until);
  day D (D >= day_until) = the hour rows of its hours below hour_until plus the minute
  rows after them, up to minute_until. Counts and sums are added, sketches united
  (PFMERGE of the stored PFADD-built blobs), and each bucket goes into dirty:h / dirty:d,
  so the hour and day rows the persister writes later are complete;
- the minutes not persisted yet, from the raw log: events Postgres's raw log holds for
  minutes at or after minute_until (the raw copy runs ahead of the minute copy) go back
  into their hot minutes exactly as ingest.lua had written them (seal.lua merges them into
  their hours and days later), so the retry of such an event is a duplicate that is
  counted, not one that is lost;
- the dedupe markers of every event id the raw log received within the dedupe window,
  each expiring when it would have;
- the watermarks and late generation.

Hashes and sketches are staged under restore:<token>: keys with a TTL, in chunks of a few
thousand operations per lua/restore_stage.lua call (which also sets the markers, NX, so
they are in place before the watermarks); lua/restore.lua then moves the staged keys into
place and writes the watermarks in one atomic step, only if the watermarks are still
missing, so concurrent restorers add the persisted part once (the losers' staged keys are
deleted). Everything is read in one REPEATABLE READ snapshot, so the rows and the raw log
fit the watermarks written.

What cannot come back: events acknowledged but not yet in Postgres's raw log when Redis
was lost without its AOF (the raw-log backlog), and from the rollups, late events of
generations not applied yet (their raw rows are kept: a rebuild or reconcile counts them).
durable_ack makes a kill -9 of Redis lose nothing acknowledged; it does not cover a lost
volume or a failover to a replica without the data.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.grouping import plan_batch
from counters.core.models import RawEvent
from counters.core.rollups import Rollup
from counters.engines.history_version import bump_history
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys, count_field, event_id_token, restore_member, sum_field
from persist.db import Conn, postgres_unavailable
from persist.locks import project_lock
from persist.rawlog import raw_batches
from persist.restore_reads import StoredRow, recent_event_ids, restore_snapshot, rollup_rows
from persist.state import PersistState

log = logging.getLogger("counters.restore")

STAGE_TTL_MS = 3_600_000
"""Lifetime of a restore's staged keys (a restorer that dies leaves nothing for long)."""
ROW_CHUNK = 2000
"""Postgres rows (rollup rows, raw events, event ids) fetched at a time."""
STAGE_OPS = 4000
"""Staging operations (sketch unions, hash increments, PFADDs, markers) per
lua/restore_stage.lua call: each call holds Redis for a few milliseconds."""
STAGE_BYTES = 4_000_000
"""Payload bytes per restore_stage.lua call (sketch blobs are up to 12 kB each)."""
_ATTEMPTS = 3
_encoder = msgspec.msgpack.Encoder()

Target = tuple[Grain, int]


def _targets(state: PersistState) -> tuple[int, int, int]:
    """(hour_from, day_minutes_from, day_hours_until): minute rows at or after hour_from go to
    their hour; minute rows at or after day_minutes_from, and hour rows of [day_until,
    day_hours_until), go to their day."""
    m, h, d = state.minute_until, state.hour_until, state.day_until
    day_hours_until = min(h, bucket_start(m, Grain.hour))
    return h, max(d, day_hours_until), day_hours_until


class _Stage:
    """One restore's staged keys. Hour and day counts and sums are folded here and written
    at the end; sketches, replayed minutes and dedupe markers go to Redis in chunks through
    lua/restore_stage.lua. `members` names every staged key (restore.lua checks them)."""

    def __init__(self, redis: RedisClient, scripts: Scripts, keys: ProjectKeys, token: str) -> None:
        self.redis = redis
        self.scripts = scripts
        self.keys = keys
        self.token = token
        self.members: set[str] = set()
        self.cells: dict[Target, dict[str, list[int]]] = defaultdict(dict)
        self.markers = 0
        self._ops: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
        """Queued sketches, increments, uid adds and markers (replaced by each flush)."""
        self._n = 0
        self._bytes = 0

    async def _queued(self, n: int, size: int = 0) -> None:
        self._n += n
        self._bytes += size
        if self._n >= STAGE_OPS or self._bytes >= STAGE_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Sends the queued operations (one restore_stage.lua call)."""
        if not self._n:
            return
        sketches, *rest = self._ops
        blobs = [blob for _, blob in sketches]
        refs = [(member, n) for n, (member, _) in enumerate(sketches, 1)]
        payload = _encoder.encode([refs, *rest])
        self._ops, self._n, self._bytes = ([], [], [], []), 0, 0
        with redis_unavailable():
            set_now = await self.scripts.restore_stage(
                keys=[self.keys.restore_index(self.token), self.keys.tmp(f"restore:{self.token}")],
                args=[
                    self.keys.restore_base(self.token),
                    STAGE_TTL_MS,
                    self.keys.base,
                    payload,
                    *blobs,
                ],
            )
        self.markers += int(set_now)

    async def add_rows(self, rows: list[StoredRow], route: list[list[Target]]) -> None:
        """Adds each stored row to its targets (counts in memory, sketches united in Redis)."""
        for row, targets in zip(rows, route, strict=True):
            for grain, bucket in targets:
                cell = self.cells[(grain, bucket)].setdefault(row.field, [0, 0])
                cell[0] += row.count
                cell[1] += row.sum_micros
                if row.hll is not None:
                    member = restore_member(grain, bucket, row.field)
                    self.members.add(member)
                    self._ops[0].append((member, row.hll))
                    await self._queued(1, len(row.hll))

    async def add_hot_minutes(self, events: list[RawEvent], crosstabs: Sequence[Rollup]) -> None:
        """Stages events into their minutes as ingest.lua writes a hot minute: HINCRBY of
        count and (non-zero) sum, PFADD of the uids."""
        for bucket_s, field, count, total, uids in plan_batch(
            events, crosstabs, dim_values=False
        ).groups:
            member = restore_member(Grain.minute, int(bucket_s))
            self.members.add(member)
            self._ops[1].append((member, count_field(field), str(count)))
            if total != "0":
                self._ops[1].append((member, sum_field(field), total))
            if uids:
                sketch = restore_member(Grain.minute, int(bucket_s), field)
                self.members.add(sketch)
                self._ops[2].append((sketch, *uids))
            await self._queued(2 + len(uids))

    async def add_marker(self, token: str, ttl_ms: int) -> None:
        """Queues the dedupe marker of one event_id_token (set NX, so a live one is left
        alone)."""
        self._ops[3].append((token, ttl_ms))
        await self._queued(1)

    async def finish(self) -> None:
        """Writes the folded hour and day counts and sums, then flushes everything queued."""
        for (grain, bucket), fields in self.cells.items():
            member = restore_member(grain, bucket)
            self.members.add(member)
            for field, (count, total) in fields.items():
                self._ops[1].append((member, count_field(field), str(count)))
                if total:
                    self._ops[1].append((member, sum_field(field), str(total)))
                await self._queued(2)
        await self.flush()

    async def discard(self) -> None:
        """Deletes whatever was staged (best effort: the TTL removes the rest)."""
        base = self.keys.restore_base(self.token)
        names = [base + m for m in self.members]
        with redis_unavailable():
            for start in range(0, len(names), ROW_CHUNK):
                await self.redis.delete(*names[start : start + ROW_CHUNK])
            await self.redis.delete(
                self.keys.restore_index(self.token), self.keys.tmp(f"restore:{self.token}")
            )


async def _stage_rollups(conn: Conn, stage: _Stage, state: PersistState) -> None:
    """Stages every unsealed hour's and day's persisted part from the rows in the snapshot."""
    project = stage.keys.project
    hour_from, day_minutes_from, day_hours_until = _targets(state)
    low = min(hour_from, day_minutes_from)
    async for rows in rollup_rows(conn, project, Grain.minute, low, state.minute_until, ROW_CHUNK):
        route: list[list[Target]] = []
        for row in rows:
            targets: list[Target] = []
            if row.bucket >= hour_from:
                targets.append((Grain.hour, bucket_start(row.bucket, Grain.hour)))
            if row.bucket >= day_minutes_from:
                targets.append((Grain.day, bucket_start(row.bucket, Grain.day)))
            route.append(targets)
        await stage.add_rows(rows, route)
    async for rows in rollup_rows(
        conn, project, Grain.hour, state.day_until, day_hours_until, ROW_CHUNK
    ):
        await stage.add_rows(rows, [[(Grain.day, bucket_start(r.bucket, Grain.day))] for r in rows])


async def _stage_unpersisted(
    conn: Conn, stage: _Stage, state: PersistState, settings: Settings, now_ms: int
) -> int:
    """Stages the raw log's events of minutes Postgres's rollups do not hold yet (at or after
    minute_until; only those whose hour and day are unsealed, which is every one unless the
    state is damaged). Returns how many events."""
    start = max(state.minute_until, now_ms - (settings.max_event_age_days + 1) * DAY_MS)
    end = now_ms + settings.max_future_seconds * 1000 + DAY_MS
    replayed = 0
    project = stage.keys.project
    async for batch in raw_batches(
        conn, project, start, end, state.raw_stream_id, None, rows=ROW_CHUNK
    ):
        events = [ev for ev in batch if ev.ts >= state.hour_until and ev.ts >= state.day_until]
        await stage.add_hot_minutes(events, settings.crosstabs)
        replayed += len(events)
    return replayed


async def _stage_dedupe(conn: Conn, stage: _Stage, settings: Settings, now_ms: int) -> None:
    """Queues the dedupe marker of every event id the raw log received within the dedupe
    window before now_ms, expiring when the original would have (received + window)."""
    window = settings.dedupe_window_seconds * 1000
    since = now_ms - window
    oldest_ts = since - settings.max_event_age_days * DAY_MS
    async for chunk in recent_event_ids(conn, stage.keys.project, since, oldest_ts, ROW_CHUNK):
        for rid in chunk:
            ttl = rid.received_ms + window - now_ms
            if ttl > 0:
                await stage.add_marker(event_id_token(rid.name, rid.event_id), ttl)


async def _restore_once(
    pool: asyncpg.Pool,
    redis: RedisClient,
    scripts: Scripts,
    settings: Settings,
    clock: Clock,
    keys: ProjectKeys,
) -> int:
    """One staged restore; lua/restore.lua's answer (1 restored, 0 lost the race, -1 stale)."""
    started = time.monotonic()
    stage = _Stage(redis, scripts, keys, uuid.uuid4().hex)
    try:
        async with restore_snapshot(pool, keys.project) as (conn, state):
            now = clock.now_ms()
            await _stage_dedupe(conn, stage, settings, now)
            replayed = await _stage_unpersisted(conn, stage, state, settings, now)
            await _stage_rollups(conn, stage, state)
            await stage.finish()
        with redis_unavailable():
            outcome = int(
                await scripts.restore(
                    keys=[keys.watermarks, keys.restore_index(stage.token)],
                    args=[
                        state.minute_until,
                        state.hour_until,
                        state.day_until,
                        state.late_applied + 1,
                        state.raw_stream_id,
                        keys.base,
                        keys.restore_base(stage.token),
                        len(stage.members),
                    ],
                )
            )
    except BaseException:
        try:
            await stage.discard()
        except Unavailable:
            pass
        raise
    if outcome == 1:
        # reads cached before the loss hold rows of buckets Redis no longer has
        await bump_history(redis, keys)
        log.warning(
            "restored %s from Postgres: %d hour/day buckets, %d staged keys, %d events of"
            " unpersisted minutes, %d dedupe markers in %.2f s",
            keys.project,
            len(stage.cells),
            len(stage.members),
            replayed,
            stage.markers,
            time.monotonic() - started,
        )
    return outcome


async def restore_watermarks(
    pool: asyncpg.Pool,
    redis: RedisClient,
    scripts: Scripts,
    settings: Settings,
    clock: Clock,
    project: str,
    *,
    lock_held: bool = False,
) -> bool:
    """Ensures Redis holds the project's watermarks. When Redis lost them, restores, before
    ingest and sealing can run again and exactly once however many processes try at the
    same time: the unsealed hours' and days' persisted parts, the dedupe markers of the
    window, then the watermarks (the late generation restarts after the last one applied).
    The restore runs under the project's persister lock (taken here unless the caller holds
    it), so it never reads Postgres while a persister pass that began before the loss is
    still committing. Returns True when this call restored. Raises Unavailable naming the
    backend down."""
    keys = ProjectKeys(settings.key_prefix, project)
    with redis_unavailable():
        if await redis.exists(keys.watermarks):
            return False
    if lock_held:
        return await _restore_locked(pool, redis, scripts, settings, clock, keys)
    with postgres_unavailable():
        async with pool.acquire() as conn:
            async with project_lock(conn, project, wait=True):
                return await _restore_locked(pool, redis, scripts, settings, clock, keys)


async def _restore_locked(
    pool: asyncpg.Pool,
    redis: RedisClient,
    scripts: Scripts,
    settings: Settings,
    clock: Clock,
    keys: ProjectKeys,
) -> bool:
    with redis_unavailable():
        if await redis.exists(keys.watermarks):
            return False  # restored by another process while this one waited for the lock
    for _ in range(_ATTEMPTS):
        outcome = await _restore_once(pool, redis, scripts, settings, clock, keys)
        if outcome >= 0:
            return outcome == 1
    raise Unavailable("redis", "restore: staged keys kept expiring before they were used")


@dataclass
class RestoreGate:
    """One restore per project at a time in this process: callers that meet missing
    watermarks while a restore of the project runs wait for it instead of reading and
    staging the whole persisted part again (the script still lets only one restorer of
    all processes take effect)."""

    pool: asyncpg.Pool
    redis: RedisClient
    scripts: Scripts
    settings: Settings
    clock: Clock
    _locks: dict[str, asyncio.Lock] = dataclasses.field(default_factory=dict)

    async def restore(self, project: str, *, lock_held: bool = False) -> bool:
        """restore_watermarks for one project, single-flight; True when this call restored.
        lock_held: the caller holds the project's persister lock already."""
        if lock_held:
            # the caller (a persister pass) holds the project's lock: requests waiting in
            # the gate wait for that lock in turn, so taking the gate here could deadlock
            return await self._restore(project, lock_held=True)
        async with self._locks.setdefault(project, asyncio.Lock()):
            return await self._restore(project, lock_held=False)

    async def _restore(self, project: str, *, lock_held: bool) -> bool:
        return await restore_watermarks(
            self.pool,
            self.redis,
            self.scripts,
            self.settings,
            self.clock,
            project,
            lock_held=lock_held,
        )
