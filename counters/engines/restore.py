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

Hashes and sketches are staged under restore:<token>: keys (chunked writes, with a TTL);
lua/restore.lua then moves them into place and writes the watermarks in one atomic step,
only if the watermarks are still missing, so concurrent restorers add the persisted part
once (the losers' staged keys are deleted).

What cannot come back: events acknowledged but not yet in Postgres when Redis was lost
without its AOF (their minute, late generation and raw-log entry lived in Redis only);
durable_ack bounds that to nothing a kill -9 can lose, not a lost volume.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import asyncpg
from redis.asyncio import Redis

from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.grouping import plan_batch
from counters.core.models import RawEvent
from counters.core.rollups import Rollup
from lua import Scripts
from lua.client import redis_unavailable
from lua.keys import ProjectKeys, count_field, restore_member, sum_field
from persist.db import Conn
from persist.rawlog import raw_batches
from persist.restore_reads import StoredRow, recent_event_ids, restore_snapshot, rollup_rows
from persist.state import PersistState

log = logging.getLogger("counters.restore")

STAGE_TTL_MS = 3_600_000
"""Lifetime of a restore's staged keys (a restorer that dies leaves nothing for long)."""
ROW_CHUNK = 1000
"""Postgres rows fetched, and sketches staged in one Redis pipeline, at a time."""
FIELD_CHUNK = 2000
"""Hash fields per staged HSET."""
ID_CHUNK = 5000
"""Dedupe markers per Redis pipeline."""
_ATTEMPTS = 3

Target = tuple[Grain, int]


def _targets(state: PersistState) -> tuple[int, int, int]:
    """(hour_from, day_minutes_from, day_hours_until): minute rows at or after hour_from go to
    their hour; minute rows at or after day_minutes_from, and hour rows of [day_until,
    day_hours_until), go to their day."""
    m, h, d = state.minute_until, state.hour_until, state.day_until
    day_hours_until = min(h, bucket_start(m, Grain.hour))
    return h, max(d, day_hours_until), day_hours_until


class _Stage:
    """One restore's staged keys: counts and sums folded here, sketches merged in Redis."""

    def __init__(self, redis: Redis, keys: ProjectKeys, token: str) -> None:
        self.redis = redis
        self.keys = keys
        self.token = token
        self.members: set[str] = set()
        self.cells: dict[Target, dict[str, list[int]]] = defaultdict(dict)
        self.scratch = keys.tmp(f"restore:{token}")

    async def add(self, rows: list[StoredRow], route: list[list[Target]]) -> None:
        """Adds each row to its targets (counts in memory, sketches in Redis)."""
        pipe = self.redis.pipeline(transaction=False)
        for row, targets in zip(rows, route, strict=True):
            for target in targets:
                cell = self.cells[target].setdefault(row.field, [0, 0])
                cell[0] += row.count
                cell[1] += row.sum_micros
                if row.hll is not None:
                    self._queue_hll(pipe, target, row.field, row.hll)
        if len(pipe):
            with redis_unavailable():
                await pipe.execute()

    def _queue_hll(self, pipe: Any, target: Target, field: str, blob: bytes) -> None:
        grain, bucket = target
        member = restore_member(grain, bucket, field)
        staged = self.keys.restore_hll(self.token, grain, bucket, field)
        if member not in self.members:
            self.members.add(member)
            pipe.set(staged, blob, px=STAGE_TTL_MS)
            pipe.sadd(self.keys.restore_index(self.token), member)
            pipe.pexpire(self.keys.restore_index(self.token), STAGE_TTL_MS)
        else:
            pipe.set(self.scratch, blob, px=STAGE_TTL_MS)
            pipe.pfmerge(staged, self.scratch)

    async def add_hot_minutes(self, events: list[RawEvent], crosstabs: Sequence[Rollup]) -> None:
        """Stages events into their minutes as ingest.lua writes a hot minute: HINCRBY of
        count and (non-zero) sum, PFADD of the uids."""
        pipe = self.redis.pipeline(transaction=False)
        index = self.keys.restore_index(self.token)
        for bucket_s, field, count, total, uids in plan_batch(
            events, crosstabs, dim_values=False
        ).groups:
            bucket = int(bucket_s)
            staged = self.keys.restore_hot(self.token, Grain.minute, bucket)
            pipe.hincrby(staged, count_field(field), count)
            if total != "0":
                pipe.hincrby(staged, sum_field(field), int(total))
            pipe.pexpire(staged, STAGE_TTL_MS)
            members = [restore_member(Grain.minute, bucket)]
            if uids:
                sketch = self.keys.restore_hll(self.token, Grain.minute, bucket, field)
                pipe.pfadd(sketch, *uids)
                pipe.pexpire(sketch, STAGE_TTL_MS)
                members.append(restore_member(Grain.minute, bucket, field))
            for member in members:
                if member not in self.members:
                    self.members.add(member)
                    pipe.sadd(index, member)
            pipe.pexpire(index, STAGE_TTL_MS)
        if len(pipe):
            with redis_unavailable():
                await pipe.execute()

    async def flush_hashes(self) -> None:
        """Writes the folded counts and sums as staged hashes, FIELD_CHUNK fields a call."""
        index = self.keys.restore_index(self.token)
        with redis_unavailable():
            for (grain, bucket), fields in self.cells.items():
                staged = self.keys.restore_hot(self.token, grain, bucket)
                mapping: dict[str, int] = {}
                for field, (count, total) in fields.items():
                    mapping[count_field(field)] = count
                    if total:
                        mapping[sum_field(field)] = total
                items = list(mapping.items())
                for start in range(0, len(items), FIELD_CHUNK):
                    pipe = self.redis.pipeline(transaction=False)
                    pipe.hset(staged, mapping=dict(items[start : start + FIELD_CHUNK]))
                    pipe.pexpire(staged, STAGE_TTL_MS)
                    await pipe.execute()
                self.members.add(restore_member(grain, bucket))
                await self.redis.sadd(index, restore_member(grain, bucket))
                await self.redis.pexpire(index, STAGE_TTL_MS)
            await self.redis.delete(self.scratch)

    async def discard(self) -> None:
        """Deletes whatever was staged (best effort: the TTL removes the rest)."""
        base = self.keys.restore_base(self.token)
        names = [base + m for m in self.members]
        with redis_unavailable():
            for start in range(0, len(names), FIELD_CHUNK):
                await self.redis.delete(*names[start : start + FIELD_CHUNK])
            await self.redis.delete(self.keys.restore_index(self.token), self.scratch)


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
        await stage.add(rows, route)
    async for rows in rollup_rows(
        conn, project, Grain.hour, state.day_until, day_hours_until, ROW_CHUNK
    ):
        await stage.add(rows, [[(Grain.day, bucket_start(r.bucket, Grain.day))] for r in rows])
    await stage.flush_hashes()


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


async def restore_dedupe(
    conn: Conn, redis: Redis, keys: ProjectKeys, settings: Settings, now_ms: int
) -> int:
    """Sets the dedupe marker of every event id the raw log received within the dedupe
    window before now_ms, expiring when the original would have (received + window);
    markers that exist are left alone. Returns how many were set."""
    window = settings.dedupe_window_seconds * 1000
    since = now_ms - window
    oldest_ts = since - settings.max_event_age_days * DAY_MS
    written = 0
    async for chunk in recent_event_ids(conn, keys.project, since, oldest_ts, ID_CHUNK):
        pipe = redis.pipeline(transaction=False)
        for rid in chunk:
            ttl = rid.received_ms + window - now_ms
            if ttl > 0:
                pipe.set(keys.event_id(rid.event_id), "1", px=ttl, nx=True)
                written += 1
        if len(pipe):
            with redis_unavailable():
                await pipe.execute()
    return written


async def _restore_once(
    pool: asyncpg.Pool,
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    clock: Clock,
    keys: ProjectKeys,
) -> int:
    """One staged restore; lua/restore.lua's answer (1 restored, 0 lost the race, -1 stale)."""
    started = time.monotonic()
    stage = _Stage(redis, keys, uuid.uuid4().hex)
    try:
        async with restore_snapshot(pool, keys.project) as (conn, state):
            now = clock.now_ms()
            markers = await restore_dedupe(conn, redis, keys, settings, now)
            replayed = await _stage_unpersisted(conn, stage, state, settings, now)
            await _stage_rollups(conn, stage, state)
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
        log.warning(
            "restored %s from Postgres: %d hour/day buckets, %d staged keys, %d events of"
            " unpersisted minutes, %d dedupe markers in %.2f s",
            keys.project,
            len(stage.cells),
            len(stage.members),
            replayed,
            markers,
            time.monotonic() - started,
        )
    return outcome


async def restore_watermarks(
    pool: asyncpg.Pool,
    redis: Redis,
    scripts: Scripts,
    settings: Settings,
    clock: Clock,
    project: str,
) -> bool:
    """Ensures Redis holds the project's watermarks. When Redis lost them, restores, before
    ingest and sealing can run again and exactly once however many processes try at the
    same time: the unsealed hours' and days' persisted parts, the dedupe markers of the
    window, then the watermarks (the late generation restarts after the last one applied).
    Returns True when this call restored. Raises Unavailable naming the backend down."""
    keys = ProjectKeys(settings.key_prefix, project)
    with redis_unavailable():
        if await redis.exists(keys.watermarks):
            return False
    for _ in range(_ATTEMPTS):
        outcome = await _restore_once(pool, redis, scripts, settings, clock, keys)
        if outcome >= 0:
            return outcome == 1
    raise Unavailable("redis", "restore: staged keys kept expiring before they were used")
