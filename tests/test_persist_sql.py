"""The persist/ SQL modules on their own: advisory locks, raw-log partitions, rollup
upserts (absolute and additive), range reads and replaces, persister state updates."""

from __future__ import annotations

import asyncpg
import pyarrow as pa

from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, Grain
from counters.core.models import RawEvent
from counters.core.rollups import encode_field
from persist.db import Conn
from persist.locks import project_lock, reconcile_claim, try_lock
from persist.rawlog import (
    copy_raw_rows,
    count_raw_days,
    create_partitions,
    drop_partition,
    partitions,
    raw_record,
)
from persist.rebuild_sql import delete_rows, stored_rows, write_rows
from persist.rollups import (
    delete_minutes_before,
    rollup_hll,
    rollup_record,
    upsert_rollups,
)
from persist.schema import RETENTION_LOCK, partition_name
from persist.state import load_state, set_late_applied, set_raw_stream_id, set_until
from tests.support import T0

DAY0 = T0 - T0 % DAY_MS


async def test_project_lock_is_exclusive(pool: asyncpg.Pool, project: str) -> None:
    async with pool.acquire() as a, pool.acquire() as b:
        async with project_lock(a, project, wait=False) as held:
            assert held
            async with project_lock(b, project, wait=False) as other:
                assert not other
            async with project_lock(b, project + "-x", wait=False) as unrelated:
                assert unrelated
        async with project_lock(b, project, wait=True) as again:
            assert again


async def test_try_lock_is_exclusive_and_released(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as a, pool.acquire() as b:
        async with try_lock(a, RETENTION_LOCK) as held:
            assert held
            async with try_lock(b, RETENTION_LOCK) as other:
                assert not other
        async with try_lock(b, RETENTION_LOCK) as later:
            assert later


async def test_partitions_created_listed_dropped(pool: asyncpg.Pool) -> None:
    days = [DAY0 + 400 * DAY_MS, DAY0 + 401 * DAY_MS]
    async with pool.acquire() as conn:
        await create_partitions(conn, days)
        await create_partitions(conn, days)  # idempotent
        listed = await partitions(conn)
        for day in days:
            assert listed[partition_name(day)] == day
        for day in days:
            assert await drop_partition(conn, day) == partition_name(day)
        listed = await partitions(conn)
    assert not {partition_name(d) for d in days} & set(listed)


async def test_upserts_absolute_and_additive(pool: asyncpg.Pool, project: str) -> None:
    field = encode_field("click", ("source",), ("a",))
    other = encode_field("click", (), ())
    bucket = DAY0 + 3 * HOUR_MS
    async with pool.acquire() as conn:
        async with conn.transaction():
            await upsert_rollups(
                conn,
                Grain.hour,
                [
                    rollup_record(project, field, bucket, 5, 50, b"x"),
                    rollup_record(project, other, bucket, 7, 0, None),
                ],
                additive=False,
            )
        async with conn.transaction():
            await upsert_rollups(
                conn, Grain.hour, [rollup_record(project, field, bucket, 2, 3, None)], additive=True
            )
        got = await read_rollup_range(conn, project, Grain.hour, DAY0, DAY0 + DAY_MS, None)
        assert got == {(bucket, field): (7, 53, b"x"), (bucket, other): (7, 0, None)}
        assert await rollup_hll(conn, project, Grain.hour, bucket, field) == b"x"
        assert await rollup_hll(conn, project, Grain.hour, bucket + HOUR_MS, field) is None
        async with conn.transaction():  # absolute again: overwrites
            await upsert_rollups(
                conn,
                Grain.hour,
                [rollup_record(project, field, bucket, 1, 1, b"y")],
                additive=False,
            )
        got = await read_rollup_range(conn, project, Grain.hour, bucket, bucket + 1, "click")
        assert got[(bucket, field)] == (1, 1, b"y")
        async with conn.transaction():  # rebuild's columnar writes: rows written, rows deleted
            await write_rows(
                conn,
                project,
                Grain.hour,
                [
                    pa.table(
                        {
                            "field": [other],
                            "bucket": [bucket + HOUR_MS],
                            "count": [4],
                            "sum": [4],
                            "hll": pa.array([None], pa.string()),
                        }
                    )
                ],
            )
            await delete_rows(
                conn,
                project,
                Grain.hour,
                [pa.table({"field": [field, other], "bucket": [bucket, bucket]})],
            )
        got = await read_rollup_range(conn, project, Grain.hour, DAY0, DAY0 + DAY_MS, None)
        assert got == {(bucket + HOUR_MS, other): (4, 4, None)}


async def read_rollup_range(
    conn: Conn, project: str, grain: Grain, low: int, high: int, name: str | None
) -> dict[tuple[int, str], tuple[int, int, bytes | None]]:
    """The stored rows of [low, high) as rebuild reads them (sketch: bytes 0-4 and 16-)."""
    rows = (await stored_rows(conn, project, grain, low, high, name)).to_pylist()
    return {
        (r["bucket"], r["field"]): (
            r["count"],
            r["sum"],
            None if r["hll"] is None else bytes.fromhex(r["hll"]),
        )
        for r in rows
    }


async def test_delete_minutes_before(pool: asyncpg.Pool, project: str) -> None:
    field = encode_field("view", (), ())
    async with pool.acquire() as conn:
        async with conn.transaction():
            await upsert_rollups(
                conn,
                Grain.minute,
                [rollup_record(project, field, DAY0 + i * MINUTE_MS, 1, 0, None) for i in range(4)],
                additive=False,
            )
        assert await delete_minutes_before(conn, DAY0 + 2 * MINUTE_MS) >= 2
        got = await read_rollup_range(conn, project, Grain.minute, DAY0, DAY0 + DAY_MS, "view")
    assert sorted(b for b, _ in got) == [DAY0 + 2 * MINUTE_MS, DAY0 + 3 * MINUTE_MS]


async def test_state_updates(pool: asyncpg.Pool, project: str) -> None:
    async with pool.acquire() as conn:
        await set_until(conn, project, Grain.hour, DAY0 + HOUR_MS)
        await set_until(conn, project, Grain.hour, DAY0, forward_only=True)  # not backwards
        await set_until(conn, project, Grain.day, DAY0)
        await set_late_applied(conn, project, 3)
        await set_raw_stream_id(conn, project, "12-3")
        state = await load_state(conn, project)
    assert state.until(Grain.hour) == DAY0 + HOUR_MS
    assert state.until(Grain.day) == DAY0
    assert state.until(Grain.minute) == 0
    assert (state.late_applied, state.raw_stream_id) == (3, "12-3")


async def test_reconcile_claim_is_exclusive_and_apart_from_the_project_lock(
    pool: asyncpg.Pool, project: str
) -> None:
    async with pool.acquire() as a, pool.acquire() as b:
        async with reconcile_claim(a, project, wait=False) as held:
            assert held
            async with reconcile_claim(b, project, wait=False) as other:
                assert not other
            async with project_lock(b, project, wait=False) as persister:
                assert persister
        async with reconcile_claim(b, project, wait=False) as later:
            assert later


async def test_count_raw_days_groups_by_utc_day(pool: asyncpg.Pool, project: str) -> None:
    stamps = [DAY0 - 1, DAY0, DAY0 + DAY_MS - 1, DAY0 + DAY_MS, DAY0 + DAY_MS + HOUR_MS]
    names = ["a", "a", "b", "a", "b"]
    rows = [
        raw_record(project, RawEvent(n, ts, f"e{i}", {}, 0, None, ts), f"{ts}-0", i)
        for i, (n, ts) in enumerate(zip(names, stamps, strict=True))
    ]
    async with pool.acquire() as conn:
        await create_partitions(conn, [DAY0 - DAY_MS, DAY0, DAY0 + DAY_MS])
        await copy_raw_rows(conn, rows)
        every = await count_raw_days(conn, project, DAY0 - DAY_MS, DAY0 + 2 * DAY_MS, None)
        assert every == {DAY0 - DAY_MS: 1, DAY0: 2, DAY0 + DAY_MS: 2}
        assert await count_raw_days(conn, project, DAY0, DAY0 + DAY_MS, "b") == {DAY0: 1}
        assert await count_raw_days(conn, project, DAY0 + 2 * DAY_MS, DAY0 + 3 * DAY_MS, None) == {}
