"""Every Postgres name counters uses, written once: tables, columns, advisory-lock ids,
raw-log partition names (both directions) and the stream-id order stored with raw rows.

The migrations under persist/migrations/ create these objects; this module is what the
Python code refers to them by.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from counters.core.buckets import DAY_MS, Grain, bucket_start, from_datetime, to_datetime

ROLLUP_TABLE = {
    Grain.minute: "rollups_minute",
    Grain.hour: "rollups_hour",
    Grain.day: "rollups_day",
}
"""Rollup table of each stored grain."""
ROLLUP_COLUMNS = ("project", "name", "rollup", "dims", "bucket", "count", "sum_micros", "hll")
"""Columns of a rollup row, in the order staged rows are copied."""
RAW_TABLE = "raw_events"
RAW_COLUMNS = (
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
)
"""Columns of a raw-log row, in the order they are copied."""
STAGE_TABLE = "stage_rollups"
"""Session-local temporary table rollup rows are copied into before an upsert."""
STATE_TABLE = "persist_state"
UNTIL_COLUMN = {Grain.minute: "minute_until", Grain.hour: "hour_until", Grain.day: "day_until"}
"""Column of persist_state holding each grain's watermark (every bucket before it is in
Postgres)."""
MIGRATIONS_TABLE = "schema_migrations"
PROJECTS_TABLE = "projects"
API_KEYS_TABLE = "api_keys"
KEY_PROJECTS_TABLE = "api_key_projects"
RECONCILE_RUNS_TABLE = "reconcile_runs"
DEAD_LETTERS_TABLE = "raw_dead_letters"
"""Raw-log stream entries the persister could not copy, moved aside bytes intact (008)."""
RAW_DIMS_TABLE = "raw_dims"
"""Dim names the raw events of each project carry, per UTC day (011)."""
LINKS_TABLE = "links"
"""Click-tracking links (013): id, project, target, name, dims, created_at, disabled_at."""
COPY_FAILURES_TABLE = "raw_copy_failures"
"""Failed copies of raw-log entries not moved yet, one row per (project, stream id)."""

# Advisory-lock ids (pg_advisory_lock keys). One number per purpose, never reused.
MIGRATION_LOCK = 7_412_001
"""Held while migrations run."""
PROJECT_LOCK_CLASS = 7_412_002
"""With hashtext(project): one persister (or rebuild) works on a project at a time."""
PARTITION_LOCK = 7_412_003
"""Held (per transaction) while raw-log partitions are created."""
RETENTION_LOCK = 7_412_004
"""Held while retention drops partitions and deletes old minute rows."""
RECONCILE_LOCK = 7_412_005
"""Held by the nightly reconcile, so one process ran it (before issue 12: unused since the
nightly run claims projects one by one with RECONCILE_CLAIM_CLASS; kept, never reused)."""
RECONCILE_CLAIM_CLASS = 7_412_006
"""With hashtext(project): one process reconciles a project at a time (the nightly run's
per-project claim, so several processes share a night's projects)."""

_PARTITION = re.compile("^" + RAW_TABLE + r"_(\d{8})$")


def partition_name(day_ms: int) -> str:
    """Name of the raw-log partition holding the UTC day that starts at day_ms."""
    return RAW_TABLE + "_" + to_datetime(bucket_start(day_ms, Grain.day)).strftime("%Y%m%d")


def partition_day(name: str) -> int | None:
    """Start (epoch ms) of the UTC day a raw-log partition holds; None if name is not one."""
    m = _PARTITION.match(name)
    if m is None:
        return None
    return from_datetime(datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC))


def partition_end(day_ms: int) -> int:
    """End (exclusive, epoch ms) of the partition starting at day_ms."""
    return day_ms + DAY_MS


def stream_order(stream_id: str) -> tuple[int, int]:
    """Orderable form of a Redis stream id `ms-seq`: the (stream_ms, seq) pair raw rows
    store, compared the same way in Python and in SQL (row comparison on the pair)."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


STREAM_ORDER_SQL = "(split_part(stream_id, '-', 1)::bigint, split_part(stream_id, '-', 2)::bigint)"
"""SQL expression ordering raw rows by stream id exactly as stream_order() does; compare it
with a `($n, $m)` row of stream_order()'s pair."""


def epoch_ms_sql(column: str) -> str:
    """SQL of a timestamptz column as epoch milliseconds (bigint): how hot read paths fetch
    buckets, cheaper than decoding a timestamptz per row in Python."""
    return f"(extract(epoch FROM {column}) * 1000)::bigint"
