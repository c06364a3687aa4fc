"""Late generations: deltas for buckets sealed before their events arrived. The open
generation is rotated (lua/rotate_late.lua), then each closed one is added to Postgres
exactly once: its number is recorded with the rows in one transaction, and a generation at
or below persist_state.late_applied is skipped."""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import cast

from counters.core.buckets import MINUTE_MS, Grain
from counters.core.config import Settings
from counters.engines.history_version import queue_bump
from counters.metrics import Metrics
from lua import Scripts
from lua.client import RedisClient, redis_unavailable
from lua.keys import (
    COUNT,
    ProjectKeys,
    parse_late_field,
    parse_late_hll_member,
    parse_measure_field,
)
from persist.db import Conn, postgres_unavailable
from persist.rollups import Record, rollup_hlls, rollup_record, upsert_rollups
from persist.state import load_state, set_late_applied

LateRow = tuple[Grain, int, str]
"""(grain, bucket, rollup field) a late delta is for."""
TMP_TTL_MS = MINUTE_MS
"""Lifetime of the scratch key a Postgres sketch is merged in (deleted right away)."""
HLL_CHUNK = 2_000
"""Late sketches merged per Postgres query and per Redis round trip."""


@dataclass(frozen=True)
class LateApplier:
    """Rotates a project's late generation and adds closed generations to Postgres."""

    redis: RedisClient
    scripts: Scripts
    settings: Settings
    metrics: Metrics

    async def drain(self, conn: Conn, keys: ProjectKeys) -> int:
        """Closes the open generation and applies every closed one not applied yet; returns
        how many it applied. Every bucket a delta touches must be in Postgres already."""
        return await self.apply_closed(conn, keys, await self.rotate(keys))

    async def rotate(self, keys: ProjectKeys) -> int:
        """Closes the open generation (later late events go to a new one); returns the new
        open generation, or -1 when Redis holds no watermarks."""
        with redis_unavailable():
            return int(await self.scripts.rotate_late(keys=[keys.watermarks], args=[keys.base]))

    async def apply_closed(self, conn: Conn, keys: ProjectKeys, open_gen: int) -> int:
        """Applies every generation below open_gen not applied yet; returns how many."""
        if open_gen < 0:
            return 0
        with postgres_unavailable():
            state = await load_state(conn, keys.project)
        drained = 0
        for gen in range(state.late_applied + 1, open_gen):
            await self.apply(conn, keys, gen)
            drained += 1
        return drained

    async def apply(self, conn: Conn, keys: ProjectKeys, gen: int) -> None:
        """Adds one closed generation's deltas (counts, sums; sketches as the union with the
        stored one) to the rollups, unless it was applied already; then replaces the
        project's history version (every cached part read before is stale) and lets its
        keys expire."""
        with redis_unavailable():
            deltas = await self.redis.hgetall(keys.late(gen))
            index = cast(set[bytes], await self.redis.smembers(keys.late_hll_index(gen)))
        members = sorted(index)
        rows: dict[LateRow, list[int]] = {}
        for k, v in deltas.items():
            late = parse_late_field(k)
            measure, field = parse_measure_field(late.rest)
            row = rows.setdefault((late.grain, late.bucket, field), [0, 0])
            row[0 if measure == COUNT else 1] += int(v)
        cells: list[LateRow] = [
            (c.grain, c.bucket, c.rest) for c in map(parse_late_hll_member, members)
        ]
        for cell in cells:
            rows.setdefault(cell, [0, 0])
        hlls = await self._merged_hlls(conn, keys, gen, cells)
        by_grain: dict[Grain, list[Record]] = defaultdict(list)
        for (grain, bucket, field), (count, total) in rows.items():
            hll = hlls.get((grain, bucket, field))
            by_grain[grain].append(rollup_record(keys.project, field, bucket, count, total, hll))
        with postgres_unavailable():
            async with conn.transaction():
                state = await load_state(conn, keys.project, for_update=True)
                if state.late_applied >= gen:
                    return
                for grain, records in by_grain.items():
                    await upsert_rollups(conn, grain, records, additive=True)
                await set_late_applied(conn, keys.project, gen)
        self.metrics.late_applied.inc(len(rows))
        keep = self.settings.keep_after_copy_seconds
        with redis_unavailable():
            pipe = self.redis.pipeline(transaction=False)
            # first: a read cache's part from before this commit lacks the generation and
            # needs its keys, which may go from now on (a new history version ends it; never
            # a watermarks field: after a Redis loss that would recreate a partial hash the
            # restore takes for a restored one)
            queue_bump(pipe, keys)
            pipe.expire(keys.late(gen), keep)
            pipe.expire(keys.late_hll_index(gen), keep)
            for member in members:
                grain, bucket, field = parse_late_hll_member(member)
                pipe.expire(keys.late_hll(gen, grain, bucket, field), keep)
            await pipe.execute()

    async def _merged_hlls(
        self, conn: Conn, keys: ProjectKeys, gen: int, cells: list[LateRow]
    ) -> dict[LateRow, bytes | None]:
        """Per cell, the union of its Postgres sketch and its late sketch (idempotent: a
        union): one query per grain for the stored sketches, then pipelined Redis calls
        (a cell Postgres has no sketch for takes the late sketch as it is)."""
        stored: dict[LateRow, bytes] = {}
        by_grain: dict[Grain, list[tuple[int, str]]] = defaultdict(list)
        for grain, bucket, field in cells:
            by_grain[grain].append((bucket, field))
        with postgres_unavailable():
            for grain, pairs in by_grain.items():
                for i in range(0, len(pairs), HLL_CHUNK):
                    found = await rollup_hlls(conn, keys.project, grain, pairs[i : i + HLL_CHUNK])
                    stored.update({(grain, b, f): blob for (b, f), blob in found.items()})
        out: dict[LateRow, bytes | None] = {}
        for i in range(0, len(cells), HLL_CHUNK):
            chunk = cells[i : i + HLL_CHUNK]
            token = uuid.uuid4().hex
            with redis_unavailable():
                pipe = self.redis.pipeline(transaction=False)
                where: list[int] = []
                for n, (grain, bucket, field) in enumerate(chunk):
                    late = keys.late_hll(gen, grain, bucket, field)
                    existing = stored.get((grain, bucket, field))
                    if existing is None:
                        pipe.get(late)
                    else:
                        tmp = keys.tmp(f"{token}{n}")
                        pipe.set(tmp, existing, px=TMP_TTL_MS)
                        pipe.execute_command("PFMERGE", tmp, tmp, late)
                        pipe.get(tmp)
                        pipe.delete(tmp)
                    where.append(len(pipe) - (1 if existing is None else 2))
                result = await pipe.execute()
            for cell, at in zip(chunk, where, strict=True):
                out[cell] = result[at]
        return out
