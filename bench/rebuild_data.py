"""The history `bench rebuild` loads: bench/generate.py's event stream made with numpy
(columnar, time-sorted) and the rollup rows live ingest would have built from it, computed
in bulk one UTC day at a time.

Events: 3 names (click 55%, view 35%, conversion 10%; only conversions carry a value, in
cents, stored as micros = cents * 10,000 exactly as the API rounds value * 1e6), the five
Zipf dims of bench/generate.py, and a uid "u<int>" out of `uids` on every event. The raw
log holds each uid as the project's keyed hash (counters.core.uid), so sketches are built
over those hashes: MurmurHash64A of each distinct hashed uid once (numpy), then per event
its register and rank (as PFADD does), the register maximum per rollup row, and the Redis
blob (sparse when it fits in hll-sparse-max-bytes, else dense). Rows: every field of
counters.core.rollups.fields_for (the total and one per dim, per event name; no
cross-tabs) at minute (from `minute_low` on), hour and day grain."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa

from bench import sketches
from bench.generate import DIM_NAMES, NAME_WEIGHTS, NAMES, VOCAB, zipf_cum_weights
from counters.core.buckets import DAY_MS, Grain, to_datetime
from counters.core.uid import UidHasher
from counters.engines.sketches import encode_groups, full_blob, hll_positions, max_registers
from persist.hll import REGISTERS

VOCABS: tuple[tuple[str, ...], ...] = (
    VOCAB.links,
    VOCAB.sources,
    VOCAB.countries,
    VOCAB.devices,
    VOCAB.affiliates,
)
FIELDS = 1 + len(DIM_NAMES)
"""Fields per event and grain: the total, then one per dim (DIM_NAMES order)."""
CODE_SPAN = 1000
"""Dim value codes are below this (the largest vocabulary, links, has 1,000 values)."""
CENTS_TO_MICROS = 10_000


@dataclass
class Events:
    """Columnar events sorted by time: ts (epoch ms), name (index into NAMES), dims (one row
    of value codes per dim, DIM_NAMES order), uid (the int of "u<int>"), value_micros."""

    ts: np.ndarray
    name: np.ndarray
    dims: np.ndarray
    uid: np.ndarray
    value_micros: np.ndarray

    @property
    def n(self) -> int:
        """Number of events."""
        return int(self.ts.size)

    def day_slices(self) -> Iterator[tuple[int, slice]]:
        """(UTC day start, slice of its events) for every day holding events, in order."""
        days = self.ts // DAY_MS * DAY_MS
        bounds = np.flatnonzero(np.diff(days)) + 1
        starts = np.concatenate(([0], bounds)).astype(np.int64)
        ends = np.append(bounds, self.n).astype(np.int64)
        for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True):
            if hi > lo:
                yield int(days[lo]), slice(lo, hi)


def generate(n: int, start_ms: int, end_ms: int, *, uids: int = 100_000, seed: int = 1) -> Events:
    """n events uniform over [start_ms, end_ms), sorted by time (bench/generate.py's
    distributions, drawn with numpy)."""
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.integers(start_ms, end_ms, size=n, dtype=np.int64))
    weights = np.array(NAME_WEIGHTS, dtype=np.float64)
    name = rng.choice(len(NAMES), size=n, p=weights / weights.sum()).astype(np.int8)
    dims = np.empty((len(DIM_NAMES), n), dtype=np.int16)
    for i, vocab in enumerate(VOCABS):
        cum = np.array(zipf_cum_weights(len(vocab)))
        dims[i] = np.searchsorted(cum, rng.random(n) * cum[-1], side="right").clip(
            0, len(vocab) - 1
        )
    uid = rng.integers(0, uids, size=n, dtype=np.int32)
    cents = rng.integers(100, 50_000, size=n, dtype=np.int64)
    value = np.where(name == NAMES.index("conversion"), cents * CENTS_TO_MICROS, 0)
    return Events(ts, name, dims, uid, value.astype(np.int64))


# -- uids: keyed hashes and their HLL register/rank -----------------------------------------


@dataclass(frozen=True)
class UidTable:
    """For uid i ("u<i>"): the hash the raw log stores and the HLL register and rank PFADD
    of that hash sets."""

    hashed: list[str]
    index: np.ndarray
    rank: np.ndarray


def uid_table(secret: bytes, uids: int) -> UidTable:
    """The table of the project's first `uids` uids under its secret."""
    hasher = UidHasher(secret)
    hashed = [hasher(f"u{i}") for i in range(uids)]
    index, rank = hll_positions(pa.array(hashed, pa.string()))
    return UidTable(hashed, index, rank)


async def check_uid_table(redis: Any, key: str, table: UidTable, sample: int = 3000) -> None:
    """Raises AssertionError unless PFADD of sampled hashed uids sets exactly the registers
    the table gives them (sparse and dense sketches)."""
    from persist.hll import registers

    for size in (1, 50, sample):
        ids = np.arange(0, len(table.hashed), max(1, len(table.hashed) // size))[:size]
        await redis.delete(key)
        strings = [table.hashed[i] for i in ids.tolist()]
        for i in range(0, len(strings), 5000):
            await redis.pfadd(key, *strings[i : i + 5000])
        regs = np.zeros(REGISTERS, dtype=np.uint8)
        np.maximum.at(regs, table.index[ids], table.rank[ids])
        assert registers(await redis.get(key)) == regs.tobytes(), f"registers differ at {size}"
        blob = encode_one(regs)
        await redis.set(key, blob)
        redis_count = await redis.pfcount(key)
        await redis.delete(key)
        await redis.pfadd(key, *strings)
        assert await redis.pfcount(key) == redis_count, f"PFCOUNT differs at {size}"
    await redis.delete(key)


def encode_one(regs: np.ndarray) -> bytes:
    """The Redis blob of one register array (not all zero)."""
    blob = sketches.encode(regs)
    assert blob is not None
    return blob


# -- rollup rows ------------------------------------------------------------------------------

Record = tuple[Any, ...]
"""One rollup row in persist.schema.ROLLUP_COLUMNS order."""


@dataclass
class GrainRows:
    """The rows of one grain for one day, columnar: bucket start, name, field (0 = total,
    else 1 + dim index), dim value code, count, sum_micros, and each row's sketch blob."""

    grain: Grain
    bucket: np.ndarray
    name: np.ndarray
    field: np.ndarray
    code: np.ndarray
    count: np.ndarray
    sum_micros: np.ndarray
    hll: list[bytes]

    def __len__(self) -> int:
        return int(self.bucket.size)

    def records(self, project: str) -> list[Record]:
        """The rows as persist.rollups records."""
        when: dict[int, datetime] = {b: to_datetime(b) for b in np.unique(self.bucket).tolist()}
        out: list[Record] = []
        append = out.append
        for b, nm, f, c, cnt, s, blob in zip(
            self.bucket.tolist(),
            self.name.tolist(),
            self.field.tolist(),
            self.code.tolist(),
            self.count.tolist(),
            self.sum_micros.tolist(),
            self.hll,
            strict=True,
        ):
            if f == 0:
                append((project, NAMES[nm], "", [], when[b], cnt, s, blob))
            else:
                dim = DIM_NAMES[f - 1]
                append((project, NAMES[nm], dim, [VOCABS[f - 1][c]], when[b], cnt, s, blob))
        return out


def day_rows(ev: Events, part: slice, table: UidTable, grain: Grain, low: int) -> GrainRows:
    """The rows of one grain that the events of part (one UTC day) make, for buckets at or
    after low."""
    ts = ev.ts[part]
    keep = ts >= low
    ts = ts[keep]
    n = ts.size
    size = grain.value
    bucket = ts // size * size
    base = bucket * 3 + ev.name[part][keep].astype(np.int64)
    uid = ev.uid[part][keep]
    value = ev.value_micros[part][keep]
    dims = ev.dims[:, part][:, keep].astype(np.int64)
    keys = np.empty(FIELDS * n, dtype=np.int64)
    keys[:n] = base * FIELDS * CODE_SPAN
    for f in range(1, FIELDS):
        keys[f * n : (f + 1) * n] = (base * FIELDS + f) * CODE_SPAN + dims[f - 1]
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    source = order % n  # the event behind each (event, field) incidence
    starts = np.concatenate(([0], np.flatnonzero(np.diff(sorted_keys)) + 1))
    uniq = sorted_keys[starts]
    counts = np.diff(np.append(starts, sorted_keys.size))
    sums = np.add.reduceat(value[source], starts) if n else np.zeros(0, dtype=np.int64)
    row_of = np.repeat(np.arange(uniq.size, dtype=np.int64), counts)
    blobs = row_sketches(row_of, table.index[uid[source]], table.rank[uid[source]], uniq.size)
    code = uniq % CODE_SPAN
    rest = uniq // CODE_SPAN
    field = rest % FIELDS
    rest //= FIELDS
    bucket_of, name = rest // 3, rest % 3
    # written in (about) primary-key order, (name, rollup, dims, bucket): each upsert then
    # walks the rollup indexes once instead of touching a leaf per row
    order = np.lexsort((bucket_of, _CODE_RANK[field, code], _FIELD_RANK[field], _NAME_RANK[name]))
    return GrainRows(
        grain,
        bucket_of[order],
        name[order],
        field[order],
        code[order],
        counts.astype(np.int64)[order],
        sums[order],
        [blobs[i] for i in order.tolist()],
    )


def _ranks(labels: list[str]) -> np.ndarray:
    """Position of each label in sorted order."""
    out = np.empty(len(labels), dtype=np.int64)
    out[np.argsort(np.array(labels), kind="stable")] = np.arange(len(labels))
    return out


_NAME_RANK = _ranks(list(NAMES))
_FIELD_RANK = _ranks([""] + list(DIM_NAMES))
_CODE_RANK = np.zeros((FIELDS, CODE_SPAN), dtype=np.int64)
for _f, _vocab in enumerate(VOCABS, start=1):
    _CODE_RANK[_f, : len(_vocab)] = _ranks(list(_vocab))


def row_sketches(row: np.ndarray, index: np.ndarray, rank: np.ndarray, rows: int) -> list[bytes]:
    """The blob of each row's sketch, given every (row, register, rank) one of its uids sets:
    what PFADD builds, byte for byte (counters/engines/sketches.py, the rebuild's own code)."""
    encoded = encode_groups(
        *max_registers(row.astype(np.int64), index.astype(np.int64), rank.astype(np.uint8))
    )
    out = [b""] * rows
    for g, key in enumerate(encoded.keys.tolist()):
        out[key] = full_blob(encoded.blob(g))
    return out


def grains_of_day(day: int, minute_low: int) -> list[tuple[Grain, int]]:
    """(grain, low) of every grain with rows on this day: minutes only from minute_low."""
    out = [(Grain.hour, day), (Grain.day, day)]
    if minute_low < day + DAY_MS:
        out.insert(0, (Grain.minute, max(day, minute_low)))
    return out
