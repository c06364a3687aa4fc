"""Recomputed rollup rows (counters/engines/recompute.py) against the stored ones, in bulk:
which rows differ, what to write and what to delete. Counts, sums and sketches are compared
column at a time; a sketch whose bytes differ while counts and sums agree is compared
register by register (persist/hll.py) before it counts as a difference, since two encodings
of the same registers are the same sketch."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from counters.core.buckets import Grain
from counters.engines.diffs import BucketDiff, bucket_diff
from counters.engines.recompute import GrainRows
from counters.engines.sketches import full_blob
from persist.hll import same_registers
from persist.rollups import Record, rollup_record


@dataclass
class RowDiffs:
    """What a comparison found: rows compared, the differing ones (with their bucket start
    in ms, for grouping), rows to write (absolute) and rows to delete, per grain."""

    project: str
    rows: int = 0
    compared: dict[Grain, list[np.ndarray]] = field(default_factory=dict)
    diffs: list[tuple[int, BucketDiff]] = field(default_factory=list)
    writes: dict[Grain, list[Record]] = field(default_factory=dict)
    deletes: dict[Grain, list[tuple[int, str]]] = field(default_factory=dict)

    def rows_in(self, grain: Grain, low: int, high: int) -> int:
        """Rows of this grain compared whose bucket is in [low, high)."""
        return sum(int(((b >= low) & (b < high)).sum()) for b in self.compared.get(grain, []))


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
    s_fid = pc.index_in(stored.column("field"), value_set=rows.fields).to_numpy(
        zero_copy_only=False
    )
    s_bucket = stored.column("bucket").to_numpy()
    matched_fid = ~np.isnan(s_fid) if s_fid.dtype.kind == "f" else np.ones(s_fid.size, bool)
    fid = np.where(matched_fid, np.nan_to_num(s_fid), 0).astype(np.int64)
    s_key = ((s_bucket - day0) // size) * rows.width + fid
    pos = np.searchsorted(keys, s_key)
    pos_ok = np.minimum(pos, max(keys.size - 1, 0))
    hit = matched_fid & (pos < keys.size) & (keys[pos_ok] == s_key if keys.size else False)
    # recomputed side: count, sum, sketch hex of each row in `inside`
    r_count = rows.counts[inside]
    r_sum = rows.sums[inside]
    sk = rows.sketches
    spos = np.searchsorted(sk.keys, keys)
    spos_ok = np.minimum(spos, max(sk.keys.size - 1, 0))
    has_sk = (spos < sk.keys.size) & (sk.keys[spos_ok] == keys if sk.keys.size else False)
    hexes = sk.hex()
    stored_count = stored.column("count").to_numpy(zero_copy_only=False)
    stored_sum = stored.column("sum").to_numpy(zero_copy_only=False)
    stored_hex = stored.column("hll")
    seen = np.zeros(keys.size, dtype=bool)
    hit_at = np.flatnonzero(hit)
    r_at = pos[hit_at]
    seen[r_at] = True
    same = (stored_count[hit_at] == r_count[r_at]) & (stored_sum[hit_at] == r_sum[r_at])
    if sk.keys.size:
        ours = pc.take(hexes, pa.array(np.where(has_sk[r_at], spos_ok[r_at], 0)))
        ours = pc.if_else(pa.array(has_sk[r_at]), ours, pa.nulls(len(r_at), pa.string()))
    else:
        ours = pa.nulls(len(r_at), pa.string())
    theirs = pc.take(stored_hex, pa.array(hit_at))
    both_null = pc.and_(pc.is_null(ours), pc.is_null(theirs))
    equal = pc.fill_null(pc.equal(ours, theirs), False)
    sketch_same = pc.or_(both_null, equal).to_numpy(zero_copy_only=False)
    grain = rows.grain
    for j in np.flatnonzero(~(same & sketch_same)).tolist():
        si, r = int(hit_at[j]), int(r_at[j])
        mine = sk.blob(int(spos_ok[r])) if has_sk[r] else None
        hx = stored_hex[si].as_py()
        theirs_blob = bytes.fromhex(hx) if hx is not None else None
        sketch_differs = not bool(sketch_same[j]) and not same_registers(
            full_blob(mine) if mine is not None else None,
            full_blob(theirs_blob) if theirs_blob is not None else None,
        )
        if bool(same[j]) and not sketch_differs:
            continue
        _add(
            found,
            project,
            rows,
            inside[r],
            mine,
            (int(stored_count[si]), int(stored_sum[si])),
            sketch_differs,
        )
    for r in np.flatnonzero(~seen).tolist():
        mine = sk.blob(int(spos_ok[r])) if has_sk[r] else None
        _add(found, project, rows, inside[r], mine, (0, 0), mine is not None)
    for si in np.flatnonzero(~hit).tolist():
        bucket = int(s_bucket[si])
        fld = str(stored.column("field")[si].as_py())
        hx = stored_hex[si].as_py()
        found.diffs.append(
            (
                bucket,
                bucket_diff(
                    grain,
                    bucket,
                    fld,
                    (int(stored_count[si]), int(stored_sum[si])),
                    (0, 0),
                    hx is not None,
                ),
            )
        )
        found.deletes.setdefault(grain, []).append((bucket, fld))


def _add(
    found: RowDiffs,
    project: str,
    rows: GrainRows,
    r: int,
    blob: bytes | None,
    stored: tuple[int, int],
    sketch_differs: bool,
) -> None:
    bucket = int(rows.buckets[r])
    fld = str(rows.fields[int(rows.fids[r])].as_py())
    count, total = int(rows.counts[r]), int(rows.sums[r])
    found.diffs.append(
        (bucket, bucket_diff(rows.grain, bucket, fld, stored, (count, total), sketch_differs))
    )
    found.writes.setdefault(rows.grain, []).append(
        rollup_record(project, fld, bucket, count, total, full_blob(blob) if blob else None)
    )
