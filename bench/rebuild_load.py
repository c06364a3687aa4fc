"""Loads a bench/rebuild_data.py history into counters through the persister's own paths:
the raw log (persist.rawlog.create_partitions, rows in raw_record's format copied with COPY,
one stream entry per event, all below the project's persist_state.raw_stream_id), the
rollups (persist.rollups.upsert_rollups, all three grains, with sketches) and the
watermarks (persist.state), so that every loaded bucket is sealed and a rebuild's cut covers
every event. Optionally COPYs the same raw rows into a scratch table, timed (the COPY
baseline)."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np

from bench import sketches
from bench.generate import DIM_NAMES, NAMES
from bench.rebuild_data import (
    VOCABS,
    Events,
    GrainRows,
    UidTable,
    check_uid_table,
    day_rows,
    grains_of_day,
    uid_table,
)
from counters.core.buckets import GRAINS
from persist.projects import ensure_project
from persist.rawlog import create_partitions, record_dims
from persist.rollups import upsert_rollups
from persist.schema import RAW_COLUMNS, RAW_TABLE
from persist.secrets import uid_secret
from persist.state import load_state, set_raw_stream_id, set_until

CSV_CHUNK = 1_000_000
"""Events per COPY of the raw log."""
UPSERT_ROWS = 200_000
"""Rollup rows per upsert_rollups call."""
WRITERS = 2
"""Connections writing rollup rows at once (each its own day and grain)."""


@dataclass
class Loaded:
    """What one load wrote and how long it took (seconds); copy_seconds is the timed COPY of
    the same raw rows into the scratch table (0 without one)."""

    events: int
    rollup_rows: int
    seconds: float
    raw_seconds: float
    rollup_seconds: float
    copy_seconds: float


async def load(
    pool: asyncpg.Pool,
    redis: Any,
    redis_key: str,
    project: str,
    ev: Events,
    *,
    end_ms: int,
    minute_low: int,
    uids: int,
    scratch_table: str | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> Loaded:
    """Loads the events of [.., end_ms) as project's history (the project is created; its
    minute rows start at minute_low); every grain's watermark becomes end_ms and the raw
    position f"{end_ms}-0". With scratch_table, the raw rows are also copied into it (a
    plain table shaped like raw_events, created here) and that COPY alone is timed."""
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        await ensure_project(conn, project)
    secret = await uid_secret(pool, project)
    assert secret is not None, f"project {project} has no uid secret"
    table = await asyncio.to_thread(uid_table, secret, uids)
    await sketches.check_against_redis(redis, redis_key)  # the numpy HLL code itself
    await check_uid_table(redis, redis_key, table)  # and on this project's hashed uids
    days = [day for day, _ in ev.day_slices()]
    copy_seconds = 0.0
    async with pool.acquire() as conn:
        await create_partitions(conn, days)
        await record_dims(conn, project, ((d, dim) for d in days for dim in DIM_NAMES))
        if scratch_table:
            await conn.execute(f"DROP TABLE IF EXISTS {scratch_table}")
            await conn.execute(f"CREATE TABLE {scratch_table} (LIKE {RAW_TABLE})")
        async for chunk in _raw_chunks(ev, project, table):
            await conn.copy_to_table(RAW_TABLE, source=chunk, columns=RAW_COLUMNS, format="csv")
            if scratch_table:
                chunk.seek(0)
                t = time.perf_counter()
                await conn.copy_to_table(
                    scratch_table, source=chunk, columns=RAW_COLUMNS, format="csv"
                )
                copy_seconds += time.perf_counter() - t
    raw_seconds = time.perf_counter() - t0 - copy_seconds
    log(f"  raw log: {ev.n:,} events in {raw_seconds:.1f}s")
    t1 = time.perf_counter()
    rows = 0
    spent = {"compute": 0.0, "records": 0.0, "upsert": 0.0}
    queue: asyncio.Queue[GrainRows | None] = asyncio.Queue(maxsize=WRITERS)

    async def writer() -> None:
        nonlocal rows
        async with pool.acquire() as conn:
            while (part := await queue.get()) is not None:
                t = time.perf_counter()
                records = part.records(project)
                rows += len(records)
                spent["records"] += time.perf_counter() - t
                t = time.perf_counter()
                for i in range(0, len(records), UPSERT_ROWS):
                    async with conn.transaction():
                        await upsert_rollups(
                            conn, part.grain, records[i : i + UPSERT_ROWS], additive=False
                        )
                spent["upsert"] += time.perf_counter() - t

    writers = [asyncio.create_task(writer()) for _ in range(WRITERS)]
    try:
        mark = time.perf_counter()
        async for part in _day_rows(ev, table, minute_low):
            spent["compute"] += time.perf_counter() - mark
            await queue.put(part)
            mark = time.perf_counter()
        for _ in writers:
            await queue.put(None)
        await asyncio.gather(*writers)
    finally:
        for task in writers:
            task.cancel()
    async with pool.acquire() as conn:
        async with conn.transaction():
            await load_state(conn, project)
            for grain in GRAINS:
                await set_until(conn, project, grain, end_ms)
            await set_raw_stream_id(conn, project, f"{end_ms}-0")
    log("  rollups time: " + ", ".join(f"{k} {v:.1f}s" for k, v in spent.items()))
    rollup_seconds = time.perf_counter() - t1
    log(f"  rollups: {rows:,} rows in {rollup_seconds:.1f}s")
    return Loaded(
        ev.n,
        rows,
        time.perf_counter() - t0 - copy_seconds,
        raw_seconds,
        rollup_seconds,
        copy_seconds,
    )


async def _day_rows(ev: Events, table: UidTable, minute_low: int) -> AsyncIterator[GrainRows]:
    """Every (day, grain) part's rows, the next one computed in a thread while the caller
    writes the current one."""
    parts = [
        (part, grain, low)
        for day, part in ev.day_slices()
        for grain, low in grains_of_day(day, minute_low)
    ]
    if not parts:
        return
    pending = asyncio.create_task(asyncio.to_thread(day_rows, ev, *_args(parts[0], table)))
    for i in range(len(parts)):
        rows = await pending
        if i + 1 < len(parts):
            nxt = parts[i + 1]
            pending = asyncio.create_task(asyncio.to_thread(day_rows, ev, *_args(nxt, table)))
        yield rows


def _args(part: tuple[slice, Any, int], table: UidTable) -> tuple[Any, ...]:
    sl, grain, low = part
    return sl, table, grain, low


async def _raw_chunks(ev: Events, project: str, table: UidTable) -> AsyncIterator[io.BytesIO]:
    bounds = [(lo, min(lo + CSV_CHUNK, ev.n)) for lo in range(0, ev.n, CSV_CHUNK)]
    if not bounds:
        return
    pending = asyncio.create_task(asyncio.to_thread(raw_csv, ev, project, table, *bounds[0]))
    for i in range(len(bounds)):
        chunk = await pending
        if i + 1 < len(bounds):
            nxt = bounds[i + 1]
            pending = asyncio.create_task(asyncio.to_thread(raw_csv, ev, project, table, *nxt))
        yield chunk


def raw_csv(ev: Events, project: str, table: UidTable, lo: int, hi: int) -> io.BytesIO:
    """Events lo..hi as CSV rows of raw_events (RAW_COLUMNS order) exactly as raw_record
    makes them: dims as a JSON object, the value in micros (0 without one), the uid as the
    project's keyed hash, received_at = ts, no event id, one stream entry per event
    ("<ts>-<index>", seq 0)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pa_csv

    n = hi - lo
    pieces: list[Any] = []
    for i, (dim, vocab) in enumerate(zip(DIM_NAMES, VOCABS, strict=True)):
        values = pa.DictionaryArray.from_arrays(
            pa.array(ev.dims[i, lo:hi].astype(np.int32)), pa.array(vocab)
        ).cast(pa.string())
        pieces += [("{" if i == 0 else ",") + f'"{dim}":"', values, '"']
    dims = pc.binary_join_element_wise(*pieces, "}", "")
    ts = pa.array(ev.ts[lo:hi].astype("datetime64[ms]")).cast(pa.timestamp("ms", tz="UTC"))
    uids = pa.DictionaryArray.from_arrays(pa.array(ev.uid[lo:hi]), pa.array(table.hashed)).cast(
        pa.string()
    )
    stream = pc.binary_join_element_wise(
        pa.array(ev.ts[lo:hi]).cast(pa.string()),
        pa.array(np.arange(lo, hi)).cast(pa.string()),
        "-",
    )
    names = pa.DictionaryArray.from_arrays(
        pa.array(ev.name[lo:hi].astype(np.int32)), pa.array(list(NAMES))
    ).cast(pa.string())
    columns = {
        "project": pa.repeat(project, n),
        "ts": ts,
        "name": names,
        "event_id": pa.nulls(n, pa.string()),
        "dims": dims,
        "value_micros": pa.array(ev.value_micros[lo:hi]),
        "uid": uids,
        "received_at": ts,
        "stream_id": stream,
        "seq": pa.repeat(0, n),
    }
    out = io.BytesIO()
    pa_csv.write_csv(pa.table(columns), out, pa_csv.WriteOptions(include_header=False))
    out.seek(0)
    return out
