"""Reconcile's rollup check: every sealed hour and day row against the rows it is made of —
an hour against its 60 minutes, a day against its 1,440 minutes while minute rows are kept
(else against its 24 hours). Counts and sums are added up in SQL (persist/rollup_parts.py);
the parts' sketches are united register by register in Python (persist/hll.py, what PFMERGE
computes) and compared with the stored sketch. A repair writes the PFMERGE of the parts
(in scratch keys, as the live seal merges minutes).

The caller holds the project's lock and has drained Postgres to a cut, so minutes, hours
and days all hold exactly the late generations up to it. A repair rewrites the differing
rows from their parts (absolute values, in one transaction): running it again finds
nothing, and a rebuild from a raw log that agrees with the minutes finds nothing either."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import cast

import msgspec

from counters.core.buckets import DAY_MS, HOUR_MS, Grain, bucket_ceil, bucket_start
from counters.engines.diffs import BucketDiff, bucket_diff
from counters.engines.history_version import bump_history
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys
from persist.db import Conn, postgres_unavailable
from persist.hll import registers, union_registers
from persist.rollup_parts import PartsRow, delete_rollup_rows, rows_beside_parts
from persist.rollups import Record, rollup_record, upsert_rollups

UNION_BATCH_SKETCHES = 2_000
"""Part sketches loaded into Redis per pipeline when uniting them."""
SCRATCH_TTL_MS = 600_000


class Span(msgspec.Struct, frozen=True):
    """Rows of grain `whole` in [low, high) to check against their rows of grain `part`."""

    whole: Grain
    part: Grain
    low: int
    high: int


def day_spans(day: int, sealed: dict[Grain, int], parts_low: int) -> list[Span]:
    """What of one UTC day can be checked at a cut whose watermarks are `sealed`: sealed
    hours whose minutes are all copied and at or after parts_low (the oldest hour whose
    minutes are all kept), and the day if it is sealed — against its minutes when they are
    all kept, else against its hours."""
    out: list[Span] = []
    low = max(day, parts_low)
    high = min(day + DAY_MS, sealed[Grain.hour], bucket_start(sealed[Grain.minute], Grain.hour))
    if high > low:
        out.append(Span(Grain.hour, Grain.minute, low, high))
    if day + DAY_MS <= sealed[Grain.day]:
        if day >= parts_low and day + DAY_MS <= sealed[Grain.minute]:
            out.append(Span(Grain.day, Grain.minute, day, day + DAY_MS))
        elif day + DAY_MS <= sealed[Grain.hour]:
            out.append(Span(Grain.day, Grain.hour, day, day + DAY_MS))
    return out


def parts_edge(oldest_minute: int) -> int:
    """The oldest hour the check trusts to have all its minutes: an hour after the minute
    retention edge (retention may delete up to its own edge while a check runs)."""
    return bucket_ceil(oldest_minute, Grain.hour) + HOUR_MS


@dataclass
class RollupCheck:
    """What a check found: rows compared, the differing ones, and of those the ones to
    rewrite from their parts or to delete (no parts at all)."""

    rows: int = 0
    diffs: list[BucketDiff] = field(default_factory=list)
    fixes: dict[Grain, list[PartsRow]] = field(default_factory=dict)
    gone: dict[Grain, list[tuple[int, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class RollupChecker:
    """Checks (and repairs) hour and day rows of a project against their parts."""

    redis: RedisClient

    async def check(
        self, conn: Conn, keys: ProjectKeys, spans: list[Span], name: str | None = None
    ) -> RollupCheck:
        """Compares every row of the spans with the sum of its parts: count, sum and the
        union of the parts' sketches (register by register, in Python). Changes nothing."""
        found = RollupCheck()
        for span in spans:
            with postgres_unavailable():
                rows = await rows_beside_parts(
                    conn, keys.project, span.whole, span.part, span.low, span.high, name
                )
            found.rows += len(rows)
            for row in rows:
                _compare(found, span, row)
        return found

    async def repair(self, conn: Conn, keys: ProjectKeys, found: RollupCheck) -> None:
        """Rewrites every differing row from its parts (sketch: PFMERGE of the parts'),
        deleting rows that have none, in one transaction; the caller holds the lock."""
        records: dict[Grain, list[Record]] = {}
        for grain, rows in found.fixes.items():
            unions = await self._unions(keys, [r.part_hlls for r in rows])
            records[grain] = [
                rollup_record(keys.project, r.field, r.bucket, r.part_count, r.part_sum, u)
                for r, u in zip(rows, unions, strict=True)
            ]
        with postgres_unavailable():
            async with conn.transaction():
                for grain, grain_records in records.items():
                    await upsert_rollups(conn, grain, grain_records, additive=False)
                for grain, gone in found.gone.items():
                    await delete_rollup_rows(conn, keys.project, grain, gone)
        await bump_history(self.redis, keys)

    async def _unions(self, keys: ProjectKeys, groups: list[list[bytes]]) -> list[bytes | None]:
        """The union of each group of sketches (None for an empty group): one sketch is its
        own union; larger groups are merged with PFMERGE in scratch keys, in batches."""
        out: list[bytes | None] = [g[0] if len(g) == 1 else None for g in groups]
        todo = [i for i, g in enumerate(groups) if len(g) > 1]
        token = uuid.uuid4().hex
        start = 0
        while start < len(todo):
            batch: list[int] = []
            sketches = 0
            while start < len(todo) and (not batch or sketches < UNION_BATCH_SKETCHES):
                batch.append(todo[start])
                sketches += len(groups[todo[start]])
                start += 1
            merged = await self._merge(keys, token, [groups[i] for i in batch])
            for i, blob in zip(batch, merged, strict=True):
                out[i] = blob
        return out

    async def _merge(
        self, keys: ProjectKeys, token: str, groups: list[list[bytes]]
    ) -> list[bytes | None]:
        with redis_unavailable():
            pipe = self.redis.pipeline(transaction=False)
            names: list[list[str]] = []
            for g, blobs in enumerate(groups):
                group_names = [keys.tmp(f"rc:{token}:{g}:{j}") for j in range(len(blobs))]
                names.append(group_names)
                for name, blob in zip(group_names, blobs, strict=True):
                    pipe.set(name, blob, px=SCRATCH_TTL_MS)
                pipe.execute_command("PFMERGE", group_names[0], *group_names[1:])
                pipe.get(group_names[0])
                pipe.delete(*group_names)
            replies = await pipe.execute()
        out: list[bytes | None] = []
        pos = 0
        for group_names in names:
            pos += len(group_names) + 1  # the SETs and the PFMERGE
            out.append(cast(bytes | None, replies[pos]))
            pos += 2  # the GET and the DEL
        return out


def _compare(found: RollupCheck, span: Span, row: PartsRow) -> None:
    """Adds the row to `found` if it differs from its parts."""
    stored = row.stored if row.stored is not None else (0, 0, None)
    parts = (row.part_count, row.part_sum)
    uniques_differ = union_registers(row.part_hlls) != registers(stored[2])
    if parts == stored[:2] and not uniques_differ and row.has_parts:
        return
    found.diffs.append(
        bucket_diff(
            span.whole,
            row.bucket,
            row.field,
            stored[:2],
            parts,
            uniques_differ,
            basis=span.part.name + "s",
        )
    )
    if row.has_parts:
        found.fixes.setdefault(span.whole, []).append(row)
    else:
        found.gone.setdefault(span.whole, []).append((row.bucket, row.field))
