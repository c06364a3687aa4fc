"""The rollup rows of one UTC day recomputed from its raw events, column at a time.

The day's raw events arrive in time slices (Arrow tables from persist/rebuild_sql.py). Each
event contributes to the fields counters.core.rollups.fields_for names (the total, one per
dim, each configured cross-tab it has every dim of); here that expansion, the counts and
sums and the HyperLogLog registers (counters/engines/sketches.py) are computed for all events
of a slice at once. A slice is whole hours, or whole minutes inside one hour (an hour too
busy for one slice); minutes are finished slice by slice, an hour with its slice or its
last part, and the day's rows accumulate over the slices (FieldShare):

    day = DayRecompute(day, dims, crosstabs)
    for each slice: rows = day.add(events, minutes=..., hours=..., part_of_hour=...)
    rows = day.finish()                                              # the day grain

An hour is the sum of its minutes and the union of their registers, and a day the same of
its hours, as lua/seal.lua merges them live (invariant 3). Memory holds one slice and the
fields of the day (and of a split hour), never the day's events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from counters.core.buckets import HOUR_MS, MINUTE_MS, MINUTES_PER_HOUR, Grain
from counters.core.rollups import US, Rollup
from counters.engines.day_registers import DayRegisters
from counters.engines.sketches import (
    I64,
    U8,
    Encoded,
    encode_groups,
    hll_positions,
    max_registers,
)


@dataclass
class GrainRows:
    """Recomputed rows of one grain: keys sorted ascending; row r is bucket buckets[r] and
    field fields[fids[r]], with counts[r], sums[r]; sketches holds the rows with uids (its
    keys a subset of keys)."""

    grain: Grain
    keys: I64
    buckets: I64
    fids: I64
    fields: pa.Array
    counts: I64
    sums: I64
    sketches: Encoded
    width: int
    """Key of a row: bucket index (from the day's start, in grain units) * width + fid."""

    def __len__(self) -> int:
        return int(self.keys.size)


def _reduce_sum(keys: I64, sums: I64, counts: I64 | None = None) -> tuple[I64, I64, I64]:
    """Per distinct key (sorted): the counts (1 per key occurrence when `counts` is None)
    and the sums added up. Keys spanning a range not much wider than their number (a
    slice's minutes times its fields) are added into one slot per key of the range, without
    a sort."""
    if keys.size == 0:
        return keys, np.zeros(0, dtype=np.int64), sums[:0]
    low = int(keys.min())
    span = int(keys.max()) - low + 1
    if span <= 4 * keys.size + 65_536:
        slot = keys - low
        hits = np.bincount(slot, minlength=span)
        present = np.flatnonzero(hits)
        total = np.zeros(span, dtype=np.int64)
        np.add.at(total, slot, sums)
        if counts is None:
            return present + low, hits[present].astype(np.int64), total[present]
        added = np.zeros(span, dtype=np.int64)
        np.add.at(added, slot, counts)
        return present + low, added[present], total[present]
    order = np.argsort(keys, kind="stable")
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]])
    tally = (
        np.diff(np.r_[starts, k.size]) if counts is None else np.add.reduceat(counts[order], starts)
    )
    return k[starts], tally.astype(np.int64), np.add.reduceat(sums[order], starts)


_COMBO_SPAN = 1 << 31
"""Above any column code (codes are below a slice's event count)."""


def _codes(values: pa.Array | pa.ChunkedArray) -> I64:
    """Per value a dense code (0, 1, ... in order of first appearance); -1 for null."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.ChunkedArray):
        encoded = encoded.combine_chunks()
    out: I64 = encoded.indices.fill_null(-1).to_numpy().astype(np.int64)
    return out


def _first_of_each(codes: I64) -> I64:
    """The position of each code's first appearance (codes as _codes gives them)."""
    if codes.size == 0:
        return codes
    seen = np.maximum.accumulate(codes)
    return np.flatnonzero(np.r_[True, seen[1:] > seen[:-1]])


class Exploded:
    """One slice's events expanded to (event, field) pairs: minute index within the day,
    field id (into `fields`), value and uid position (register index, rank; -1 rank 0 for
    events without a uid)."""

    def __init__(
        self, events: pa.Table, day: int, dims: Sequence[str], crosstabs: Sequence[Rollup]
    ) -> None:
        names = events.column("name")
        n = events.num_rows
        minute = (events.column("ts").to_numpy() - day) // MINUTE_MS
        value = events.column("value").to_numpy(zero_copy_only=False)
        uid = events.column("uid")
        has_uid = pc.is_valid(uid).to_numpy(zero_copy_only=False)
        reg = np.full(n, -1, dtype=np.int64)
        rank = np.zeros(n, dtype=np.uint8)
        if has_uid.any():
            encoded = pc.dictionary_encode(pc.drop_null(uid)).combine_chunks()
            r, k = hll_positions(encoded.dictionary)
            ix = encoded.indices.to_numpy()
            reg[has_uid] = r[ix]
            rank[has_uid] = k[ix]
        columns = {"": names, **{d: events.column(f"d{i}") for i, d in enumerate(dims)}}
        codes = {c: _codes(a) for c, a in columns.items()}  # each column hashed once
        parts: list[pa.Array] = []
        rows: list[I64] = []
        ids: list[I64] = []
        base = 0
        for rollup in [(), *((d,) for d in dims), *crosstabs]:
            if any(d not in columns for d in rollup):
                continue
            where = np.arange(n)
            if rollup:
                where = np.flatnonzero(np.logical_and.reduce([codes[d] >= 0 for d in rollup]))
            # the rollup's field of each event as one dense code, then spelled once per code
            combo = codes[""][where]
            for d in rollup:
                combo = _codes(pa.array(combo * _COMBO_SPAN + codes[d][where]))
            first = _first_of_each(combo)
            take = pa.array(where[first])
            spelled = pc.binary_join_element_wise(
                pc.take(names, take),
                ",".join(rollup),
                *(pc.take(columns[d], take) for d in rollup),
                US,
            )
            rows.append(where)
            ids.append(combo + base)
            base += first.size
            parts.append(
                spelled.combine_chunks() if isinstance(spelled, pa.ChunkedArray) else spelled
            )
        at = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        # one id per distinct spelling (two rollups' codes could spell the same field)
        spelled_all = pc.dictionary_encode(pa.chunked_array(parts, pa.string())).combine_chunks()
        self.fields: pa.Array = spelled_all.dictionary
        same = spelled_all.indices.to_numpy().astype(np.int64)
        self.fid = same[np.concatenate(ids)] if ids else np.zeros(0, dtype=np.int64)
        self.minute = minute[at]
        self.value = value[at].astype(np.int64, copy=False)
        self.reg = reg[at]
        self.rank = rank[at]
        self.width = len(self.fields)


class FieldShare:
    """Rows of one bucket (an hour, a day) gathered slice by slice, per field: counts, sums
    and registers (day_registers.py), so memory holds the bucket's fields, not its events."""

    def __init__(self) -> None:
        self._fields: dict[str, int] = {}
        self._counts = np.zeros(0, dtype=np.int64)
        self._sums = np.zeros(0, dtype=np.int64)
        self._registers = DayRegisters()

    def add(
        self,
        fields: pa.Array,
        fid: I64,
        counts: I64,
        sums: I64,
        regs: tuple[I64, I64, U8],
    ) -> None:
        """Adds rows of a slice: field ids `fid` into the slice's `fields`, their counts and
        sums, and (field id, register, rank) triples."""
        known = self._fields
        ids = np.fromiter(
            (known.setdefault(f, len(known)) for f in fields.to_pylist()),
            dtype=np.int64,
            count=len(fields),
        )
        if len(known) > self._counts.size:
            grow = len(known) - self._counts.size
            self._counts = np.r_[self._counts, np.zeros(grow, dtype=np.int64)]
            self._sums = np.r_[self._sums, np.zeros(grow, dtype=np.int64)]
        np.add.at(self._counts, ids[fid], counts)
        np.add.at(self._sums, ids[fid], sums)
        self._registers.add(ids[regs[0]], regs[1], regs[2])

    def __bool__(self) -> bool:
        return bool(self._fields)

    def rows(self, grain: Grain, day: int, bucket: int) -> GrainRows:
        """The bucket's row per field (call once, at the end)."""
        width = len(self._fields)
        at = (bucket - day) // grain.value
        fids = np.arange(width, dtype=np.int64)
        regs = self._registers.encoded()
        regs.keys += at * width
        return GrainRows(
            grain,
            at * width + fids,
            np.full(width, bucket, dtype=np.int64),
            fids,
            pa.array(list(self._fields), pa.string()),
            self._counts.copy(),
            self._sums.copy(),
            regs,
            width,
        )


class DayRecompute:
    """Accumulates one UTC day's rows slice by slice (see the module docstring)."""

    def __init__(self, day: int, dims: Sequence[str], crosstabs: Sequence[Rollup]) -> None:
        self.day = day
        self.dims = list(dims)
        self.crosstabs = [t for t in crosstabs if all(d in dims for d in t)]
        self._day = FieldShare()
        self._hour = FieldShare()
        """The hour whose parts the slices so far were, until its last part."""
        self._hour_of = day
        self.events = 0

    def add(
        self, events: pa.Table, *, minutes: bool, hours: bool, part_of_hour: bool = False
    ) -> list[GrainRows]:
        """Takes one slice: whole hours, or whole minutes of one hour (`part_of_hour`);
        returns its minute rows (when `minutes`) and, when `hours`, the rows of the hours it
        ends (its own, or the one it is the last part of), and keeps its share of the day."""
        self.events += events.num_rows
        out: list[GrainRows] = []
        if events.num_rows:
            out = self._add(events, minutes=minutes, hours=hours, part_of_hour=part_of_hour)
        if part_of_hour and hours and self._hour:  # the hour's last part: its rows
            out.append(self._hour.rows(Grain.hour, self.day, self._hour_of))
            self._hour = FieldShare()
        return out

    def _add(
        self, events: pa.Table, *, minutes: bool, hours: bool, part_of_hour: bool
    ) -> list[GrainRows]:
        ex = Exploded(events, self.day, self.dims, self.crosstabs)
        out: list[GrainRows] = []
        w = ex.width
        with_uid = ex.rank > 0
        if minutes:
            mk, mc, ms = _reduce_sum(ex.minute * w + ex.fid, ex.value)
            mh = max_registers(
                (ex.minute * w + ex.fid)[with_uid], ex.reg[with_uid], ex.rank[with_uid]
            )
            out.append(self._rows(Grain.minute, mk, mc, ms, mh, w, ex.fields, MINUTE_MS))
            hk_of = (mk // w) // MINUTES_PER_HOUR * w + mk % w
            hk, hc, hs = _reduce_sum(hk_of, ms, mc)
            hh = max_registers((mh[0] // w) // MINUTES_PER_HOUR * w + mh[0] % w, mh[1], mh[2])
        else:
            hour = ex.minute // MINUTES_PER_HOUR
            hk, hc, hs = _reduce_sum(hour * w + ex.fid, ex.value)
            hh = max_registers((hour * w + ex.fid)[with_uid], ex.reg[with_uid], ex.rank[with_uid])
        if part_of_hour:
            self._hour_of = self.day + int(hk[0] // w) * HOUR_MS
            self._hour.add(ex.fields, hk % w, hc, hs, (hh[0] % w, hh[1], hh[2]))
        elif hours:
            out.append(self._rows(Grain.hour, hk, hc, hs, hh, w, ex.fields, HOUR_MS))
        self._day.add(ex.fields, hk % w, hc, hs, (hh[0] % w, hh[1], hh[2]))
        return out

    def finish(self) -> GrainRows | None:
        """The day's row per field (None when the day had no events)."""
        if not self._day:
            return None
        return self._day.rows(Grain.day, self.day, self.day)

    def _rows(
        self,
        grain: Grain,
        keys: I64,
        counts: I64,
        sums: I64,
        regs: tuple[I64, I64, U8],
        width: int,
        fields: pa.Array,
        size: int,
    ) -> GrainRows:
        return GrainRows(
            grain,
            keys,
            self.day + (keys // width) * size,
            keys % width,
            fields,
            counts,
            sums,
            encode_groups(*regs),
            width,
        )


def empty_rows(grain: Grain) -> GrainRows:
    """No rows of this grain (what a slice without events recomputes)."""
    none = np.zeros(0, dtype=np.int64)
    return GrainRows(
        grain,
        none,
        none,
        none,
        pa.array([], pa.string()),
        none,
        none,
        encode_groups(none, none, np.zeros(0, np.uint8)),
        1,
    )
