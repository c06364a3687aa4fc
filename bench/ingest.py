"""Scenario 1, batch ingest: events/s through a real `counters serve` (uvicorn, workers
configurable) from wrk in a separate process (keep-alive connections, POSTs of 1,000-event
bodies without `ts`, so events count at arrival time), against, in the same run:

  (a) Postgres, one INSERT per event in autocommit (what an OLTP tracker does per click),
      into a plain table with the columns of counters' raw_events, asyncpg;
  (b) Postgres COPY of the same events (copy_records_to_table, one COPY per 1,000);
  (c) the limit without HTTP: the same batches grouped with counters.core.grouping.plan_batch
      and applied with the product's own ingest script (EVALSHA via redis-py) from this
      process with several calls in flight; also (c2) grouping in this process on every
      call (Ingestor.apply: everything the service does minus HTTP, JSON and validation) and
      (c3) the same grouped updates as plain pipelined HINCRBY/PFADD, for context.

The paths run alternately, --rounds times (the machine is noisy); the table has the median
of each and counters' ratio to each.

    .venv/bin/python -m bench.ingest [--quick] [--workers 1] [--seconds 15] [--rounds 3]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench import generate
from bench.common import (
    CpuMeter,
    Stack,
    busy_warning,
    fmt,
    load_now,
    log,
    md_table,
    median,
    profile_table,
    redis_commandstats,
    report,
    require_wrk,
    run_wrk,
    stack,
    start_profile,
    wrk_script,
)
from persist.schema import RAW_COLUMNS

BATCH = 1000
PERSISTER = {
    "inprocess": "with its in-process persister",
    "process": "with `--no-persister` and a separate `counters persist` process",
    "off": "with no persister at all",
}
BASELINE_TABLE = """
CREATE TABLE bench_raw_events (
    project       text NOT NULL,
    ts            timestamptz NOT NULL,
    name          text NOT NULL,
    event_id      text,
    dims          jsonb NOT NULL,
    value_micros  bigint NOT NULL,
    uid           text,
    received_at   timestamptz NOT NULL,
    stream_id     text NOT NULL,
    seq           integer NOT NULL
);
CREATE INDEX bench_raw_events_project_ts ON bench_raw_events (project, ts);
"""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (well under a minute)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn workers of the service")
    p.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--seconds", type=float, default=None, help="per counters run (default 15)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    p.add_argument("--bodies", type=int, default=20, help="distinct 1,000-event bodies cycled")
    p.add_argument("--uids", type=int, default=100_000, help="uid cardinality (0: no uids)")
    p.add_argument("--direct-seconds", type=float, default=None, help="per direct-Redis run")
    p.add_argument("--in-flight", type=int, default=8, help="concurrent direct-Redis calls")
    p.add_argument("--insert-events", type=int, default=None, help="per round (default 10,000)")
    p.add_argument("--insert-conns", type=int, default=8, help="connections doing INSERTs")
    p.add_argument("--copy-events", type=int, default=None, help="per round (default 200,000)")
    p.add_argument(
        "--persister",
        choices=["inprocess", "process", "off"],
        default="inprocess",
        help="the service's own persister (default), `serve --no-persister` plus a separate "
        "`counters persist` process, or no persister at all",
    )
    p.add_argument(
        "--aof-off",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one more direct-script run with AOF off (private servers only; default: full)",
    )
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    q = a.quick
    a.seconds = a.seconds or (3.0 if q else 15.0)
    a.rounds = a.rounds or (2 if q else 3)
    a.direct_seconds = a.direct_seconds or (2.0 if q else 8.0)
    a.insert_events = a.insert_events or (1_500 if q else 10_000)
    a.copy_events = a.copy_events or (20_000 if q else 200_000)
    a.profile = (not q) if a.profile is None else a.profile
    a.aof_off = (not q) if a.aof_off is None else a.aof_off
    a.append = (not q) if a.append is None else a.append
    return a


@dataclass
class Path_:
    label: str
    rates: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    cpu: list[dict[str, float]] = field(default_factory=list)
    events: list[int] = field(default_factory=list)


def _records(raw: list[Any], project: str) -> list[tuple[Any, ...]]:
    """The rows the persister would write into raw_events for these events."""
    enc = msgspec.json.Encoder()

    def ts(ms: int) -> dt.datetime:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC)

    return [
        (
            project,
            ts(ev.ts),
            ev.name,
            ev.id,
            enc.encode(ev.dims).decode(),
            ev.value,
            ev.uid,
            ts(ev.received),
            "0-0",
            i,
        )
        for i, ev in enumerate(raw)
    ]


async def _drive(
    call: Callable[[int], Awaitable[None]], *, seconds: float, max_calls: int, in_flight: int
) -> tuple[int, float]:
    """Calls call(i) from in_flight concurrent loops until seconds or max_calls; returns
    (calls done, elapsed)."""
    done = 0
    issued = 0
    deadline = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done, issued
        while issued < max_calls and time.perf_counter() < deadline:
            i = issued
            issued += 1
            await call(i)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return done, time.perf_counter() - t0


class Direct:
    """The 'no HTTP' paths, against a project of its own (own key prefix)."""

    def __init__(
        self, redis_url: str, bodies: list[list[dict[str, Any]]], prefix: str, in_flight: int
    ) -> None:
        from counters.core.config import Settings
        from counters.core.grouping import plan_batch
        from counters.core.models import raw_encoder
        from lua.keys import ProjectKeys

        self._redis_url = redis_url
        self.in_flight = in_flight
        self._prefix = prefix
        self.keys = ProjectKeys(prefix, "direct")
        defaults = Settings()
        self.dedupe_ms = defaults.dedupe_window_seconds * 1000
        self.dim_cap = defaults.dim_cardinality_cap
        self.raw = [generate.raw_events(b) for b in bodies]
        enc = msgspec.msgpack.Encoder()
        self.payloads: list[tuple[bytes, bytes]] = []
        self.commands: list[list[tuple[Any, ...]]] = []
        for raw in self.raw:
            groups, dim_values = plan_batch(raw, ())
            payload = enc.encode(
                [
                    self.dedupe_ms,
                    0,  # no backlog cap: this project has no persister
                    [],
                    groups,
                    len(raw),
                    self.dim_cap,
                    dim_values if self.dim_cap else [],
                    2 * 86_400_000,
                ]
            )
            self.payloads.append((payload, raw_encoder.encode(raw)))
            cmds: list[tuple[Any, ...]] = []
            base = self.keys.base
            for minute, fld, count, total, uids in groups:
                hot = f"{base}h:m:{minute}"
                cmds.append(("HINCRBY", hot, "c\x1f" + fld, count))
                if total != "0":
                    cmds.append(("HINCRBY", hot, "s\x1f" + fld, int(total)))
                if uids:
                    cmds.append(("PFADD", f"{base}u:m:{minute}:{fld}", *uids))
            self.commands.append(cmds)

    async def open(self) -> None:
        """Clients for the running event loop (redis-py's asyncio client is bound to one)."""
        from redis.asyncio import Redis

        from counters.engines.ingest import Ingestor
        from lua import Scripts

        self.redis = Redis.from_url(self._redis_url, max_connections=64)
        self.scripts = Scripts(self.redis)
        self.ingestor = Ingestor(
            self.redis,
            self.scripts,
            key_prefix=self._prefix,
            crosstabs=(),
            dedupe_window_ms=self.dedupe_ms,
            backlog_cap=0,
            restore_watermarks=self._restore,
            dim_cap=self.dim_cap,
        )
        conn = await self.redis.connection_pool.get_connection()
        try:
            self.packed = [(conn.pack_commands(c), len(c)) for c in self.commands]
        finally:
            await self.redis.connection_pool.release(conn)
        self._plain_conns: asyncio.Queue[Any] = asyncio.Queue()
        for _ in range(self.in_flight):
            self._plain_conns.put_nowait(await self._plain_connection())
        await self._restore("direct")

    async def _plain_connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        import hiredis
        from redis.asyncio.connection import parse_url

        opts = parse_url(self._redis_url)
        reader, writer = await asyncio.open_connection(
            opts.get("host", "127.0.0.1"), int(opts.get("port", 6379))
        )
        hello: list[list[str]] = []
        if opts.get("password"):
            user = opts.get("username")
            hello.append(["AUTH", *([user] if user else []), opts["password"]])
        if int(opts.get("db", 0) or 0):
            hello.append(["SELECT", str(opts["db"])])
        if hello:
            parser = hiredis.Reader()
            writer.write(b"".join(_resp(c) for c in hello))
            for _ in hello:
                reply = parser.gets()
                while reply is False:
                    parser.feed(await reader.read(1 << 16))
                    reply = parser.gets()
                if isinstance(reply, Exception):
                    raise reply
        return reader, writer

    async def _restore(self, project: str) -> None:
        await self.scripts.restore(keys=[self.keys.watermarks], args=[0, 0, 0, 1, "0-0"])

    def groups_per_batch(self) -> float:
        return statistics.mean(len(c) for c in self.commands)

    async def reset(self) -> None:
        """Drops what the direct runs wrote (bounded memory between runs)."""
        keys = [k async for k in self.redis.scan_iter(match=self.keys.base + "*", count=1000)]
        for i in range(0, len(keys), 500):
            await self.redis.delete(*keys[i : i + 500])
        await self._restore("direct")

    async def script(self, i: int) -> None:
        payload, blob = self.payloads[i % len(self.payloads)]
        reply = await self.scripts.ingest(
            keys=[self.keys.watermarks, self.keys.raw], args=[self.keys.base, payload, blob]
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status != "OK":
            raise RuntimeError(f"ingest script answered {reply!r}")

    async def apply(self, i: int) -> None:
        reply = await self.ingestor.apply("direct", self.raw[i % len(self.raw)])
        assert reply.accepted == BATCH

    async def pipelined(self, i: int) -> None:
        """The batch's commands, packed once up front by redis-py, written in one go on a
        connection of their own; the replies parsed by hiredis (redis-py's parser) in bulk,
        so the client costs little next to Redis."""
        import hiredis

        packed, n = self.packed[i % len(self.packed)]
        reader, writer = await self._plain_conns.get()
        try:
            writer.writelines(packed)
            parser = hiredis.Reader()
            got = 0
            while got < n:
                data = await reader.read(1 << 16)
                if not data:
                    raise ConnectionError("redis closed the connection")
                parser.feed(data)
                while parser.gets() is not False:
                    got += 1
        finally:
            self._plain_conns.put_nowait((reader, writer))

    async def close(self) -> None:
        while not self._plain_conns.empty():
            _, writer = self._plain_conns.get_nowait()
            writer.close()
        await self.redis.aclose()


def _resp(args: list[str]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


async def _baseline_conn(database_url: str) -> Any:
    import asyncpg

    conn = await asyncpg.connect(database_url)
    await conn.execute(BASELINE_TABLE)
    return conn


async def run_insert(database_url: str, records: list[tuple[Any, ...]], conns: int) -> float:
    """Rows/s of one autocommit INSERT per event over `conns` connections."""
    import asyncpg

    pool = await asyncpg.create_pool(database_url, min_size=conns, max_size=conns)
    sql = "INSERT INTO bench_raw_events VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
    try:
        await pool.execute("TRUNCATE bench_raw_events")
        it = iter(records)

        async def worker() -> None:
            async with pool.acquire() as conn:
                stmt = await conn.prepare(sql)
                for rec in it:
                    await stmt.fetch(*rec)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - t0
        n = await pool.fetchval("SELECT count(*) FROM bench_raw_events")
        assert n == len(records), (n, len(records))
        return len(records) / elapsed
    finally:
        await pool.close()


async def run_copy(database_url: str, records: list[tuple[Any, ...]]) -> float:
    """Rows/s of COPY, one copy_records_to_table per 1,000 rows, one connection."""
    import asyncpg

    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("TRUNCATE bench_raw_events")
        t0 = time.perf_counter()
        for i in range(0, len(records), BATCH):
            await conn.copy_records_to_table(
                "bench_raw_events", records=records[i : i + BATCH], columns=RAW_COLUMNS
            )
        elapsed = time.perf_counter() - t0
        return len(records) / elapsed
    finally:
        await conn.close()


def _cpu_note(cpu: dict[str, float], seconds: float) -> str:
    parts = [f"{k} {v / seconds * 100:.0f}%" for k, v in sorted(cpu.items()) if v > 0.01 * seconds]
    return ", ".join(parts)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    require_wrk()
    load0 = load_now()
    busy = busy_warning()
    log(f"{load0}; generating {args.bodies} bodies of {BATCH} events")
    bodies = [
        generate.events(BATCH, uids=args.uids, seed=100 + i, with_ts=False)
        for i in range(args.bodies)
    ]
    enc = msgspec.json.Encoder()
    body_bytes = [enc.encode(b) for b in bodies]
    baseline_events = [ev for b in bodies for ev in b]

    with stack() as st:
        svc = st.service("ingest", workers=args.workers, persister=args.persister == "inprocess")
        if args.persister == "process":
            st.persister(svc)
        key = svc.key("bench", "ingest")
        requests_file = st.work / "bodies.ndjson"
        requests_file.write_bytes(b"\n".join(body_bytes) + b"\n")
        script = wrk_script(
            st.work,
            method="POST",
            requests_file=requests_file,
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        )
        baseline_db = st.database("baseline")
        asyncio.run(_prepare_baseline(baseline_db))
        direct = Direct(st.redis_url, bodies, f"bdirect{svc.prefix}", args.in_flight)
        return _rounds(
            args, argv, st, svc, script, direct, baseline_db, baseline_events, load0, busy
        )


async def _prepare_baseline(url: str) -> None:
    conn = await _baseline_conn(url)
    await conn.close()


def _rounds(
    args: argparse.Namespace,
    argv: list[str],
    st: Stack,
    svc: Any,
    script: Path,
    direct: Direct,
    baseline_db: str,
    baseline_events: list[dict[str, Any]],
    load0: str,
    busy: str,
) -> int:
    import redis as sync_redis

    from lua.keys import ProjectKeys

    counters = Path_(f"counters, HTTP (uvicorn, {args.workers} worker{'s' * (args.workers > 1)})")
    script_p = Path_("(c) direct Redis: product ingest script, pre-grouped batches, no HTTP")
    apply_p = Path_("(c2) direct Redis: Ingestor.apply (group + script) in one process, no HTTP")
    pipe_p = Path_("(c3) direct Redis: same updates as plain pipelined HINCRBY/PFADD (pre-packed)")
    copy_p = Path_("(b) Postgres COPY, 1,000 rows per COPY, 1 connection")
    insert1_p = Path_("(a) Postgres INSERT per event, autocommit, 1 connection")
    insert_p = Path_(f"(a) Postgres INSERT per event, autocommit, {args.insert_conns} connections")
    backlog: list[int] = []
    redis_usec: dict[str, list[int]] = {}
    redis_events = 0.0
    sync = sync_redis.Redis.from_url(st.redis_url)
    wm_key = ProjectKeys(svc.prefix, "bench").watermarks

    async def direct_run(path: Path_, call: Callable[[int], Awaitable[None]]) -> None:
        with CpuMeter(None, st.redis_url, baseline_db) as cpu:
            calls, elapsed = await _drive(
                call,
                seconds=args.direct_seconds,
                max_calls=int(args.direct_seconds * 1000),
                in_flight=args.in_flight,
            )
        path.rates.append(calls * BATCH / elapsed)
        path.cpu.append({k: v / elapsed for k, v in cpu.used.items()})
        await direct.reset()

    async def direct_round() -> None:
        await direct.open()
        try:
            await direct_run(script_p, direct.script)
            await direct_run(apply_p, direct.apply)
            await direct_run(pipe_p, direct.pipelined)
        finally:
            await direct.close()

    raw = generate.raw_events(baseline_events[: args.copy_events])
    copy_records = _records(raw * (args.copy_events // len(raw) + 1), "bench")[: args.copy_events]
    run_wrk(svc.url, script, seconds=1, connections=2)  # warm-up
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds}: counters over HTTP for {args.seconds:.0f}s")
        accepted0 = svc.metric("counters_events_accepted_total")
        stats0 = redis_commandstats(st.redis_url)
        with CpuMeter(svc.pid, st.redis_url, svc.database_url) as cpu:
            res = run_wrk(
                svc.url,
                script,
                seconds=args.seconds,
                connections=args.connections,
                threads=args.threads,
            )
        accepted = svc.metric("counters_events_accepted_total") - accepted0
        stats1 = redis_commandstats(st.redis_url)
        for cmd, (calls, usec) in stats1.items():
            c0, u0 = stats0.get(cmd, (0, 0))
            acc = redis_usec.setdefault(cmd, [0, 0])
            acc[0] += calls - c0
            acc[1] += usec - u0
        redis_events += accepted
        counters.rates.append(res.rate * BATCH)
        counters.cpu.append({k: v / res.seconds for k, v in cpu.used.items()})
        counters.notes.append(
            f"p50 {res.p50_ms:.0f} ms, p99 {res.p99_ms:.0f} ms per 1,000-event POST; "
            f"non-2xx {res.status_errors}, socket errors {res.errors}; "
            f"server counted {accepted:,.0f} events"
            + (" (this worker)" if args.workers > 1 else "")
        )
        rawn = int(sync.hget(wm_key, "rawn") or 0)
        backlog.append(rawn)
        log(
            f"  counters {res.rate * BATCH:,.0f} events/s ({counters.notes[-1]}); "
            f"raw backlog {rawn:,}"
        )
        log("  direct Redis paths")
        asyncio.run(direct_round())
        log(
            f"  script {script_p.rates[-1]:,.0f}/s, apply {apply_p.rates[-1]:,.0f}/s, "
            f"pipelined {pipe_p.rates[-1]:,.0f}/s"
        )
        copy_p.rates.append(asyncio.run(run_copy(baseline_db, copy_records)))
        insert_p.rates.append(
            asyncio.run(
                run_insert(baseline_db, copy_records[: args.insert_events], args.insert_conns)
            )
        )
        insert1_p.rates.append(
            asyncio.run(run_insert(baseline_db, copy_records[: args.insert_events // 4], 1))
        )
        log(
            f"  COPY {copy_p.rates[-1]:,.0f} rows/s, INSERT {insert_p.rates[-1]:,.0f} rows/s "
            f"({args.insert_conns} conns), {insert1_p.rates[-1]:,.0f} rows/s (1 conn)"
        )

    profile_md = ""
    if args.profile:
        out = st.work / "ingest.pyspy.txt"
        secs = max(5.0, min(args.seconds, 10.0))
        log(f"profiling the service with py-spy for {secs:.0f}s under the same load")
        prof = start_profile(svc.pid, secs + 1, out)
        if prof is not None:
            time.sleep(0.5)
            run_wrk(
                svc.url, script, seconds=secs, connections=args.connections, threads=args.threads
            )
            prof.wait(timeout=secs + 60)
            profile_md = (
                f"\npy-spy profile of the service under this load ({secs:.0f} s, every thread "
                "of the server process; the share of samples whose stack holds the function):"
                "\n\n" + profile_table(out) + "\n"
            )

    sync.close()

    aof_p = Path_("(c) with Redis AOF off (CONFIG SET appendonly no), once, for context")
    if args.aof_off and st.data_dir is not None:
        import redis as sync_redis2

        r = sync_redis2.Redis.from_url(st.redis_url)
        try:
            r.config_set("appendonly", "no")
            log("direct Redis script once more with AOF off")

            async def aof_off() -> None:
                await direct.open()
                try:
                    await direct_run(aof_p, direct.script)
                finally:
                    await direct.close()

            asyncio.run(aof_off())
            log(f"  script, AOF off: {aof_p.rates[-1]:,.0f}/s")
        finally:
            r.close()

    c = median(counters.rates)
    rows = []
    shown = [counters, insert1_p, insert_p, copy_p, script_p, apply_p, pipe_p]
    if aof_p.rates:
        shown.append(aof_p)
    for path in shown:
        m = median(path.rates)
        rows.append(
            (
                path.label,
                fmt(m),
                " / ".join(fmt(x) for x in path.rates),
                "1" if path is counters else f"{c / m:.2f}",
            )
        )
    table = md_table(["path", "events/s (median)", "each round", "counters ÷ this"], rows)
    cpu_rows = []
    for path in [counters, script_p, apply_p, pipe_p, *([aof_p] if aof_p.rates else [])]:
        agg: dict[str, float] = {}
        for d in path.cpu:
            for k, v in d.items():
                agg.setdefault(k, 0.0)
                agg[k] += v / len(path.cpu)
        m = median(path.rates)
        cpu_rows.append(
            (
                path.label.split(":")[0],
                *(
                    f"{agg.get(k, 0) * 100:.0f}% ({agg.get(k, 0) / m * 1e6:.1f} µs/ev)"
                    for k in ("service", "self", "redis", "postgres", "loadgen")
                ),
            )
        )
    cpu_table = md_table(
        ["path", "service process", "bench process", "Redis", "Postgres", "wrk"], cpu_rows
    )
    per_cmd = sorted(
        ((cmd, u / redis_events) for cmd, (_, u) in redis_usec.items() if redis_events),
        key=lambda kv: -kv[1],
    )
    inside = sum(u for cmd, u in per_cmd if cmd not in ("evalsha", "eval"))
    script_us = dict(per_cmd).get("evalsha", 0.0)
    redis_md = (
        "Redis time per event during the counters runs (INFO commandstats; a command a script "
        "calls counts both on its own line and inside `evalsha`): "
        + ", ".join(f"`{cmd}` {u:.2f} µs" for cmd, u in per_cmd[:8] if u >= 0.01)
        + f". The script's own overhead (Lua, argument unpacking, AOF propagation): "
        f"{script_us - inside:.1f} µs of its {script_us:.1f} µs per event."
        if per_cmd
        else ""
    )
    targets = [
        f"≥ 100,000 events/s: {'met' if c >= 100_000 else 'not met'} ({fmt(c)})",
        f"≥ 0.5 × direct Redis (c): {'met' if c / median(script_p.rates) >= 0.5 else 'not met'} "
        f"({c / median(script_p.rates):.2f})",
        f"≥ 20 × per-row INSERT: {'met' if c / median(insert_p.rates) >= 20 else 'not met'} "
        f"({c / median(insert_p.rates):.1f})",
    ]
    body = "\n".join(
        [
            busy,
            "",
            f"{args.bodies} distinct bodies of {BATCH:,} generated events (5 Zipf dims, 3 names, "
            f"uids out of {args.uids:,}), no `ts`; wrk {args.threads} thread, "
            f"{args.connections} keep-alive connections, {args.seconds:.0f} s per run; the "
            f"service {PERSISTER[args.persister]} "
            f"(grace 30 s), no cross-tabs. Direct-Redis paths: {args.in_flight} calls in "
            f"flight for {args.direct_seconds:.0f} s each, "
            f"{direct.groups_per_batch():,.0f} Redis commands per batch as plain commands. "
            f"INSERT: {args.insert_events:,} events per round over {args.insert_conns} "
            f"connections, {args.insert_events // 4:,} over one; COPY {args.copy_events:,}. "
            f"{args.rounds} rounds, paths alternating.",
            "",
            table,
            "",
            "counters per run: " + "; ".join(counters.notes) + ".",
            f"Raw-log backlog in Redis after each counters run: "
            f"{', '.join(f'{b:,}' for b in backlog)} events.",
            "",
            "Sustained ingest (the raw-log copy running beside it) is `bench sustained`.",
            "",
            "CPU while each path ran (share of one core, and per event):",
            "",
            cpu_table,
            "",
            redis_md,
            "",
            "Targets: " + "; ".join(targets) + ".",
            profile_md,
        ]
    )
    report(
        "Scenario 1: batch ingest (bench.ingest)",
        "bench.ingest",
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
