"""The "Redis total loss" fault's bookkeeping: the last persisted point recorded at each loss,
and what the verifier may then tolerate.

At a loss the harness records what Postgres holds: `persist_state` just before Redis is
emptied, and every event id in `raw_events` just after. An acknowledged event may then be
missing only if (a) its batch was first posted before Redis was empty (it may have been
applied to the Redis that was lost) and (b) its id was not in Postgres's raw log right after
the loss. Those are *at risk*; every other acknowledged event must be in the raw log exactly
once. Postgres rows are never deleted during a run, so "in Postgres right after the loss"
implies "in Postgres at the end".

Counts: the restore replays the raw log's events of minutes at or after Postgres's minute
watermark, so those must all be counted. An event of such a batch for an earlier minute was
counted in Postgres's minute row if it was hot; if it went the late path (its minute was
already sealed) and its generation was not applied yet, its count went with Redis: the
rollups lack it until a rebuild recomputes those buckets from the raw log. Which way each
went is known only for events acknowledged before their minute could seal (its end plus
grace): those were hot. Every other such event's count is *at risk* (the verifier's floor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from counters.core.buckets import MINUTE_MS
from counters.harness.faults.cluster import Cluster, Log
from counters.harness.faults.driver import Event, Span

SEAL_SLACK_MS = 250
"""Clock slack between the driver and the persister's sealing edge."""


@dataclass(frozen=True)
class Loss:
    """One total loss of Redis and the last persisted point around it."""

    mode: str
    done_at: float
    """time.monotonic() once Redis was empty."""
    minute_until: int
    """Postgres's minute watermark around the loss (the larger of before and after)."""
    hour_until: int
    day_until: int
    late_applied: int
    raw_stream_id: str
    """The rest of persist_state just before the loss."""
    in_postgres: frozenset[str]
    """Event ids in raw_events right after the loss."""


async def persisted_state(cluster: Cluster) -> dict[str, object]:
    """The project's persist_state row (watermarks, late_applied, raw cursor). Of a split
    project: shard 0's late generation and cursor, the highest minute watermark of any
    shard (what is at risk at a loss is judged against the most that may be persisted) and
    the lowest hour and day watermarks (a bucket is sealed only once sealed in every
    shard: the reads after a loss hold those exact)."""
    conn = await asyncpg.connect(cluster.database_url, timeout=10)
    try:
        row = await conn.fetchrow(
            "SELECT max(minute_until) AS minute_until, min(hour_until) AS hour_until,"
            " min(day_until) AS day_until,"
            " max(late_applied) FILTER (WHERE project = $2) AS late_applied,"
            " max(raw_stream_id) FILTER (WHERE project = $2) AS raw_stream_id"
            " FROM persist_state WHERE project = ANY($1) HAVING count(*) > 0",
            cluster.stored,
            cluster.project,
        )
    finally:
        await conn.close()
    if row is None:
        return {
            "minute_until": 0,
            "hour_until": 0,
            "day_until": 0,
            "late_applied": 0,
            "raw_stream_id": "0-0",
        }
    return dict(row)


async def raw_ids(cluster: Cluster) -> frozenset[str]:
    """Every event id of the project in Postgres's raw log."""
    conn = await asyncpg.connect(cluster.database_url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT event_id FROM raw_events WHERE project = ANY($1) AND event_id IS NOT NULL",
            cluster.stored,
        )
    finally:
        await conn.close()
    return frozenset(r["event_id"] for r in rows)


@dataclass
class LossAccount:
    """What the losses of a run allow: event ids at risk, and ids whose count is at risk."""

    at_risk: set[str] = field(default_factory=set)
    count_at_risk: set[str] = field(default_factory=set)
    per_loss: list[str] = field(default_factory=list)
    """One line per loss: mode, persisted point, how many at risk."""


def account(
    losses: Sequence[Loss], acked: Sequence[Event], spans: Sequence[Span], grace_ms: int = 0
) -> LossAccount:
    """The union over every loss of the events at risk (first posted before Redis was empty,
    not in Postgres's raw log right after) and of the events whose count is at risk (for a
    persisted minute, and not surely applied before that minute could seal: acknowledged at
    or after its end + grace)."""
    out = LossAccount()
    for loss in losses:
        risk = 0
        counts = 0
        for span in spans:
            if span.first_post > loss.done_at:
                continue
            for ev in acked[span.lo : span.hi]:
                eid, ts = ev[0], ev[2]
                if eid not in loss.in_postgres:
                    out.at_risk.add(eid)
                    risk += 1
                minute = ts - ts % MINUTE_MS
                could_be_late = span.acked_ms + SEAL_SLACK_MS >= minute + MINUTE_MS + grace_ms
                if minute < loss.minute_until and could_be_late:
                    out.count_at_risk.add(eid)
                    counts += 1
        out.per_loss.append(
            f"{loss.mode}: Postgres held minute_until={loss.minute_until}"
            f" late_applied={loss.late_applied} raw_stream_id={loss.raw_stream_id} and"
            f" {len(loss.in_postgres)} raw events; {risk} acknowledged (or in flight) events"
            f" not in it were at risk, {counts} were for persisted minutes and may have gone"
            " the late path (their count is at risk)"
        )
    return out


async def check_hours_days_are_their_minutes(cluster: Cluster, log: Log) -> list[str]:
    """Every sealed hour and day row in Postgres equals the sum of its minute rows (count and
    sum, per name, rollup and dims). Returns the first differences (empty: all agree)."""
    sql = """
    WITH st AS (SELECT hour_until, day_until FROM persist_state WHERE project = $1),
    m AS (
      SELECT name, rollup, dims, date_trunc($2, bucket AT TIME ZONE 'UTC') AS b,
             sum(count) AS c, sum(sum_micros) AS s
      FROM rollups_minute WHERE project = $1 GROUP BY 1, 2, 3, 4),
    g AS (
      SELECT name, rollup, dims, bucket AT TIME ZONE 'UTC' AS b, count AS c, sum_micros AS s
      FROM {table} WHERE project = $1)
    SELECT coalesce(g.name, m.name) AS name, coalesce(g.rollup, m.rollup) AS rollup,
           coalesce(g.dims, m.dims) AS dims, coalesce(g.b, m.b) AS b,
           coalesce(g.c, 0) AS gc, coalesce(m.c, 0) AS mc,
           coalesce(g.s, 0) AS gs, coalesce(m.s, 0) AS ms
    FROM g FULL JOIN m USING (name, rollup, dims, b), st
    WHERE coalesce(g.b, m.b) < to_timestamp({until} / 1000.0) AT TIME ZONE 'UTC'
      AND (coalesce(g.c, 0) <> coalesce(m.c, 0) OR coalesce(g.s, 0) <> coalesce(m.s, 0))
    ORDER BY 4, 1, 2, 3 LIMIT 20
    """
    out: list[str] = []
    conn = await asyncpg.connect(cluster.database_url, timeout=10)
    try:
        for grain, table, until in (
            ("hour", "rollups_hour", "st.hour_until"),
            ("day", "rollups_day", "st.day_until"),
        ):
            rows = [
                r
                for stored in cluster.stored
                for r in await conn.fetch(sql.format(table=table, until=until), stored, grain)
            ]
            for r in rows:
                out.append(
                    f"{grain} {r['b']:%Y-%m-%dT%H:%M}Z {r['name']} {r['rollup'] or 'total'}"
                    f"={','.join(r['dims'])}: row count {r['gc']} sum {r['gs']}, its minutes"
                    f" count {r['mc']} sum {r['ms']}"
                )
    finally:
        await conn.close()
    log(f"verify: sealed hour and day rows vs their minute rows: {len(out)} differ (first 20)")
    return out
