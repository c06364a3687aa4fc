"""Reads at volume: the same dashboard questions answered by counters (rollups), by Postgres
scanning the raw events with the best index it can use, and by DuckDB scanning the same
events from Parquet, at growing volumes.

    .venv/bin/python -m bench reads [--levels 1000000,10000000,100000000] [--quick] [--runs 30]

History: one project, 365 days of events written in time order, 3 names (click 55%),
1,000 links and 100 affiliates (Zipf), 50 sources, 200 countries, 5 devices, uids out of
2M. counters' history is loaded through the persister's own code paths (`upsert_rollups`
for rollups; COPY into the partitioned raw log, as CSV built by pyarrow), with the
watermarks advanced so every read answers from Postgres history plus Redis, exactly as in
production. The HyperLogLog sketches are computed with numpy byte for byte as Redis PFADD
builds them (bench/sketches.py, checked against Redis before each load): PFADD of 100M uids
would take longer than the rest of the load. Loaded rollups: the total at minute (last 14
days), hour and day grain, every single-dim rollup at day grain; uniques sketches on the
total rollup (what the questions read; live ingest also writes per-dim hour and minute
rows, which these queries do not touch: each reads its own index range).

Questions (name=click):
  sparkline  30-day hourly series          (720 buckets)
  trend      1-year daily series            (365 buckets)
  top10      top-10 links over 30 days, daily series each, plus __other__
  uniques    distinct uids over 30 days (counters: HLL union; raw engines: exact)
counters latency is server-side (the Server-Timing header) and client wall-clock over a
keep-alive connection; Postgres and DuckDB are client wall-clock of the query. A raw engine
gets 20 s per question and level (at least 5 samples), so at 100M it has fewer samples.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np

from bench import sketches
from counters import embedded
from counters.core.buckets import DAY_MS, HOUR_MS, MINUTE_MS, to_datetime
from counters.core.clock import SystemClock
from counters.core.config import Settings
from counters.harness.servers import Backends, create_database, drop_database
from counters.harness.service import Service, service_env
from counters.services import open_services
from persist.projects import create_key
from persist.rollups import upsert_rollups
from persist.schema import RAW_COLUMNS

NAMES = np.array(["click", "view", "conversion"])
DIMS = ("link", "source", "country", "device", "affiliate")
CARD = {"link": 1000, "source": 50, "country": 200, "device": 5, "affiliate": 100}
ZIPF = {"link", "affiliate"}
UIDS = 2_000_000
SPAN_DAYS = 365
MINUTE_DAYS = 14
QUESTIONS = ("sparkline", "trend", "top10", "uniques")
RESULTS = Path(__file__).parent / "RESULTS.md"
PLOT = Path(__file__).parent / "reads.png"


@dataclass
class History:
    """Columnar synthetic events, in time order."""

    ts: np.ndarray
    name: np.ndarray
    dims: dict[str, np.ndarray]
    uid: np.ndarray
    value: np.ndarray
    end: int

    @property
    def n(self) -> int:
        return int(self.ts.size)


def generate(n: int, end_ms: int, seed: int = 1) -> History:
    """n events uniformly over the SPAN_DAYS before end_ms, sorted by time."""
    rng = np.random.default_rng(seed)
    span = SPAN_DAYS * DAY_MS
    ts = np.sort(rng.integers(end_ms - span, end_ms, size=n, dtype=np.int64))
    name = rng.choice(3, size=n, p=[0.55, 0.35, 0.10]).astype(np.int8)
    dims: dict[str, np.ndarray] = {}
    for d in DIMS:
        k = CARD[d]
        if d in ZIPF:
            w = 1.0 / np.arange(1, k + 1)
            dims[d] = rng.choice(k, size=n, p=w / w.sum()).astype(np.int32)
        else:
            dims[d] = rng.integers(0, k, size=n, dtype=np.int32)
    uid = rng.integers(0, UIDS, size=n, dtype=np.int64)
    value = np.where(name == 2, rng.integers(100, 100_000, size=n) * 10_000, 0).astype(np.int64)
    return History(ts, name, dims, uid, value, end_ms)


def dim_value(d: str, code: int) -> str:
    return f"{d[:2]}{code}"


# -- counters: load ----------------------------------------------------------------------


async def _aggregate_rows(
    h: History, project: str, grain_ms: int, lo: int, dim: str | None
) -> list[tuple[Any, ...]]:
    """Rollup rows (count, sum) of one rollup at one grain, for events at or after lo."""
    sel = h.ts >= lo
    bucket = (h.ts[sel] // grain_ms) * grain_ms
    name = h.name[sel].astype(np.int64)
    code = h.dims[dim][sel].astype(np.int64) if dim else np.zeros(bucket.size, dtype=np.int64)
    k = CARD[dim] if dim else 1
    key = ((bucket // grain_ms) * 3 + name) * k + code
    uniq, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=h.value[sel], minlength=uniq.size).astype(np.int64)
    rows = []
    rollup = dim or ""
    for u, c, s in zip(uniq.tolist(), counts.tolist(), sums.tolist(), strict=True):
        code_v = u % k
        rest = u // k
        nm = NAMES[rest % 3]
        b = (rest // 3) * grain_ms
        dims_list = [dim_value(dim, code_v)] if dim else []
        rows.append((project, str(nm), rollup, dims_list, to_datetime(b), c, s, None))
    return rows


def total_sketches(h: History) -> dict[int, dict[tuple[str, int], bytes]]:
    """HLL sketch per (name, bucket) of the total rollup at hour and day grain (keyed by
    grain in ms), computed with numpy exactly as Redis PFADD would build them (see
    bench/sketches.py; checked against Redis before the first load)."""
    h0 = int(h.ts.min()) // DAY_MS * 24
    hours = (int(h.ts.max()) // HOUR_MS - h0) // 24 * 24 + 24
    regs = np.zeros((3 * hours, sketches.REGISTERS), dtype=np.uint8)
    chunk = 10_000_000
    for lo in range(0, h.n, chunk):
        hi = min(lo + chunk, h.n)
        bucket = h.name[lo:hi].astype(np.int64) * hours + (h.ts[lo:hi] // HOUR_MS - h0)
        index, rank = sketches.index_and_rank(sketches.uid_hashes(h.uid[lo:hi]))
        flat = regs.reshape(-1)
        np.maximum.at(flat, bucket * sketches.REGISTERS + index, rank)
    by_hour = regs.reshape(3, hours, sketches.REGISTERS)
    by_day = by_hour.reshape(3, hours // 24, 24, sketches.REGISTERS).max(axis=2)
    out: dict[int, dict[tuple[str, int], bytes]] = {HOUR_MS: {}, DAY_MS: {}}
    for grain_ms, grid in ((HOUR_MS, by_hour), (DAY_MS, by_day)):
        per_day = grain_ms // HOUR_MS
        for n in range(3):
            for i in np.flatnonzero(grid[n].any(axis=1)).tolist():
                blob = sketches.encode(grid[n, i])
                if blob is not None:
                    out[grain_ms][(str(NAMES[n]), (h0 + i * per_day) * HOUR_MS)] = blob
    return out


CSV_CHUNK = 2_000_000
"""Events per COPY when loading (CSV built by pyarrow: 100M events stay well under an hour)."""


def _dim_strings(h: History, d: str, lo: int, hi: int) -> Any:
    import pyarrow as pa

    labels = pa.array([dim_value(d, c) for c in range(CARD[d])])
    return pa.DictionaryArray.from_arrays(pa.array(h.dims[d][lo:hi]), labels).cast(pa.string())


def _csv(columns: dict[str, Any]) -> io.BytesIO:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    out = io.BytesIO()
    pa_csv.write_csv(pa.table(columns), out, pa_csv.WriteOptions(include_header=False))
    out.seek(0)
    return out


def _ts(ms: np.ndarray) -> Any:
    import pyarrow as pa

    return pa.array(ms.astype("datetime64[ms]")).cast(pa.timestamp("ms", tz="UTC"))


async def csv_chunks(h: History, build: Any, *args: Any) -> AsyncIterator[io.BytesIO]:
    """CSV chunks of the history, each built in a thread while the previous one is being
    copied (pyarrow releases the GIL, so building and COPY overlap on two cores)."""
    bounds = [(lo, min(lo + CSV_CHUNK, h.n)) for lo in range(0, h.n, CSV_CHUNK)]
    if not bounds:
        return
    pending = asyncio.create_task(asyncio.to_thread(build, h, *args, *bounds[0]))
    for i in range(len(bounds)):
        chunk = await pending
        if i + 1 < len(bounds):
            pending = asyncio.create_task(asyncio.to_thread(build, h, *args, *bounds[i + 1]))
        yield chunk


def raw_log_csv(h: History, project: str, lo: int, hi: int) -> io.BytesIO:
    """Events lo..hi as CSV rows of counters' raw_events (RAW_COLUMNS order), the way the
    persister stores them: dims as a JSON object, one stream entry id per event."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = hi - lo
    parts: list[Any] = []
    for i, d in enumerate(DIMS):
        parts += [("{" if i == 0 else ",") + f'"{d}":"', _dim_strings(h, d, lo, hi), '"']
    dims = pc.binary_join_element_wise(*parts, "}", "")
    ts = _ts(h.ts[lo:hi])
    stream = pc.binary_join_element_wise(
        pa.array(h.ts[lo:hi]).cast(pa.string()), pa.array(np.arange(lo, hi)).cast(pa.string()), "-"
    )
    return _csv(
        {
            "project": pa.repeat(project, n),
            "ts": ts,
            "name": pa.array(NAMES[h.name[lo:hi]]),
            "event_id": pa.nulls(n, pa.string()),
            "dims": dims,
            "value_micros": pa.array(h.value[lo:hi]),
            "uid": pc.binary_join_element_wise("u", pa.array(h.uid[lo:hi]).cast(pa.string()), ""),
            "received_at": ts,
            "stream_id": stream,
            "seq": pa.repeat(0, n),
        }
    )


def baseline_csv(h: History, lo: int, hi: int) -> io.BytesIO:
    """Events lo..hi as CSV rows of the plain raw-events table the raw-scan baseline reads."""
    import pyarrow as pa
    import pyarrow.compute as pc

    cols: dict[str, Any] = {"ts": _ts(h.ts[lo:hi]), "name": pa.array(NAMES[h.name[lo:hi]])}
    for d in DIMS:
        cols[d] = _dim_strings(h, d, lo, hi)
    cols["uid"] = pc.binary_join_element_wise("u", pa.array(h.uid[lo:hi]).cast(pa.string()), "")
    cols["value"] = pa.array(h.value[lo:hi])
    return _csv(cols)


async def load_counters(
    pool: asyncpg.Pool, redis: Any, prefix: str, project: str, h: History, log: Any
) -> float:
    """Loads history into counters' rollups and raw log; returns seconds taken."""
    t0 = time.perf_counter()
    end = h.end
    plan: list[tuple[int, int, str | None]] = [
        (DAY_MS, end - SPAN_DAYS * DAY_MS, None),
        (HOUR_MS, end - SPAN_DAYS * DAY_MS, None),
        (MINUTE_MS, end - MINUTE_DAYS * DAY_MS, None),
        *[(DAY_MS, end - SPAN_DAYS * DAY_MS, d) for d in DIMS],
    ]
    grains = {DAY_MS: "day", HOUR_MS: "hour", MINUTE_MS: "minute"}
    from counters.core.buckets import GRAIN_BY_NAME

    await sketches.check_against_redis(redis, f"{prefix}:{{p:bench-sketch}}:check")
    sketch = await asyncio.to_thread(total_sketches, h)
    log(f"  sketches (numpy, as PFADD builds them) {time.perf_counter() - t0:.0f}s")
    for grain_ms, lo, dim in plan:
        rows = await _aggregate_rows(h, project, grain_ms, lo, dim)
        if dim is None and grain_ms != MINUTE_MS:
            blobs = sketch[grain_ms]
            rows = [(*r[:7], blobs.get((r[1], int(r[4].timestamp() * 1000)))) for r in rows]
        grain = GRAIN_BY_NAME[grains[grain_ms]]
        async with pool.acquire() as conn:
            for i in range(0, len(rows), 200_000):
                async with conn.transaction():
                    await upsert_rollups(conn, grain, rows[i : i + 200_000], additive=False)
        log(
            f"  rollups {grains[grain_ms]:6} {dim or 'total':9} {len(rows):>9,} rows"
            f" {time.perf_counter() - t0:.0f}s"
        )
    # the raw log, as the persister copies it
    async with pool.acquire() as conn:
        days = sorted({int(x) for x in np.unique(h.ts // DAY_MS * DAY_MS).tolist()})
        async with conn.transaction():
            for day in days:
                start = to_datetime(day)
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS raw_events_{start:%Y%m%d} PARTITION OF raw_events"
                    f" FOR VALUES FROM ('{start.isoformat()}') TO"
                    f" ('{to_datetime(day + DAY_MS).isoformat()}')"
                )
        async for chunk in csv_chunks(h, raw_log_csv, project):
            await conn.copy_to_table("raw_events", source=chunk, columns=RAW_COLUMNS, format="csv")
        await conn.execute(
            "UPDATE persist_state SET minute_until = $2, hour_until = $2, day_until = $2"
            " WHERE project = $1",
            project,
            end,
        )
        # steady state: old rows are all-visible, so index-only scans apply, and autovacuum
        # has nothing left to do on the freshly loaded raw log while latencies are measured
        await conn.execute("VACUUM ANALYZE rollups_minute, rollups_hour, rollups_day, raw_events")
    log(f"  raw log {h.n:,} events {time.perf_counter() - t0:.0f}s")
    return time.perf_counter() - t0


# -- baselines --------------------------------------------------------------------------


async def load_postgres_raw(pool: asyncpg.Pool, table: str, h: History) -> float:
    """A plain raw-events table, BRIN on ts and a btree on (name, ts)."""
    t0 = time.perf_counter()
    async with pool.acquire() as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.execute(
            f"CREATE TABLE {table} (ts timestamptz NOT NULL, name text NOT NULL, link text,"
            " source text, country text, device text, affiliate text, uid text, value bigint)"
        )
        async for chunk in csv_chunks(h, baseline_csv):
            await conn.copy_to_table(table, source=chunk, format="csv")
        await conn.execute(f"CREATE INDEX ON {table} USING brin (ts)")
        await conn.execute(f"CREATE INDEX ON {table} (name, ts)")
        await conn.execute(f"VACUUM ANALYZE {table}")
    return time.perf_counter() - t0


def write_parquet(path: Path, h: History) -> float:
    """The events as one Parquet file (dims dictionary-encoded, as any writer would)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t0 = time.perf_counter()
    with pq.ParquetWriter(path, _parquet_schema()) as writer:
        for lo in range(0, h.n, CSV_CHUNK):
            hi = min(lo + CSV_CHUNK, h.n)
            cols: dict[str, Any] = {
                "ts": pa.array(h.ts[lo:hi].astype("datetime64[ms]")),
                "name": pa.array(NAMES[h.name[lo:hi]]),
            }
            for d in DIMS:
                cols[d] = _dim_strings(h, d, lo, hi)
            uid = pa.array(h.uid[lo:hi]).cast(pa.string())
            cols["uid"] = pc.binary_join_element_wise("u", uid, "")
            cols["value"] = pa.array(h.value[lo:hi])
            writer.write_table(pa.table(cols, schema=_parquet_schema()), row_group_size=1_000_000)
    return time.perf_counter() - t0


def _parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [("ts", pa.timestamp("ms")), ("name", pa.string())]
        + [(d, pa.string()) for d in DIMS]
        + [("uid", pa.string()), ("value", pa.int64())]
    )


# -- questions ----------------------------------------------------------------------------


def windows(end: int) -> dict[str, tuple[int, int]]:
    return {
        "sparkline": (end - 30 * DAY_MS, end),
        "trend": (end - 365 * DAY_MS, end),
        "top10": (end - 30 * DAY_MS, end),
        "uniques": (end - 30 * DAY_MS, end),
    }


def pg_sql(table: str, q: str) -> str:
    base = f"FROM {table} WHERE name = 'click' AND ts >= $1 AND ts < $2"
    return {
        "sparkline": f"SELECT date_trunc('hour', ts) AS b, count(*) {base} GROUP BY 1",
        "trend": f"SELECT date_trunc('day', ts) AS b, count(*) {base} GROUP BY 1",
        "top10": f"SELECT link, count(*) {base} GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
        "uniques": f"SELECT count(DISTINCT uid) {base}",
    }[q]


def duck_sql(path: Path, q: str, lo: int, hi: int) -> str:
    base = (
        f"FROM read_parquet('{path}') WHERE name = 'click'"
        f" AND ts >= epoch_ms({lo}) AND ts < epoch_ms({hi})"
    )
    return {
        "sparkline": f"SELECT date_trunc('hour', ts) AS b, count(*) {base} GROUP BY 1",
        "trend": f"SELECT date_trunc('day', ts) AS b, count(*) {base} GROUP BY 1",
        "top10": f"SELECT link, count(*) {base} GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
        "uniques": f"SELECT count(DISTINCT uid) {base}",
    }[q]


def counters_request(project: str, q: str, lo: int, hi: int) -> tuple[str, dict[str, str]]:
    common = {"name": "click", "from": str(lo), "to": str(hi)}
    if q == "sparkline":
        return f"/v1/projects/{project}/series", {**common, "precision": "1h"}
    if q == "trend":
        return f"/v1/projects/{project}/series", {**common, "precision": "1d"}
    if q == "top10":
        return f"/v1/projects/{project}/series", {
            **common,
            "precision": "1d",
            "group_by": "link",
            "limit": "10",
        }
    return f"/v1/projects/{project}/total", {**common, "precision": "1d", "measure": "uniques"}


@dataclass
class Timings:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, engine: str, q: str, ms: float) -> None:
        self.samples.setdefault((engine, q), []).append(ms)

    def p(self, engine: str, q: str, pct: float) -> float:
        xs = sorted(self.samples[(engine, q)])
        return xs[min(len(xs) - 1, int(round(pct / 100 * (len(xs) - 1))))]


async def measure(
    level: int,
    h: History,
    svc_url: str,
    read_key: str,
    project: str,
    pool: asyncpg.Pool,
    table: str,
    parquet: Path,
    runs: int,
) -> tuple[Timings, dict[str, Any]]:
    import duckdb

    t = Timings()
    answers: dict[str, Any] = {}
    win = windows(h.end)
    duck = duckdb.connect()
    async with httpx.AsyncClient(base_url=svc_url, timeout=120) as c:
        auth = {"Authorization": f"Bearer {read_key}"}
        for q in QUESTIONS:
            lo, hi = win[q]
            path, params = counters_request(project, q, lo, hi)
            sql = pg_sql(table, q)
            dsql = duck_sql(parquet, q, lo, hi)
            # warm-up
            await c.get(path, params=params, headers=auth)
            async with pool.acquire() as conn:
                await conn.fetch(sql, to_datetime(lo), to_datetime(hi))
            duck.execute(dsql).fetchall()
            for _ in range(runs):  # interleaved, so the machine's noise hits all alike
                t0 = time.perf_counter()
                r = await c.get(path, params=params, headers=auth)
                t.add("counters (client)", q, (time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, r.text
                server = r.headers["server-timing"].split("dur=")[1]
                t.add("counters (server)", q, float(server))
                answers.setdefault(("counters", q), r.json())
                # raw scans at 100M take seconds: each engine gets RAW_BUDGET_S per question
                # (at least RAW_MIN_SAMPLES samples), spread over the interleaved runs
                if _raw_turn(t, "postgres", q, _, runs):
                    t0 = time.perf_counter()
                    async with pool.acquire() as conn:
                        rows = await conn.fetch(sql, to_datetime(lo), to_datetime(hi))
                    t.add("postgres", q, (time.perf_counter() - t0) * 1000)
                    answers.setdefault(("postgres", q), rows)
                if _raw_turn(t, "duckdb", q, _, runs):
                    t0 = time.perf_counter()
                    drows = duck.execute(dsql).fetchall()
                    t.add("duckdb", q, (time.perf_counter() - t0) * 1000)
                    answers.setdefault(("duckdb", q), drows)
    return t, {"level": level, "answers": answers}


RAW_BUDGET_S = 20.0
RAW_MIN_SAMPLES = 5


def _raw_turn(t: Timings, engine: str, q: str, run: int, runs: int) -> bool:
    """Whether a raw engine takes this run: always until it has RAW_MIN_SAMPLES, then every
    k-th run so that its samples fit in RAW_BUDGET_S."""
    done = t.samples.get((engine, q), [])
    if len(done) < RAW_MIN_SAMPLES:
        return True
    per_query = sum(done) / len(done) / 1000
    affordable = max(RAW_MIN_SAMPLES, int(RAW_BUDGET_S / max(per_query, 1e-3)))
    every = max(1, -(-runs // affordable))
    return run % every == 0


def check_answers(meta: dict[str, Any]) -> list[str]:
    """counters agrees with the raw engines (exact counts; uniques within 2%)."""
    a = meta["answers"]
    problems = []
    c = a[("counters", "trend")]["data"]
    pg = {r["b"].date().isoformat(): r["count"] for r in a[("postgres", "trend")]}
    for p in c:
        if pg.get(p["bucket"][:10], 0) != p["value"]:
            want = pg.get(p["bucket"][:10], 0)
            problems.append(f"trend {p['bucket']}: counters {p['value']} vs postgres {want}")
            break
    top = [s["dims"]["link"] for s in a[("counters", "top10")]["series"][:10]]
    pg_top = [r["link"] for r in a[("postgres", "top10")]]
    if top[:5] != pg_top[:5]:
        problems.append(f"top10 differs: {top[:5]} vs {pg_top[:5]}")
    exact = a[("postgres", "uniques")][0][0]
    got = a[("counters", "uniques")]["value"]
    if abs(got - exact) / max(exact, 1) > 0.02:
        problems.append(f"uniques {got} vs exact {exact}")
    return problems


# -- driver -------------------------------------------------------------------------------


def machine() -> str:
    mem = next(line for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    gib = int(mem.split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores, {gib:.0f} GiB RAM, load {os.getloadavg()[0]:.1f}"


async def run(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    data_dir = Path(tempfile.mkdtemp(prefix="counters-bench-reads-"))
    data_dir.chmod(0o755)
    redis_url = os.environ.get("COUNTERS_REDIS_URL") or embedded.ensure_valkey(data_dir)
    server_url = os.environ.get("COUNTERS_DATABASE_URL") or embedded.postgres_admin_url(data_dir)
    owner_url = (
        None if os.environ.get("COUNTERS_DATABASE_URL") else embedded.ensure_postgres(data_dir)
    )
    db = "bench_reads_" + uuid.uuid4().hex[:6]
    database_url = await asyncio.to_thread(create_database, server_url, db, owner_url)
    prefix = "benchr" + uuid.uuid4().hex[:4]
    env = service_env(
        Backends(redis_url, database_url, prefix, data_dir),
        data_dir / "svc",
        COUNTERS_PERSISTER_ENABLED="false",
        COUNTERS_RECONCILE_ENABLED="false",
        COUNTERS_CROSSTABS="",
    )
    (data_dir / "svc").mkdir()
    settings = Settings(redis_url=redis_url, database_url=database_url, key_prefix=prefix)
    opened = open_services(settings, SystemClock(), pool_max_size=4)
    services = await opened.__aenter__()  # closed in the finally below
    pool, redis = services.pool, services.redis
    end = (time.time_ns() // 1_000_000) // HOUR_MS * HOUR_MS
    rows_out: list[str] = []
    per_level: dict[int, Timings] = {}
    svc = Service(env, data_dir / "service.log")
    svc.start()
    if args.keep:
        print(f"keeping: data {data_dir}, database {database_url}, key prefix {prefix}")
    try:
        for level in levels:
            print(f"level {level:,}: generating", flush=True)
            h = generate(level, end, seed=level)
            project = f"lvl{level}"
            async with pool.acquire() as conn:
                read_key = await create_key(conn, project, "read")
            secs = await load_counters(pool, redis, prefix, project, h, print)
            table = f"bench_raw_{level}"
            pg_secs = await load_postgres_raw(pool, table, h)
            parquet = data_dir / f"events_{level}.parquet"
            pq_secs = write_parquet(parquet, h)
            print(
                f"  loaded: counters {secs:.0f}s, raw table {pg_secs:.0f}s, parquet {pq_secs:.0f}s"
            )
            t, meta = await measure(
                level, h, svc.url, read_key, project, pool, table, parquet, args.runs
            )
            problems = check_answers(meta)
            for p in problems:
                print("  MISMATCH:", p)
            per_level[level] = t
            for q in QUESTIONS:
                cs = t.p("counters (server)", q, 50)
                row = [f"{level:,}", q]
                for eng in ("counters (server)", "counters (client)", "postgres", "duckdb"):
                    row.append(f"{t.p(eng, q, 50):.2f} / {t.p(eng, q, 99):.2f}")
                pgx = t.p("postgres", q, 50) / t.p("counters (client)", q, 50)
                dkx = t.p("duckdb", q, 50) / t.p("counters (client)", q, 50)
                row.append(f"{pgx:.0f}× / {dkx:.0f}×")
                rows_out.append("| " + " | ".join(row) + " |")
                del cs
                print("  " + rows_out[-1], flush=True)
            if problems:
                rows_out.append(
                    f"| {level:,} | answers | mismatch: {'; '.join(problems)} | | | | |"
                )
    finally:
        svc.stop()
        await opened.__aexit__(None, None, None)
        if not args.keep:
            await asyncio.to_thread(drop_database, server_url, db)
            if not os.environ.get("COUNTERS_REDIS_URL") or not os.environ.get(
                "COUNTERS_DATABASE_URL"
            ):
                embedded.stop_embedded(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
    plot(per_level)
    flat = {
        q: per_level[max(levels)].p("counters (server)", q, 50)
        / per_level[min(levels)].p("counters (server)", q, 50)
        for q in QUESTIONS
    }
    with RESULTS.open("a") as fh:
        fh.write(
            f"\n## Reads at volume ({time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC)\n\n"
            f"Command: `.venv/bin/python -m bench reads --levels {args.levels} --runs {args.runs}`;"
            f" {machine()}. p50 / p99 in ms; counters server-side (Server-Timing) and client"
            " wall-clock over keep-alive HTTP; Postgres (BRIN on ts, btree on (name, ts)) and"
            " DuckDB (Parquet) are client wall-clock of the query alone. The last column is the"
            " p50 of each raw engine divided by counters' client p50.\n\n"
            "| events | question | counters server | counters client | Postgres raw"
            " | DuckDB Parquet | PG× / Duck× |\n"
            "| --- | --- | --- | --- | --- | --- | --- |\n"
            + "\n".join(rows_out)
            + "\n\ncounters p50 at the largest level / at the smallest (flat is 1.0): "
            + ", ".join(f"{q} {v:.2f}" for q, v in flat.items())
            + f"\n\n![latency vs volume]({PLOT.name})\n"
        )
    print(f"appended to {RESULTS}; plot {PLOT}")


def plot(per_level: dict[int, Timings]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(per_level)
    fig, axes = plt.subplots(1, len(QUESTIONS), figsize=(16, 4))
    for ax, q in zip(axes, QUESTIONS, strict=True):
        for eng in ("counters (server)", "postgres", "duckdb"):
            ax.plot(levels, [per_level[lv].p(eng, q, 50) for lv in levels], marker="o", label=eng)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(q)
        ax.set_xlabel("events")
        ax.set_ylabel("p50 ms")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(PLOT, dpi=90)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--levels", default="1000000,10000000,100000000")
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--quick", action="store_true", help="one small level, few runs")
    p.add_argument("--keep", action="store_true", help="keep the servers and data")
    p.add_argument(
        "--polling",
        action="store_true",
        help="the read cache on vs off: sparkline latency and polled dashboards' CPU"
        " (bench/reads_poll.py; the first level only)",
    )
    p.add_argument("--poll-seconds", type=float, default=30.0, help="with --polling")
    p.add_argument("--out", default=None, help="with --polling: also write the table here")
    p.add_argument(
        "--py-spy", default=None, help="with --polling: py-spy's collapsed stacks go to this dir"
    )
    args = p.parse_args(argv)
    if args.polling:
        from bench import reads_poll

        if args.quick:
            args.levels, args.runs, args.poll_seconds = "200000", 50, 10.0
        asyncio.run(reads_poll.run(args))
        return
    if args.quick:
        args.levels, args.runs = "200000,1000000", 10
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
