"""The persister: seal closed buckets in Redis, copy them to Postgres, apply late deltas,
copy the raw log. Follows the seal-then-copy protocol of DESIGN.md; every step may be
re-run after a crash at any point without double counting."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

import asyncpg
import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from counters.core.buckets import DAY_MS, GRAINS, Grain, bucket_start, to_datetime
from counters.core.clock import Clock
from counters.core.config import Settings
from counters.core.errors import Unavailable
from counters.core.models import RawEvent
from counters.core.rollups import decode_field
from counters.engines.retention import apply_retention
from counters.metrics import Metrics
from lua import Scripts
from lua.keys import US, ProjectKeys
from persist.db import Conn
from persist.projects import list_projects
from persist.state import UNTIL_COLUMN, load_state, restore_watermarks

log = logging.getLogger("counters.persister")

PROJECT_LOCK_CLASS = 7_412_002
PARTITION_LOCK = 7_412_003
COPY_CHUNK_BUCKETS = 50
RETENTION_EVERY_SECONDS = 3600.0
MAX_BACKOFF_SECONDS = 5.0
"""Longest wait between tries while a backend is down (catch-up starts within it)."""
SEAL_MERGE_BUDGET = 20_000
"""Uniques sketches one seal call merges from minutes into hours and days (bounds how long
it holds Redis: a catch-up after an outage seals in steps)."""
RAW_CHUNK_ENTRIES = 10
"""Raw-log stream entries (each a whole batch, up to 10,000 events) copied per transaction:
small enough that one XRANGE reply stays a few MB while ingest scripts run in between."""
TABLE = {Grain.minute: "rollups_minute", Grain.hour: "rollups_hour", Grain.day: "rollups_day"}
STAGE_COLUMNS = ["project", "name", "rollup", "dims", "bucket", "count", "sum_micros", "hll"]
RAW_COLUMNS = [
    "project",
    "ts",
    "name",
    "event_id",
    "dims",
    "value_micros",
    "uid",
    "received_at",
    "stream_id",
    "seq",
]

_raw_batch = msgspec.msgpack.Decoder(list[RawEvent])
_json = msgspec.json.Encoder()

Record = tuple[Any, ...]


def stream_key(stream_id: str) -> tuple[int, int]:
    """Orderable form of a Redis stream id `ms-seq`."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


@contextlib.asynccontextmanager
async def project_lock(conn: Conn, project: str, *, wait: bool) -> AsyncIterator[bool]:
    """Holds the project's persister lock (a session advisory lock) for the block; yields
    whether it is held (always True with wait=True)."""
    if wait:
        await conn.execute("SELECT pg_advisory_lock($1, hashtext($2))", PROJECT_LOCK_CLASS, project)
        held = True
    else:
        held = bool(
            await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))", PROJECT_LOCK_CLASS, project
            )
        )
    try:
        yield held
    finally:
        if held:
            await conn.execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))", PROJECT_LOCK_CLASS, project
            )


class Cut(msgspec.Struct, frozen=True):
    """A consistent cut: late generations up to last_gen, watermarks, raw-log position."""

    last_gen: int
    sealed: dict[Grain, int]
    stream_id: str


class ProjectReport(msgspec.Struct):
    """What one pass did for one project."""

    buckets_copied: int = 0
    late_generations: int = 0
    raw_events: int = 0


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def rollup_record(
    project: str, field: str, bucket: int, count: int, total: int, hll: bytes | None
) -> Record:
    """One rollup row, in STAGE_COLUMNS order."""
    name, rollup, values = decode_field(field)
    return (project, name, ",".join(rollup), list(values), to_datetime(bucket), count, total, hll)


async def _stage(conn: Conn, records: list[Record]) -> None:
    await conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS stage_rollups ("
        " project text, name text, rollup text, dims text[], bucket timestamptz,"
        " count bigint, sum_micros bigint, hll bytea) ON COMMIT DELETE ROWS"
    )
    await conn.copy_records_to_table("stage_rollups", records=records, columns=STAGE_COLUMNS)


async def upsert_rollups(
    conn: Conn, grain: Grain, records: list[Record], *, additive: bool
) -> None:
    """Writes rollup rows inside the caller's transaction: absolute values (a sealed bucket's
    copy) or added to what is there (late deltas; hll is then the already-merged sketch)."""
    if not records:
        return
    await _stage(conn, records)
    table = TABLE[grain]
    if additive:
        update = (
            "count = r.count + EXCLUDED.count, sum_micros = r.sum_micros + EXCLUDED.sum_micros,"
            " hll = COALESCE(EXCLUDED.hll, r.hll)"
        )
    else:
        update = "count = EXCLUDED.count, sum_micros = EXCLUDED.sum_micros, hll = EXCLUDED.hll"
    await conn.execute(
        f"INSERT INTO {table} AS r SELECT * FROM stage_rollups"
        f" ON CONFLICT (project, name, rollup, dims, bucket) DO UPDATE SET {update}"
    )
    await conn.execute("TRUNCATE stage_rollups")


class Persister:
    """Drains every project's closed buckets, late deltas and raw log into Postgres."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        redis: Redis,
        scripts: Scripts,
        settings: Settings,
        clock: Clock,
        metrics: Metrics,
    ) -> None:
        self.pool = pool
        self.redis = redis
        self.scripts = scripts
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self._partitions: set[int] = set()
        self._retention_due = 0.0

    # -- the loop -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Passes over all projects every persist_interval until stop is set; backs off while
        a backend is down and catches up when it returns."""
        delay = self.settings.persist_interval_seconds
        while not stop.is_set():
            try:
                await self.tick()
                delay = self.settings.persist_interval_seconds
            except (RedisError, OSError) as exc:
                backend = "redis" if isinstance(exc, RedisError) else "postgres"
                self.metrics.persister_errors.labels(backend).inc()
                log.warning("persister: %s unavailable: %s", backend, exc)
                if backend == "postgres":
                    await self.pool.expire_connections()
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
            except (
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
                asyncpg.InternalClientError,
            ) as exc:
                self.metrics.persister_errors.labels("postgres").inc()
                log.warning("persister: postgres unavailable: %s", exc)
                await self.pool.expire_connections()
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
            except Unavailable as exc:
                self.metrics.persister_errors.labels(exc.backend).inc()
                log.warning("persister: %s", exc.message)
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
            except Exception:  # the loop must outlive any single bad pass
                self.metrics.persister_errors.labels("other").inc()
                log.exception("persister: pass failed")
                delay = min(max(delay * 2, 0.5), MAX_BACKOFF_SECONDS)
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def tick(self) -> dict[str, ProjectReport]:
        """One pass over every project; returns what it did per project it held the lock of.
        Applies retention at most once an hour."""
        async with self.pool.acquire() as conn:
            projects = await list_projects(conn)
            if time.monotonic() >= self._retention_due:
                done = await apply_retention(
                    conn,
                    self.clock.now_ms(),
                    raw_days=self.settings.raw_retention_days,
                    minute_days=self.settings.minute_retention_days,
                )
                if done is not None:
                    self._retention_due = time.monotonic() + RETENTION_EVERY_SECONDS
                    self._partitions.clear()
                    if done.dropped_partitions or done.minute_rows_deleted:
                        log.info(
                            "retention: dropped %s, deleted %d minute rows",
                            ", ".join(done.dropped_partitions) or "no partitions",
                            done.minute_rows_deleted,
                        )
        reports: dict[str, ProjectReport] = {}
        lag = 0.0
        backlog = 0
        for project in projects:
            report = await self.persist_project(project)
            if report is not None:
                reports[project] = report
            keys = ProjectKeys(self.settings.key_prefix, project)
            rawn = await self.redis.hget(keys.watermarks, "rawn")
            backlog += int(rawn or 0)
            async with self.pool.acquire() as conn:
                state = await load_state(conn, project)
            sealable = bucket_start(
                self.clock.now_ms() - int(self.settings.grace_seconds * 1000), Grain.minute
            )
            lag = max(lag, (sealable - state.minute_until) / 1000)
        self.metrics.persister_lag.set(lag)
        self.metrics.raw_backlog.set(backlog)
        return reports

    async def persist_project(self, project: str) -> ProjectReport | None:
        """Runs the protocol once for one project, unless another persister holds it (None)."""
        async with self.pool.acquire() as conn:
            async with project_lock(conn, project, wait=False) as held:
                if not held:
                    return None
                return await self.run_protocol(conn, ProjectKeys(self.settings.key_prefix, project))

    async def run_protocol(self, conn: Conn, keys: ProjectKeys) -> ProjectReport:
        """The seal-then-copy protocol, in DESIGN.md's order; the caller holds the lock."""
        await restore_watermarks(
            self.pool, self.redis, self.scripts, self.settings.key_prefix, keys.project
        )
        report = ProjectReport()
        # 1. finish buckets sealed earlier but not yet copied
        report.buckets_copied += await self._copy_sealed(conn, keys)
        # 2. late deltas: every bucket they touch is now in Postgres
        report.late_generations += await self._drain_late(conn, keys)
        # 3. seal what has closed since, and copy it
        await self._seal(keys)
        report.buckets_copied += await self._copy_sealed(conn, keys)
        # 4. the raw log
        report.raw_events += await self._copy_raw(conn, keys)
        return report

    async def drain_to_cut(self, conn: Conn, keys: ProjectKeys) -> Cut:
        """Takes a cut of the project's write stream and brings Postgres exactly to it: every
        bucket below the cut's watermarks then holds exactly the events of the raw log up to
        the cut's stream id (all of which are in raw_events). The caller holds the lock."""
        await restore_watermarks(
            self.pool, self.redis, self.scripts, self.settings.key_prefix, keys.project
        )
        reply = await self.scripts.cut(keys=[keys.watermarks, keys.raw])
        if _s(reply[0]) == "NOWM":  # pragma: no cover - restored just above
            raise RuntimeError("watermarks vanished during the cut")
        cut = Cut(
            last_gen=int(reply[0]),
            sealed={g: int(v) for g, v in zip(GRAINS, reply[1:4], strict=True)},
            stream_id=_s(reply[4]),
        )
        await self._copy_sealed(conn, keys)
        state = await load_state(conn, keys.project)
        for gen in range(state.late_applied + 1, cut.last_gen + 1):
            await self._apply_late_generation(conn, keys, gen)
        while stream_key(state.raw_stream_id) < stream_key(cut.stream_id):
            if not await self._copy_raw(conn, keys):
                break
            state = await load_state(conn, keys.project)
        return cut

    # -- seal and copy --------------------------------------------------------------------

    async def _seal(self, keys: ProjectKeys) -> None:
        edge = self.clock.now_ms() - int(self.settings.grace_seconds * 1000)
        await self.scripts.seal(
            keys=[keys.watermarks, keys.dirty(Grain.minute)],
            args=[*(bucket_start(edge, g) for g in GRAINS), keys.base, SEAL_MERGE_BUDGET],
        )

    async def _copy_sealed(self, conn: Conn, keys: ProjectKeys) -> int:
        sealed = cast(list[bytes | None], await self.redis.hmget(keys.watermarks, ["m", "h", "d"]))
        if any(v is None for v in sealed):
            return 0
        state = await load_state(conn, keys.project)
        copied = 0
        for grain, raw_until in zip(GRAINS, sealed, strict=True):
            redis_until = int(raw_until or 0)
            pg_until = state.until(grain)
            members = cast(
                list[bytes],
                await self.redis.zrangebyscore(keys.dirty(grain), "-inf", f"({redis_until}"),
            )
            buckets = sorted(int(m) for m in members)
            for bucket in (b for b in buckets if b < pg_until):
                await self._release(keys, grain, bucket, None)
            todo = [b for b in buckets if b >= pg_until]
            for start in range(0, len(todo), COPY_CHUNK_BUCKETS):
                chunk = todo[start : start + COPY_CHUNK_BUCKETS]
                after = start + COPY_CHUNK_BUCKETS
                new_until = todo[after] if after < len(todo) else redis_until
                hot = await self._read_hot(keys, grain, chunk)
                async with conn.transaction():
                    await upsert_rollups(conn, grain, hot.records, additive=False)
                    await conn.execute(
                        f"UPDATE persist_state SET {UNTIL_COLUMN[grain]} = $2, updated_at = now()"
                        f" WHERE project = $1",
                        keys.project,
                        new_until,
                    )
                for bucket in chunk:
                    await self._release(keys, grain, bucket, hot.fields[bucket])
                copied += len(chunk)
                self.metrics.buckets_drained.labels(grain.name).inc(len(chunk))
            if not todo and pg_until < redis_until:
                await conn.execute(
                    f"UPDATE persist_state SET {UNTIL_COLUMN[grain]} = $2, updated_at = now()"
                    f" WHERE project = $1 AND {UNTIL_COLUMN[grain]} < $2",
                    keys.project,
                    redis_until,
                )
        return copied

    class _Hot(msgspec.Struct):
        records: list[Record]
        fields: dict[int, list[str]]

    async def _read_hot(self, keys: ProjectKeys, grain: Grain, buckets: Sequence[int]) -> _Hot:
        """Absolute rows of sealed (immutable) buckets, as Redis holds them."""
        pipe = self.redis.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hgetall(keys.hot(grain, bucket))
        hashes: list[dict[bytes, bytes]] = await pipe.execute()
        per_bucket: dict[int, dict[str, list[int]]] = {}
        for bucket, h in zip(buckets, hashes, strict=True):
            acc: dict[str, list[int]] = defaultdict(lambda: [0, 0])
            for k, v in h.items():
                kind, field = _s(k).split(US, 1)
                acc[field][0 if kind == "c" else 1] = int(v)
            per_bucket[bucket] = acc
        pipe = self.redis.pipeline(transaction=False)
        order: list[tuple[int, str]] = []
        for bucket, acc in per_bucket.items():
            for field in acc:
                order.append((bucket, field))
                pipe.get(keys.hll(grain, bucket, field))
        blobs = await pipe.execute() if order else []
        records: list[Record] = []
        for (bucket, field), blob in zip(order, blobs, strict=True):
            count, total = per_bucket[bucket][field]
            records.append(rollup_record(keys.project, field, bucket, count, total, blob))
        return self._Hot(records, {b: list(acc) for b, acc in per_bucket.items()})

    async def _release(
        self, keys: ProjectKeys, grain: Grain, bucket: int, fields: list[str] | None
    ) -> None:
        """Lets Redis forget a bucket Postgres holds: its keys expire after a delay (reads in
        flight may still use them), then it leaves the dirty index."""
        hot = keys.hot(grain, bucket)
        if fields is None:
            fields = sorted({_s(k).split(US, 1)[1] for k in await self.redis.hkeys(hot)})
        keep = self.settings.keep_after_copy_seconds
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(hot, keep)
        for field in fields:
            pipe.expire(keys.hll(grain, bucket, field), keep)
        pipe.zrem(keys.dirty(grain), str(bucket))
        await pipe.execute()

    # -- late deltas ----------------------------------------------------------------------

    async def _drain_late(self, conn: Conn, keys: ProjectKeys) -> int:
        open_gen = int(await self.scripts.rotate_late(keys=[keys.watermarks], args=[keys.base]))
        if open_gen < 0:
            return 0
        state = await load_state(conn, keys.project)
        drained = 0
        for gen in range(state.late_applied + 1, open_gen):
            await self._apply_late_generation(conn, keys, gen)
            drained += 1
        return drained

    async def _apply_late_generation(self, conn: Conn, keys: ProjectKeys, gen: int) -> None:
        deltas = await self.redis.hgetall(keys.late(gen))
        hll_members = sorted(_s(m) for m in await self.redis.smembers(keys.late_hll_index(gen)))
        rows: dict[tuple[Grain, int, str], list[Any]] = {}
        for k, v in deltas.items():
            grain_s, bucket_s, kind_field = _s(k).split(":", 2)
            kind, field = kind_field.split(US, 1)
            g = Grain[{"m": "minute", "h": "hour", "d": "day"}[grain_s]]
            row = rows.setdefault((g, int(bucket_s), field), [0, 0, None])
            row[0 if kind == "c" else 1] += int(v)
        for member in hll_members:
            grain_s, bucket_s, field = member.split(":", 2)
            g = Grain[{"m": "minute", "h": "hour", "d": "day"}[grain_s]]
            rows.setdefault((g, int(bucket_s), field), [0, 0, None])
            merged = await self._merged_hll(conn, keys, gen, g, int(bucket_s), field)
            rows[(g, int(bucket_s), field)][2] = merged
        by_grain: dict[Grain, list[Record]] = defaultdict(list)
        for (g, bucket, field), (count, total, hll) in rows.items():
            by_grain[g].append(rollup_record(keys.project, field, bucket, count, total, hll))
        async with conn.transaction():
            state = await load_state(conn, keys.project, for_update=True)
            if state.late_applied >= gen:
                return
            for g, records in by_grain.items():
                await upsert_rollups(conn, g, records, additive=True)
            await conn.execute(
                "UPDATE persist_state SET late_applied = $2, updated_at = now() WHERE project = $1",
                keys.project,
                gen,
            )
        self.metrics.late_applied.inc(len(rows))
        keep = self.settings.keep_after_copy_seconds
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(keys.late(gen), keep)
        pipe.expire(keys.late_hll_index(gen), keep)
        for member in hll_members:
            grain_s, bucket_s, field = member.split(":", 2)
            g = Grain[{"m": "minute", "h": "hour", "d": "day"}[grain_s]]
            pipe.expire(keys.late_hll(gen, g, int(bucket_s), field), keep)
        await pipe.execute()

    async def _merged_hll(
        self,
        conn: Conn,
        keys: ProjectKeys,
        gen: int,
        grain: Grain,
        bucket: int,
        field: str,
    ) -> bytes | None:
        """Union of the Postgres sketch and the late sketch (idempotent: a union)."""
        name, rollup, values = decode_field(field)
        existing = await conn.fetchval(
            f"SELECT hll FROM {TABLE[grain]} WHERE project = $1 AND name = $2 AND rollup = $3"
            " AND dims = $4 AND bucket = $5",
            keys.project,
            name,
            ",".join(rollup),
            list(values),
            to_datetime(bucket),
        )
        tmp = keys.tmp(uuid.uuid4().hex)
        pipe = self.redis.pipeline(transaction=False)
        if existing is not None:
            pipe.set(tmp, existing, px=60_000)
        pipe.pfmerge(tmp, tmp, keys.late_hll(gen, grain, bucket, field))
        pipe.get(tmp)
        pipe.delete(tmp)
        result = await pipe.execute()
        merged: bytes | None = result[-2]
        return merged

    # -- raw log --------------------------------------------------------------------------

    async def _ensure_partitions(self, conn: Conn, days: set[int]) -> None:
        missing = sorted(days - self._partitions)
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK)
            for day in missing:
                start = to_datetime(day)
                name = "raw_events_" + start.strftime("%Y%m%d")
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF raw_events"
                    f" FOR VALUES FROM ('{start.isoformat()}') TO"
                    f" ('{to_datetime(day + DAY_MS).isoformat()}')"
                )
        self._partitions.update(missing)

    async def _copy_raw(self, conn: Conn, keys: ProjectKeys) -> int:
        copied = 0
        while True:
            state = await load_state(conn, keys.project)
            entries = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                await self.redis.xrange(
                    keys.raw, min=f"({state.raw_stream_id}", max="+", count=RAW_CHUNK_ENTRIES
                ),
            )
            if not entries:
                return copied
            records: list[Record] = []
            days: set[int] = set()
            for sid_raw, fields in entries:
                sid = _s(sid_raw)
                for seq, ev in enumerate(_raw_batch.decode(fields[b"e"])):
                    days.add(ev.ts - ev.ts % DAY_MS)
                    records.append(
                        (
                            keys.project,
                            to_datetime(ev.ts),
                            ev.name,
                            ev.id,
                            _json.encode(ev.dims).decode(),
                            ev.value,
                            ev.uid,
                            to_datetime(ev.received),
                            sid,
                            seq,
                        )
                    )
            last = _s(entries[-1][0])
            await self._ensure_partitions(conn, days)
            async with conn.transaction():
                current = await load_state(conn, keys.project, for_update=True)
                if current.raw_stream_id != state.raw_stream_id:
                    continue
                await conn.copy_records_to_table("raw_events", records=records, columns=RAW_COLUMNS)
                await conn.execute(
                    "UPDATE persist_state SET raw_stream_id = $2, updated_at = now()"
                    " WHERE project = $1",
                    keys.project,
                    last,
                )
            await self.scripts.trim_raw(keys=[keys.raw, keys.watermarks], args=[last])
            copied += len(records)
            self.metrics.raw_copied.inc(len(records))
            if len(entries) < RAW_CHUNK_ENTRIES:
                return copied
