"""Recomputed rollup rows (counters/engines/recompute.py) against the stored ones, in bulk:
which rows differ, what to write and what to delete. Counts, sums and sketches are compared
column at a time; a sketch whose bytes differ while counts and sums agree is compared
register by register (persist/hll.py) before it counts as a difference, since two encodings
of the same registers are the same sketch. What to write and delete stays columnar (Arrow
tables that persist/rebuild_sql.py copies into Postgres as CSV); a difference becomes a
BucketDiff only when it is reported."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from counters.core.buckets import Grain
from counters.engines.diffs import BucketDiff, bucket_diff
from counters.engines.recompute import GrainRows
from counters.engines.sketches import full_blob, full_hex
from persist.hll import same_registers

_T = TypeVar("_T")


class RowDiff(NamedTuple):
    """One differing row, before it is spelled out as a BucketDiff."""

    grain: Grain
    bucket: int
    field: str
    stored: tuple[int, int]
    rebuilt: tuple[int, int]
    uniques_differ: bool

    def diff(self) -> BucketDiff:
        """The row as reports print it."""
        return bucket_diff(
            self.grain, self.bucket, self.field, self.stored, self.rebuilt, self.uniques_differ
        )


@dataclass
class RowDiffs:
    """What comparisons found: rows compared, the differing ones, and per grain the rows to
    write over stored ones (absolute values), the rows to insert (nothing stored for them)
    and the rows to delete, as Arrow tables of WRITE_COLUMNS and DELETE_COLUMNS."""

    project: str
    rows: int = 0
    compared: dict[Grain, list[np.ndarray]] = field(default_factory=dict)
    count: int = 0
    """Differing rows found."""
    diffs: list[RowDiff] = field(default_factory=list)
    """The first `minutes_kept` differing minute rows, and the differing hour and day rows
    (all of them when keep_coarse, else as many as minutes_kept)."""
    touched: set[tuple[Grain, int]] = field(default_factory=set)
    """(grain, hour or day start) of every differing row (the hour of a minute)."""
    writes: dict[Grain, list[pa.Table]] = field(default_factory=dict)
    inserts: dict[Grain, list[pa.Table]] = field(default_factory=dict)
    deletes: dict[Grain, list[pa.Table]] = field(default_factory=dict)
    minutes_kept: int = 1_000
    keep_coarse: bool = True
    _coarse_kept: int = -1

    def __post_init__(self) -> None:
        self._coarse_kept = self.minutes_kept

    def take_writes(self) -> Writes:
        """The rows to write, insert and delete found so far, forgotten here."""
        out = Writes(self.writes, self.inserts, self.deletes)
        self.writes, self.inserts, self.deletes = {}, {}, {}
        return out

    def room(self, grain: Grain) -> int | None:
        """How many more differing rows of this grain are kept (None: all)."""
        if grain is Grain.minute:
            return self.minutes_kept
        return None if self.keep_coarse else self._coarse_kept

    def note(self, grain: Grain, buckets: np.ndarray) -> None:
        """Counts differing rows of this grain (their buckets) without keeping them."""
        if not buckets.size:
            return
        self.count += int(buckets.size)
        hours = np.unique(buckets - buckets % Grain.hour.value)
        self.touched.update((grain, int(h)) for h in hours.tolist())

    def keep(self, diff: RowDiff) -> None:
        """Keeps one differing row already counted by note() (see `diffs`)."""
        self.diffs.append(diff)
        if diff.grain is Grain.minute:
            self.minutes_kept -= 1
        elif not self.keep_coarse:
            self._coarse_kept -= 1

    def rows_in(self, grain: Grain, low: int, high: int) -> int:
        """Rows of this grain compared whose bucket is in [low, high)."""
        return sum(int(((b >= low) & (b < high)).sum()) for b in self.compared.get(grain, []))


class Writes(NamedTuple):
    """Rows to change, per grain: written over stored rows, inserted, deleted."""

    updates: dict[Grain, list[pa.Table]]
    inserts: dict[Grain, list[pa.Table]]
    deletes: dict[Grain, list[pa.Table]]

    def __bool__(self) -> bool:
        return bool(self.updates or self.inserts or self.deletes)


WRITE_COLUMNS = ["field", "bucket", "count", "sum", "hll"]
"""A row to write: field, bucket (epoch ms), count, sum (micros), the blob as hex (or null)."""
DELETE_COLUMNS = ["field", "bucket"]


def _take(values: pa.Array, at: np.ndarray) -> pa.Array:
    return pc.take(values, pa.array(at, pa.int64()))


def compare_rows(
    project: str, rows: GrainRows, stored: pa.Table, low: int, high: int, found: RowDiffs
) -> None:
    """Adds to `found` every row of buckets [low, high) of this grain whose recomputed value
    (count, sum, sketch) differs from the stored one, or that exists on one side only."""
    inside = np.flatnonzero((rows.buckets >= low) & (rows.buckets < high))
    keys = rows.keys[inside]
    found.rows += int(keys.size)
    found.compared.setdefault(rows.grain, []).append(rows.buckets[inside])
    size = int(rows.grain.value)
    day0 = int(rows.buckets[0] - (rows.keys[0] // rows.width) * size) if len(rows) else 0
    # stored side, keyed like the recomputed rows: (bucket index) * width + field id
    s_fid = pc.index_in(stored.column("field"), value_set=rows.fields)
    matched_fid = pc.is_valid(s_fid).to_numpy(zero_copy_only=False)
    fid = pc.fill_null(s_fid, 0).to_numpy(zero_copy_only=False).astype(np.int64)
    s_bucket = stored.column("bucket").to_numpy()
    s_key = ((s_bucket - day0) // size) * rows.width + fid
    pos = np.searchsorted(keys, s_key)
    pos_ok = np.minimum(pos, max(keys.size - 1, 0))
    hit = matched_fid & (pos < keys.size)
    if keys.size:
        hit &= keys[pos_ok] == s_key
    # recomputed side: count, sum and sketch hex of each row in `inside`
    r_count = rows.counts[inside]
    r_sum = rows.sums[inside]
    sk = rows.sketches
    spos = np.searchsorted(sk.keys, keys)
    spos_ok = np.minimum(spos, max(sk.keys.size - 1, 0))
    has_sk = spos < sk.keys.size
    if sk.keys.size:
        has_sk &= sk.keys[spos_ok] == keys
    sk_hex = sk.hex()

    def ours_at(at: np.ndarray) -> pa.Array:
        """The sketch hex of rows `at` (positions in `keys`; null for a row without one),
        taken straight from the encoded sketches (no copy of them all)."""
        return pc.take(sk_hex, pa.array(spos_ok[at], pa.int64(), mask=~has_sk[at]))

    stored_count = stored.column("count").to_numpy(zero_copy_only=False)
    stored_sum = stored.column("sum").to_numpy(zero_copy_only=False)
    stored_hex = stored.column("hll")
    hit_at = np.flatnonzero(hit)
    r_at = pos[hit_at]
    seen = np.zeros(keys.size, dtype=bool)
    seen[r_at] = True
    same = (stored_count[hit_at] == r_count[r_at]) & (stored_sum[hit_at] == r_sum[r_at])
    ours = ours_at(r_at)
    theirs = stored_hex if hit_at.size == len(stored_hex) else _take(stored_hex, hit_at)
    both_null = pc.and_(pc.is_null(ours), pc.is_null(theirs))
    sketch_same = pc.or_(both_null, pc.fill_null(pc.equal(ours, theirs), False)).to_numpy(
        zero_copy_only=False
    )
    differ = np.flatnonzero(~(same & sketch_same))
    keep: list[int] = []
    uniques_differ: list[bool] = []
    for j in differ.tolist():
        differs = not bool(sketch_same[j]) and not same_registers(
            _blob(ours[j].as_py()), _blob(theirs[j].as_py())
        )
        if bool(same[j]) and not differs:
            continue  # the same registers, encoded otherwise
        keep.append(j)
        uniques_differ.append(differs)
    grain = rows.grain
    kept_at = r_at[np.array(keep, dtype=np.int64)]  # positions in `keys` of differing rows
    missing = np.flatnonzero(~seen)  # recomputed rows nothing is stored for
    if kept_at.size:
        found.writes.setdefault(grain, []).append(
            _rows_table(rows, inside[kept_at], ours_at(kept_at))
        )
    if missing.size:
        found.inserts.setdefault(grain, []).append(
            _rows_table(rows, inside[missing], ours_at(missing))
        )
    gone = np.flatnonzero(~hit)  # stored rows the raw log has nothing for
    if gone.size:
        found.deletes.setdefault(grain, []).append(
            pa.table(
                [_take(stored.column("field"), gone), pa.array(s_bucket[gone])],
                names=DELETE_COLUMNS,
            )
        )
    found.note(grain, rows.buckets[inside[kept_at]])
    found.note(grain, rows.buckets[inside[missing]])
    found.note(grain, s_bucket[gone].astype(np.int64))
    fields = rows.fields

    def rebuilt(r: int) -> tuple[int, int]:
        return int(rows.counts[r]), int(rows.sums[r])

    for j, differs in _first(found, grain, zip(keep, uniques_differ, strict=True)):
        si, r = int(hit_at[j]), int(inside[r_at[j]])
        found.keep(
            RowDiff(
                grain,
                int(rows.buckets[r]),
                str(fields[int(rows.fids[r])].as_py()),
                (int(stored_count[si]), int(stored_sum[si])),
                rebuilt(r),
                differs,
            )
        )
    for m in _first(found, grain, missing.tolist()):
        r = int(inside[m])
        found.keep(
            RowDiff(
                grain,
                int(rows.buckets[r]),
                str(fields[int(rows.fids[r])].as_py()),
                (0, 0),
                rebuilt(r),
                bool(has_sk[m]),
            )
        )
    for si in _first(found, grain, gone.tolist()):
        found.keep(
            RowDiff(
                grain,
                int(s_bucket[si]),
                str(stored.column("field")[si].as_py()),
                (int(stored_count[si]), int(stored_sum[si])),
                (0, 0),
                stored_hex[si].is_valid,
            )
        )


def _first(found: RowDiffs, grain: Grain, items: Iterable[_T]) -> Iterator[_T]:
    """As many of items as found keeps of this grain (all when it keeps them all); the room
    is read again before each item, since keeping one uses it up."""
    for item in items:
        room = found.room(grain)
        if room is not None and room <= 0:
            return
        yield item


def _blob(hex_text: str | None) -> bytes | None:
    return None if hex_text is None else full_blob(bytes.fromhex(hex_text))


def _rows_table(rows: GrainRows, at: np.ndarray, hexes: pa.Array) -> pa.Table:
    """Recomputed rows `at` (hexes: the same rows' sketches as hex) as WRITE_COLUMNS."""
    return pa.table(
        [
            _take(rows.fields, rows.fids[at]),
            pa.array(rows.buckets[at]),
            pa.array(rows.counts[at]),
            pa.array(rows.sums[at]),
            full_hex(hexes),
        ],
        names=WRITE_COLUMNS,
    )
