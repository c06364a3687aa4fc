"""A rollup row that differs from what it should hold: what rebuild and reconcile report,
print and record in reconcile_runs."""

from __future__ import annotations

import msgspec

from counters.core.buckets import Grain, format_ts
from counters.core.rollups import decode_field

DiffRow = tuple[str, str, str, str, tuple[str, ...]]
"""(grain, bucket, name, rollup, dims): which row a diff is about."""


class BucketDiff(msgspec.Struct):
    """One rollup row whose stored value differs from what its basis says: the raw log
    ("raw"), or for an hour or day row the rows it is made of ("minutes", "hours")."""

    grain: str
    bucket: str
    name: str
    rollup: str
    dims: list[str]
    stored_count: int
    rebuilt_count: int
    stored_sum: int
    rebuilt_sum: int
    uniques_differ: bool
    basis: str = "raw"

    def row(self) -> DiffRow:
        """Which row this is (the same row found on two bases is one discrepancy)."""
        return (self.grain, self.bucket, self.name, self.rollup, tuple(self.dims))


def bucket_diff(
    grain: Grain,
    bucket: int,
    field: str,
    stored: tuple[int, int],
    rebuilt: tuple[int, int],
    uniques_differ: bool,
    basis: str = "raw",
) -> BucketDiff:
    """The diff of one (grain, bucket, field) row: stored and rebuilt (count, sum_micros)."""
    name, rollup, values = decode_field(field)
    return BucketDiff(
        grain.name,
        format_ts(bucket),
        name,
        ",".join(rollup),
        list(values),
        stored[0],
        rebuilt[0],
        stored[1],
        rebuilt[1],
        uniques_differ,
        basis,
    )
