"""Recomputed rollup rows (counters/engines/recompute.py) against the stored ones, in bulk:
which rows differ, what to write and what to delete. Counts, sums and sketches are compared
column at a time; a sketch whose bytes differ while counts and sums agree is compared
register by register (persist/hll.py) before it counts as a difference, since two encodings
of the same registers are the same sketch. What to write and delete stays columnar (Arrow
tables that persist/rebuild_sql.py copies into Postgres as CSV); a difference becomes a
BucketDiff only when it is reported."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from counters.core.buckets import Grain
from counters.engines.diffs import BucketDiff, bucket_diff
from counters.engines.recompute import GrainRows
from counters.engines.sketches import full_blob, full_hex
from persist.hll import same_registers


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
    write (absolute values) and the rows to delete, as Arrow tables of WRITE_COLUMNS and
    DELETE_COLUMNS."""

    project: str
    rows: int = 0
    compared: dict[Grain, list[np.ndarray]] = field(default_factory=dict)
    count: int = 0
    """Differing rows found."""
    diffs: list[RowDiff] = field(default_factory=list)
    """The differing hour and day rows, and the first MINUTES_KEPT minute rows."""
    touched: set[tuple[Grain, int]] = field(default_factory=set)
    """(grain, hour or day start) of every differing row (the hour of a minute)."""
    writes: dict[Grain, list[pa.Table]] = field(default_factory=dict)
    deletes: dict[Grain, list[pa.Table]] = field(default_factory=dict)
    minutes_kept: int = 1_000

    def take_writes(self) -> tuple[dict[Grain, list[pa.Table]], dict[Grain, list[pa.Table]]]:
        """The rows to write and to delete found so far, forgotten here."""
        out = self.writes, self.deletes
        self.writes, self.deletes = {}, {}
        return out

    def add(self, diff: RowDiff) -> None:
        """Counts one differing row (and keeps it, see `diffs`)."""
        self.count += 1
        grain = diff.grain
        self.touched.add((grain, diff.bucket - diff.bucket % Grain.hour.value))
        if grain is not Grain.minute or self.minutes_kept > 0:
            self.diffs.append(diff)
            if grain is Grain.minute:
                self.minutes_kept -= 1

    def rows_in(self, grain: Grain, low: int, high: int) -> int:
        """Rows of this grain compared whose bucket is in [low, high)."""
        return sum(int(((b >= low) & (b < high)).sum()) for b in self.compared.get(grain, []))


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
        ours_all = pc.if_else(
            pa.array(has_sk), _take(sk.hex(), spos_ok), pa.nulls(keys.size, pa.string())
        )
    else:
        ours_all = pa.nulls(keys.size, pa.string())
    stored_count = stored.column("count").to_numpy(zero_copy_only=False)
    stored_sum = stored.column("sum").to_numpy(zero_copy_only=False)
    stored_hex = stored.column("hll")
    hit_at = np.flatnonzero(hit)
    r_at = pos[hit_at]
    seen = np.zeros(keys.size, dtype=bool)
    seen[r_at] = True
    same = (stored_count[hit_at] == r_count[r_at]) & (stored_sum[hit_at] == r_sum[r_at])
    ours = _take(ours_all, r_at)
    theirs = _take(stored_hex, hit_at)
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
    kept = np.array(keep, dtype=np.int64)
    missing = np.flatnonzero(~seen)  # recomputed rows nothing is stored for
    write_at = np.concatenate([r_at[kept], missing])
    if write_at.size:
        found.writes.setdefault(grain, []).append(
            _rows_table(rows, inside[write_at], ours_all, write_at)
        )
    fields = rows.fields
    for j, differs in zip(keep, uniques_differ, strict=True):
        si, r = int(hit_at[j]), int(inside[r_at[j]])
        found.add(
            RowDiff(
                grain,
                int(rows.buckets[r]),
                str(fields[int(rows.fids[r])].as_py()),
                (int(stored_count[si]), int(stored_sum[si])),
                (int(rows.counts[r]), int(rows.sums[r])),
                differs,
            )
        )
    for m in missing.tolist():
        r = int(inside[m])
        found.add(
            RowDiff(
                grain,
                int(rows.buckets[r]),
                str(fields[int(rows.fids[r])].as_py()),
                (0, 0),
                (int(rows.counts[r]), int(rows.sums[r])),
                bool(has_sk[m]),
            )
        )
    gone = np.flatnonzero(~hit)  # stored rows the raw log has nothing for
    if gone.size:
        found.deletes.setdefault(grain, []).append(
            pa.table(
                [_take(stored.column("field"), gone), pa.array(s_bucket[gone])],
                names=DELETE_COLUMNS,
            )
        )
    for si in gone.tolist():
        found.add(
            RowDiff(
                grain,
                int(s_bucket[si]),
                str(stored.column("field")[si].as_py()),
                (int(stored_count[si]), int(stored_sum[si])),
                (0, 0),
                stored_hex[si].is_valid,
            )
        )


def _blob(hex_text: str | None) -> bytes | None:
    return None if hex_text is None else full_blob(bytes.fromhex(hex_text))


def _rows_table(rows: GrainRows, at: np.ndarray, hexes: pa.Array, hex_at: np.ndarray) -> pa.Table:
    """Recomputed rows `at` (hex_at: the same rows' positions in `hexes`) as WRITE_COLUMNS."""
    return pa.table(
        [
            _take(rows.fields, rows.fids[at]),
            pa.array(rows.buckets[at]),
            pa.array(rows.counts[at]),
            pa.array(rows.sums[at]),
            full_hex(_take(hexes, hex_at)),
        ],
        names=WRITE_COLUMNS,
    )
