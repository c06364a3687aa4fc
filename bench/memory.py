"""Scenario 5, memory: what one hot row costs in Redis, one rollup row in Postgres and one
event in the raw log.

Twice, on a fresh project (own database, own key prefix): with a uid on every event, and with
no uids at all. Each time:

  1. a real `counters serve --no-persister` takes --events generated events (5 Zipf dims,
     3 names), time-ordered over --span-hours (centred on the last UTC midnight when it can
     be, so a day bucket closes too), in 1,000-event POSTs;
  2. Redis: MEMORY USAGE (exact, SAMPLES 0) of every hot hash (one field pair per
     (rollup, dims, bucket) row), of a sample of the HyperLogLog keys (one per row when uids
     are given), and of the raw-log stream; and the INFO memory delta over the ingest;
  3. then `counters persist` (grace 1 s) copies every closed bucket and the raw log into
     Postgres; pg_total_relation_size of rollups_minute/hour/day and of the raw_events
     partitions (tables, TOAST and indexes) per row.

    .venv/bin/python -m bench.memory [--quick] [--events 500000] [--span-hours 6]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end). On a shared Redis the INFO delta also counts other
clients' writes."""

from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench import generate
from bench.common import (
    ROOT,
    Stack,
    busy_warning,
    fmt,
    load_now,
    log,
    md_table,
    report,
    stack,
)

PROJECT = "mem"
GRAINS = ("m", "h", "d")
GRAIN_NAME = {"m": "minute", "h": "hour", "d": "day"}
TABLES = {"m": "rollups_minute", "h": "rollups_hour", "d": "rollups_day"}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.memory",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (well under a minute)")
    p.add_argument("--events", type=int, default=None, help="events per variant (500,000)")
    p.add_argument("--span-hours", type=float, default=None, help="event-time span (6)")
    p.add_argument("--uids", type=int, default=200_000, help="uid cardinality, uid variant")
    p.add_argument("--hll-sample", type=int, default=3000, help="HLL keys sampled per grain")
    p.add_argument("--clients", type=int, default=4, help="concurrent POSTs")
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    a.events = a.events or (30_000 if a.quick else 500_000)
    a.span_hours = a.span_hours or (1.0 if a.quick else 6.0)
    a.append = (not a.quick) if a.append is None else a.append
    return a


@dataclass
class GrainMem:
    rows: int = 0
    hash_bytes: int = 0
    keys: int = 0
    hll_keys: int = 0
    hll_sampled: int = 0
    hll_sample_bytes: int = 0
    hll_dense: int = 0

    @property
    def hll_bytes(self) -> float:
        """Estimated bytes of every HLL key of this grain (sample mean x keys)."""
        if not self.hll_sampled:
            return 0.0
        return self.hll_sample_bytes / self.hll_sampled * self.hll_keys


@dataclass
class PgTable:
    rows: int
    total: int
    heap: int


@dataclass
class Variant:
    label: str
    uids: int
    events: int = 0
    ingest_rate: float = 0.0
    grains: dict[str, GrainMem] = field(default_factory=dict)
    info_delta: int = 0
    stream_bytes: int = 0
    stream_events: int = 0
    other_bytes: int = 0
    pg: dict[str, PgTable] = field(default_factory=dict)
    raw_pg: PgTable | None = None
    drain_seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.grains.values())


def _used_memory(r: Any) -> int:
    return int(r.info("memory")["used_memory"])


async def _ingest(url: str, headers: dict[str, str], bodies: list[bytes], clients: int) -> float:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in bodies:
        queue.put_nowait(b)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                r = await c.post(url + "/v1/events", content=body, headers=headers)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0


def _redis_figures(r: Any, base: str, v: Variant, sample: int) -> None:
    """Hot hashes (all, exact), HLLs (sampled), stream, and what else the project holds."""
    rng = random.Random(7)
    accounted = 0
    for g in GRAINS:
        gm = GrainMem()
        buckets = [b.decode() for b in r.zrange(f"{base}dirty:{g}", 0, -1)]
        pipe = r.pipeline(transaction=False)
        for b in buckets:
            pipe.memory_usage(f"{base}h:{g}:{b}", samples=0)
            pipe.hkeys(f"{base}h:{g}:{b}")
        replies = pipe.execute()
        rows: list[str] = []
        for b, size, fields in zip(buckets, replies[0::2], replies[1::2], strict=True):
            gm.keys += 1
            gm.hash_bytes += int(size or 0)
            for f in fields:
                if f.startswith(b"c\x1f"):
                    gm.rows += 1
                    rows.append(f"{base}u:{g}:{b}:" + f[2:].decode())
        if v.uids:
            gm.hll_keys = sum(1 for _ in r.scan_iter(match=f"{base}u:{g}:*", count=5000))
            picked = rng.sample(rows, min(sample, len(rows)))
            pipe = r.pipeline(transaction=False)
            for k in picked:
                pipe.memory_usage(k, samples=0)
            for size in pipe.execute():
                if size is None:
                    continue
                gm.hll_sampled += 1
                gm.hll_sample_bytes += int(size)
                gm.hll_dense += int(size) > 12_000
        v.grains[g] = gm
        accounted += gm.hash_bytes + int(gm.hll_bytes)
    v.stream_bytes = int(r.memory_usage(f"{base}raw", samples=0) or 0)
    v.stream_events = sum(
        int(fields[b"n"]) for _, fields in r.xrange(f"{base}raw", count=1_000_000)
    )
    v.other_bytes = v.info_delta - accounted - v.stream_bytes


async def _pg_figures(database_url: str, v: Variant) -> None:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        parts = [
            r["name"]
            for r in await conn.fetch(
                "SELECT inhrelid::regclass::text AS name FROM pg_inherits"
                " WHERE inhparent = 'raw_events'::regclass"
            )
        ]
        for t in [*TABLES.values(), *parts]:
            await conn.execute(f"VACUUM ANALYZE {t}")
        for g, t in TABLES.items():
            v.pg[g] = PgTable(
                await conn.fetchval(f"SELECT count(*) FROM {t}"),
                await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t),
                await conn.fetchval("SELECT pg_relation_size($1::regclass)", t),
            )
        total = heap = 0
        for t in parts:
            total += await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t)
            heap += await conn.fetchval("SELECT pg_relation_size($1::regclass)", t)
        v.raw_pg = PgTable(await conn.fetchval("SELECT count(*) FROM raw_events"), total, heap)
    finally:
        await conn.close()


async def _drained(database_url: str, redis_url: str, base: str) -> bool:
    """Every closed bucket and the whole raw log are in Postgres."""
    import asyncpg
    import redis as sync_redis

    r = sync_redis.Redis.from_url(redis_url)
    try:
        rawn = int(r.hget(base + "wm", "rawn") or 0)
        dirty = {g: [int(b) for b in r.zrange(f"{base}dirty:{g}", 0, -1)] for g in GRAINS}
    finally:
        r.close()
    if rawn:
        return False
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(
            "SELECT minute_until, hour_until, day_until FROM persist_state WHERE project = $1",
            PROJECT,
        )
    finally:
        await conn.close()
    if row is None:
        return False
    until = {"m": row["minute_until"], "h": row["hour_until"], "d": row["day_until"]}
    now = generate.now_ms()
    edge = {"m": now - 61_000, "h": now - now % 3_600_000, "d": now - now % 86_400_000}
    # closed buckets left in the dirty index are ones not yet copied
    return all(
        until[g] >= edge[g] - (60_000 if g == "m" else 0)
        and not [b for b in dirty[g] if b < until[g]]
        for g in GRAINS
    )


def _window_end(span_ms: int) -> int:
    """The end of the event-time window: centred on the last UTC midnight when that is far
    enough back (so a whole day bucket closes and reaches rollups_day), else now."""
    now = generate.now_ms() - 1000
    midnight = now - now % 86_400_000
    return min(now, midnight + span_ms // 2)


async def _seal_closed(redis_url: str, prefix: str) -> None:
    """lua/seal.lua up to now - 1 s (the service's grace), in the persister's steps."""
    from redis.asyncio import Redis

    from counters.core.buckets import GRAINS, bucket_start
    from counters.engines.seal import SEAL_MERGE_BUDGET
    from lua import Scripts
    from lua.keys import ProjectKeys

    redis = Redis.from_url(redis_url)
    try:
        keys = ProjectKeys(prefix, PROJECT)
        edge = time.time_ns() // 1_000_000 - 1000
        target = [bucket_start(edge, g) for g in GRAINS]
        scripts = Scripts(redis)
        while True:
            reply = await scripts.seal(
                keys=[keys.watermarks, keys.dirty(GRAINS[0])],
                args=[*target, keys.base, SEAL_MERGE_BUDGET],
            )
            if int(reply[0]) >= target[0]:
                break
    finally:
        await redis.aclose()


def run_variant(args: argparse.Namespace, st: Stack, label: str, uids: int) -> Variant:
    import redis as sync_redis

    from lua.keys import ProjectKeys

    v = Variant(label, uids)
    env = {
        "COUNTERS_GRACE_SECONDS": "1",
        "COUNTERS_PERSIST_INTERVAL_SECONDS": "0.2",
        "COUNTERS_RAW_BACKLOG_CAP": "0",
    }
    svc = st.service("mem" + ("u" if uids else "n"), persister=False, env=env)
    base = ProjectKeys(svc.prefix, PROJECT).base
    headers = {
        "Authorization": "Bearer " + svc.key(PROJECT, "ingest"),
        "Content-Type": "application/json",
    }
    log(f"{label}: generating {args.events:,} events over {args.span_hours} h")
    span_ms = int(args.span_hours * 3_600_000)
    cols = generate.columns(
        args.events, span_ms=span_ms, end_ms=_window_end(span_ms), uids=uids, ordered=True
    )
    enc = msgspec.json.Encoder()
    bodies = [
        enc.encode(generate.to_dicts(cols, lo=i, hi=min(i + 1000, args.events)))
        for i in range(0, args.events, 1000)
    ]
    r = sync_redis.Redis.from_url(st.redis_url)
    try:
        before = _used_memory(r)
        log(f"{label}: posting {len(bodies):,} batches")
        elapsed = asyncio.run(_ingest(svc.url, headers, bodies, args.clients))
        v.events = args.events
        v.ingest_rate = args.events / elapsed
        # ingest writes minutes only: seal what has closed, as the persister would, so the
        # hours and days hold their merged minutes (nothing is copied or expired here)
        asyncio.run(_seal_closed(st.redis_url, svc.prefix))
        time.sleep(0.5)
        v.info_delta = _used_memory(r) - before
        log(f"{label}: {v.ingest_rate:,.0f} events/s; measuring Redis")
        _redis_figures(r, base, v, args.hll_sample)
    finally:
        r.close()
    svc.stop()

    log(f"{label}: `counters persist` copies it all into Postgres")
    with open(st.work / f"persist-{label[:4]}.log", "ab") as out:
        persister = subprocess.Popen(
            [sys.executable, "-m", "counters", "persist"],
            env=svc.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,
        )
    t0 = time.monotonic()
    deadline = t0 + (120 if args.quick else 900)
    try:
        while not asyncio.run(_drained(svc.database_url, st.redis_url, base)):
            if persister.poll() is not None:
                raise RuntimeError("counters persist exited early")
            if time.monotonic() > deadline:
                raise RuntimeError("the persister did not drain in time")
            time.sleep(0.5)
        v.drain_seconds = time.monotonic() - t0
    finally:
        persister.terminate()
        try:
            persister.wait(20)
        except subprocess.TimeoutExpired:
            persister.kill()
            persister.wait(5)
    asyncio.run(_pg_figures(svc.database_url, v))
    return v


def _per(n: float, d: float) -> str:
    return fmt(n / d) if d else "-"


def run(args: argparse.Namespace, argv: list[str]) -> int:
    load0 = load_now()
    busy = busy_warning()
    with stack() as st:
        with_u = run_variant(args, st, "with uids", args.uids)
        without = run_variant(args, st, "without uids", 0)

    rows = []
    for g in GRAINS:
        a, b = with_u.grains[g], without.grains[g]
        dense = f"{a.hll_dense / a.hll_sampled * 100:.0f}%" if a.hll_sampled else "-"
        rows.append(
            (
                GRAIN_NAME[g],
                fmt(a.rows),
                _per(a.hash_bytes, a.rows),
                _per(a.hll_bytes, a.rows),
                _per(a.hash_bytes + a.hll_bytes, a.rows),
                dense,
                fmt(b.rows),
                _per(b.hash_bytes, b.rows),
            )
        )

    def tot(v: Variant) -> tuple[float, float]:
        hashes = sum(g.hash_bytes for g in v.grains.values())
        hlls = sum(g.hll_bytes for g in v.grains.values())
        return hashes, hlls

    ah, ahll = tot(with_u)
    bh, _ = tot(without)
    rows.append(
        (
            "**all hot rows**",
            fmt(with_u.rows),
            _per(ah, with_u.rows),
            _per(ahll, with_u.rows),
            f"**{_per(ah + ahll, with_u.rows)}**",
            "",
            fmt(without.rows),
            f"**{_per(bh, without.rows)}**",
        )
    )
    redis_table = md_table(
        [
            "grain",
            "rows (uids)",
            "hash B/row",
            "HLL B/row",
            "B/row with uniques",
            "dense HLLs",
            "rows (no uids)",
            "B/row without uniques",
        ],
        rows,
    )
    info_rows = []
    for v in (with_u, without):
        info_rows.append(
            (
                v.label,
                f"{v.info_delta / 1e6:,.1f} MB",
                f"{v.stream_bytes / 1e6:,.1f} MB",
                _per(v.info_delta - v.stream_bytes, v.rows),
                f"{v.other_bytes / 1e6:,.1f} MB",
                fmt(v.ingest_rate),
            )
        )
    info_table = md_table(
        [
            "variant",
            "INFO used_memory delta",
            "of which raw-log stream",
            "delta minus stream, B/hot row",
            "not in hashes/HLLs/stream",
            "ingest events/s (spread batches)",
        ],
        info_rows,
    )
    pg_rows = []
    for g in GRAINS:
        a, b = with_u.pg[g], without.pg[g]
        pg_rows.append(
            (
                TABLES[g],
                fmt(a.rows),
                _per(a.total, a.rows),
                _per(a.heap, a.rows),
                fmt(b.rows),
                _per(b.total, b.rows),
                _per(b.heap, b.rows),
            )
        )
    pg_table = md_table(
        [
            "table",
            "rows (uids)",
            "B/row total",
            "B/row heap",
            "rows (no uids)",
            "B/row total",
            "B/row heap",
        ],
        pg_rows,
    )
    raw_rows = []
    for v in (with_u, without):
        assert v.raw_pg is not None
        raw_rows.append(
            (
                v.label,
                fmt(v.stream_events),
                _per(v.stream_bytes, v.stream_events),
                fmt(v.raw_pg.rows),
                _per(v.raw_pg.total, v.raw_pg.rows),
                _per(v.raw_pg.heap, v.raw_pg.rows),
                f"{v.drain_seconds:.0f} s",
            )
        )
    raw_table = md_table(
        [
            "variant",
            "events in the Redis stream",
            "stream B/event",
            "raw_events rows",
            "B/row total (with index)",
            "B/row heap",
            "persist drain time",
        ],
        raw_rows,
    )
    body = "\n".join(
        [
            busy,
            "",
            f"{args.events:,} generated events per variant (5 Zipf dims, 3 names, values on "
            f"conversions), time-ordered over {args.span_hours:g} h of event time (centred on "
            f"the last UTC midnight when possible, so a day bucket closes), POSTed in "
            f"1,000-event batches to `counters serve --no-persister` (no cross-tabs, so every "
            f"event feeds 6 rollups: the total and one per dim); uids out of "
            f"{args.uids:,} in the first variant, none in the second. A hot row is one "
            "(rollup, dims, bucket) of one event name: a count field (and a sum field when "
            "its sum is not 0) in the bucket's hash, and with uids one HyperLogLog key. Hash "
            "bytes are exact (MEMORY USAGE SAMPLES 0 of every hash); HLL bytes are the mean "
            f"of up to {args.hll_sample:,} sampled keys per grain times the number of keys. "
            "Redis holds a row only until its bucket is persisted (grace + "
            "keep_after_copy_seconds), so the hot set is the last ~11 minutes, the current "
            "hour and the current day. Ingest writes minutes only; before measuring, the "
            "closed minutes are sealed (lua/seal.lua merges them into their hours and days, "
            "as the persister's seal step does), nothing is copied.",
            "",
            "Redis, bytes per hot row:",
            "",
            redis_table,
            "",
            info_table,
            "",
            "Postgres after `counters persist` (VACUUM ANALYZE first; total = heap + TOAST + "
            "indexes, incl. the primary key and the by-bucket index):",
            "",
            pg_table,
            "",
            "Raw log:",
            "",
            raw_table,
            "",
        ]
    )
    report(
        "Scenario 5: memory (bench.memory)",
        "bench.memory",
        argv,
        body,
        append=args.append,
        load_at_start=load0,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    return run(parse(argv), argv)


if __name__ == "__main__":
    sys.exit(main())
