"""Seal and copy: close buckets in Redis (lua/seal.lua), copy sealed buckets to Postgres with
absolute values and the watermark in one transaction, then let Redis forget them.

Re-running any step after a crash is harmless: a sealed bucket is immutable, its copy
overwrites, and a bucket below the Postgres watermark is only released."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import msgspec

from counters.core.buckets import GRAINS, Grain, bucket_start
from counters.core.config import Settings
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.keys import COUNT, ProjectKeys, parse_measure_field
from persist.db import Conn, postgres_unavailable
from persist.rollups import Record, rollup_record, upsert_rollups
from persist.state import load_state, set_until

COPY_CHUNK_BUCKETS = 50
"""Buckets copied per Postgres transaction."""
SEAL_MERGE_BUDGET = 20_000
"""Uniques sketches one seal call merges from minutes into hours and days (bounds how long
it holds Redis: a catch-up after an outage seals in steps)."""


class HotBuckets(msgspec.Struct):
    """Sealed buckets as Redis holds them: their rows, and the fields of each bucket."""

    records: list[Record]
    fields: dict[int, list[str]]


@dataclass(frozen=True)
class Sealer:
    """Seals closed buckets of a project and copies sealed ones into Postgres."""

    redis: RedisClient
    scripts: Scripts
    settings: Settings
    metrics: Metrics

    async def seal(self, keys: ProjectKeys, now_ms: int) -> None:
        """Seals every bucket that closed more than grace_seconds before now_ms (minutes are
        merged into their hours and days, up to SEAL_MERGE_BUDGET sketches per call)."""
        edge = now_ms - int(self.settings.grace_seconds * 1000)
        with redis_unavailable():
            await self.scripts.seal(
                keys=[keys.watermarks, keys.dirty(Grain.minute)],
                args=[*(bucket_start(edge, g) for g in GRAINS), keys.base, SEAL_MERGE_BUDGET],
            )

    async def copy_sealed(self, conn: Conn, keys: ProjectKeys) -> int:
        """Copies every sealed bucket Postgres does not hold yet, advancing each grain's
        Postgres watermark with it; returns the number of buckets copied."""
        with redis_unavailable():
            sealed = cast(
                list[bytes | None], await self.redis.hmget(keys.watermarks, ["m", "h", "d"])
            )
        if any(v is None for v in sealed):
            return 0
        with postgres_unavailable():
            state = await load_state(conn, keys.project)
        copied = 0
        for grain, raw_until in zip(GRAINS, sealed, strict=True):
            redis_until = int(raw_until or 0)
            pg_until = state.until(grain)
            with redis_unavailable():
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
                with postgres_unavailable():
                    async with conn.transaction():
                        await upsert_rollups(conn, grain, hot.records, additive=False)
                        await set_until(conn, keys.project, grain, new_until)
                for bucket in chunk:
                    await self._release(keys, grain, bucket, hot.fields[bucket])
                copied += len(chunk)
                self.metrics.buckets_drained.labels(grain.name).inc(len(chunk))
            if not todo and pg_until < redis_until:
                with postgres_unavailable():
                    await set_until(conn, keys.project, grain, redis_until, forward_only=True)
        return copied

    async def _read_hot(
        self, keys: ProjectKeys, grain: Grain, buckets: Sequence[int]
    ) -> HotBuckets:
        """Absolute rows of sealed (immutable) buckets, as Redis holds them."""
        with redis_unavailable():
            pipe = self.redis.pipeline(transaction=False)
            for bucket in buckets:
                pipe.hgetall(keys.hot(grain, bucket))
            hashes: list[dict[bytes, bytes]] = await pipe.execute()
        per_bucket: dict[int, dict[str, list[int]]] = {}
        for bucket, h in zip(buckets, hashes, strict=True):
            acc: dict[str, list[int]] = {}
            for k, v in h.items():
                measure, field = parse_measure_field(k)
                row = acc.get(field)
                if row is None:
                    acc[field] = row = [0, 0]
                row[0 if measure == COUNT else 1] = int(v)
            per_bucket[bucket] = acc
        order: list[tuple[int, str]] = [
            (bucket, field) for bucket, acc in per_bucket.items() for field in acc
        ]
        blobs: list[bytes | None] = []
        if order:
            with redis_unavailable():
                pipe = self.redis.pipeline(transaction=False)
                for bucket, field in order:
                    pipe.get(keys.hll(grain, bucket, field))
                blobs = await pipe.execute()
        records: list[Record] = []
        for (bucket, field), blob in zip(order, blobs, strict=True):
            count, total = per_bucket[bucket][field]
            records.append(rollup_record(keys.project, field, bucket, count, total, blob))
        return HotBuckets(records, {b: list(acc) for b, acc in per_bucket.items()})

    async def _release(
        self, keys: ProjectKeys, grain: Grain, bucket: int, fields: list[str] | None
    ) -> None:
        """Lets Redis forget a bucket Postgres holds: its keys expire after a delay (reads in
        flight may still use them), then it leaves the dirty index."""
        hot = keys.hot(grain, bucket)
        keep = self.settings.keep_after_copy_seconds
        with redis_unavailable():
            if fields is None:
                fields = sorted({parse_measure_field(k).field for k in await self.redis.hkeys(hot)})
            pipe = self.redis.pipeline(transaction=False)
            pipe.expire(hot, keep)
            for field in fields:
                pipe.expire(keys.hll(grain, bucket, field), keep)
            pipe.zrem(keys.dirty(grain), str(bucket))
            await pipe.execute()
