"""persist/schema.py against the migrated database: every name it gives exists, column
orders are the tables' own, partition naming works both ways, and stream-id order is the
same in Python and in SQL."""

from __future__ import annotations

import random

import asyncpg

from counters.core.buckets import DAY_MS, HOUR_MS, Grain, bucket_start
from persist.schema import (
    API_KEYS_TABLE,
    KEY_PROJECTS_TABLE,
    MIGRATIONS_TABLE,
    PROJECTS_TABLE,
    RAW_COLUMNS,
    RAW_TABLE,
    RECONCILE_RUNS_TABLE,
    ROLLUP_COLUMNS,
    ROLLUP_TABLE,
    STATE_TABLE,
    STREAM_ORDER_SQL,
    UNTIL_COLUMN,
    partition_day,
    partition_end,
    partition_name,
    stream_order,
)
from tests.support import T0


async def columns(conn: asyncpg.Connection, table: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT column_name FROM information_schema.columns WHERE table_name = $1"
        " AND table_schema = 'public' ORDER BY ordinal_position",
        table,
    )
    return [r["column_name"] for r in rows]


async def test_every_table_and_column_named_exists(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for table in (
            *ROLLUP_TABLE.values(),
            RAW_TABLE,
            STATE_TABLE,
            PROJECTS_TABLE,
            API_KEYS_TABLE,
            KEY_PROJECTS_TABLE,
            RECONCILE_RUNS_TABLE,
            MIGRATIONS_TABLE,
        ):
            assert await columns(conn, table), table
        for table in ROLLUP_TABLE.values():
            # staged rows are inserted with SELECT *: the column order must be the table's
            assert tuple(await columns(conn, table)) == ROLLUP_COLUMNS
        raw = await columns(conn, RAW_TABLE)
        assert set(RAW_COLUMNS) <= set(raw)
        state = await columns(conn, STATE_TABLE)
        assert set(UNTIL_COLUMN.values()) <= set(state)
    assert set(ROLLUP_TABLE) == set(Grain) == set(UNTIL_COLUMN)


def test_partition_names_both_ways() -> None:
    rng = random.Random(7)
    for _ in range(200):
        ts = rng.randrange(0, 4_000_000_000_000)
        day = bucket_start(ts, Grain.day)
        name = partition_name(ts)
        assert name == partition_name(day)
        assert partition_day(name) == day
        assert partition_end(day) == day + DAY_MS
    assert partition_name(T0 - T0 % DAY_MS) == "raw_events_20260301"
    for other in ("raw_events", "raw_events_2026030", "raw_events_20260301x", "rollups_day"):
        assert partition_day(other) is None


async def test_stream_order_is_the_same_in_sql(pool: asyncpg.Pool) -> None:
    rng = random.Random(11)
    ids = [
        f"{rng.choice([0, 9, 10, 99, 1_700_000_000_000 + rng.randrange(HOUR_MS)])}-"
        f"{rng.choice([0, 1, 2, 9, 10, 11, 100])}"
        for _ in range(300)
    ]
    async with pool.acquire() as conn:
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE ids (stream_id text) ON COMMIT DROP")
            await conn.executemany("INSERT INTO ids VALUES ($1)", [(i,) for i in ids])
            in_sql = [
                r["stream_id"]
                for r in await conn.fetch(
                    f"SELECT stream_id FROM ids ORDER BY {STREAM_ORDER_SQL}, stream_id"
                )
            ]
            pivot = ids[0]
            ms, seq = stream_order(pivot)
            below = {
                r["stream_id"]
                for r in await conn.fetch(
                    f"SELECT stream_id FROM ids WHERE {STREAM_ORDER_SQL}"
                    " <= ($1::bigint, $2::bigint)",
                    ms,
                    seq,
                )
            }
    assert in_sql == sorted(ids, key=lambda i: (stream_order(i), i))
    assert below == {i for i in ids if stream_order(i) <= stream_order(pivot)}
    assert stream_order("5") == (5, 0)
