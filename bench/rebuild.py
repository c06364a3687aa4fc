"""Rebuild and reconcile at volume (issue 12): `counters rebuild` and `counters reconcile`
over a loaded history, timed over the whole command with the child's peak RSS, side by side
with Postgres COPY of the same raw rows and a DuckDB GROUP BY over the same events in
Parquet; and ingest's rate alone and while reconcile runs.

    .venv/bin/python -m bench rebuild [--events 1000000,10000000] [--quick]
        [--reconcile-events-per-day 1000000] [--ingest-seconds 20] [--no-append]

Per size N: N events over 30 days for one project (bench/generate.py's Zipf dims, 3 names,
uids u<int> out of 100k, values on conversions) loaded through the persister's own paths
(bench/rebuild_load.py: raw log, rollups of all three grains with sketches built by numpy
as PFADD builds them, watermarks sealing every bucket). Then, each a fresh CLI process:
rebuild --dry-run (must find 0 discrepancies: the dataset is what live ingest builds), a
real rebuild (0 days rewritten), a real rebuild after deleting the project's rollup rows of
the range (every day rewritten), and a last dry run (0 again). Reconcile: a second project
with 7 days x --reconcile-events-per-day, `counters reconcile --days 7` dry run and real
run. Ingest: `counters serve` (persister on) takes POST /v1/events at full speed for
--ingest-seconds with nothing else running, then again while `counters reconcile --days 7`
runs back to back. Results are appended to bench/RESULTS.md."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from bench import rss
from bench.common import (
    ROOT,
    ServiceProc,
    Stack,
    append_results,
    busy_warning,
    command,
    load_now,
    log,
    md_table,
    stack,
)
from bench.generate import events as json_events
from bench.generate import json_batches
from bench.rebuild_data import Events, generate
from bench.rebuild_load import Loaded, load
from counters.core.buckets import DAY_MS, Grain, bucket_start
from counters.engines.retention import minute_edge
from counters.harness.servers import Backends, drop_database
from counters.harness.service import cli, create_key, service_env
from persist.db import create_pool

SPAN_DAYS = 30
RECONCILE_DAYS = 7
UIDS = 100_000
MINUTE_DAYS = 14
INGEST_BATCH = 100
INGEST_IN_FLIGHT = 16
REBUILD_TARGET = 500_000
"""Issue 12: rebuild events/s over the whole command."""
RECONCILE_TARGET_S = 30.0
RSS_TARGET_MB = 300.0
INGEST_SLOWDOWN = 0.10
T = TypeVar("T")
INGEST_RATE = 10_000
"""Events/s of the paced ingest (Routy's "10k events a second")."""


@dataclass
class Step:
    """One measured step: what ran, its wall seconds, the events it covered, the child's peak
    RSS (MB; 0 when in-process) and what it reported."""

    size: str
    label: str
    seconds: float
    events: int
    rss_mb: float = 0.0
    outcome: str = ""

    @property
    def rate(self) -> float:
        """Events per second over the whole step."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Dataset:
    """One database with its own key prefix, and the CLI environment pointing at it."""

    name: str
    url: str
    prefix: str
    env: dict[str, str]
    work: Path


@dataclass
class Run:
    """Everything measured in one run, and the problems found (a non-empty list fails)."""

    steps: list[Step] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        log(
            f"  {step.size} {step.label}: {step.seconds:.2f}s, {step.rate:,.0f} events/s,"
            f" {step.rss_mb:.0f} MB {step.outcome}"
        )
        return step

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            log("  PROBLEM: " + problem)
            self.problems.append(problem)


# -- backends -----------------------------------------------------------------------------------


def dataset(s: Stack, label: str) -> Dataset:
    """A fresh migrated database and key prefix; the env is what service_env gives the CLI
    and the service (no cross-tabs, nightly reconcile off)."""
    url = s.database(label)
    name = s.databases[-1]
    prefix = f"brb{label}{uuid.uuid4().hex[:4]}"
    work = s.work / f"{label}-{uuid.uuid4().hex[:4]}"
    work.mkdir(parents=True)
    env = service_env(
        Backends(s.redis_url, url, prefix, None),
        work,
        COUNTERS_CROSSTABS="",
        COUNTERS_RECONCILE_ENABLED="false",
        COUNTERS_GRACE_SECONDS="30",
        COUNTERS_PERSIST_INTERVAL_SECONDS="1",
    )
    cli(env, "migrate")
    return Dataset(name, url, prefix, env, work)


def drop(s: Stack, ds: Dataset) -> None:
    """Drops the dataset's database now (frees its disk before the next size)."""
    with contextlib.suppress(Exception):
        drop_database(s.server_url, ds.name)
    with contextlib.suppress(ValueError):
        s.databases.remove(ds.name)


def timed_cli(ds: Dataset, *args: str) -> tuple[float, float, int, str]:
    """Runs `counters <args>` in a fresh child (through bench/rss.py, so the peak RSS is the
    CLI's own, not this process's memory it would be forked with): (wall seconds, peak RSS
    in MB, exit code, stdout + stderr)."""
    out_path = ds.work / f"cli-{uuid.uuid4().hex[:6]}.log"
    with open(out_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(
            # --session: the CLI leads its own session, as a cron or systemd job does (its
            # --nice then reaches the scheduler's autogroup: see counters/cli)
            [sys.executable, "-m", "bench.rss", "--session", sys.executable, "-m", "counters"]
            + list(args),
            env=ds.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            check=False,
        )
        seconds = time.perf_counter() - t0
    rss_mb, text = rss.parse(out_path.read_text())
    return seconds, rss_mb, proc.returncode, text


def discrepancies(text: str) -> int | None:
    """The count from the CLI's last `discrepancies: N` line (None when absent)."""
    found = re.findall(r"^discrepancies: (\d+)$", text, re.M)
    return int(found[-1]) if found else None


def rewritten_days(text: str) -> int | None:
    """The N of `rewrote N day(s)` (None when absent)."""
    found = re.findall(r"rewrote (\d+) day", text)
    return int(found[-1]) if found else None


# -- one history ----------------------------------------------------------------------------------


async def load_history(
    ds: Dataset, project: str, ev: Events, end: int, minute_low: int, *, scratch: str | None
) -> Loaded:
    """The history loaded into the dataset (see bench/rebuild_load.py)."""
    from lua.client import open_redis

    pool = await create_pool(ds.url, max_size=2)
    redis = open_redis(ds.env["COUNTERS_REDIS_URL"])
    try:
        return await load(
            pool,
            redis,
            f"{ds.prefix}:{{p:{project}}}:tmp:sketch-check",
            project,
            ev,
            end_ms=end,
            minute_low=minute_low,
            uids=UIDS,
            scratch_table=scratch,
            log=log,
        )
    finally:
        await redis.aclose()
        await pool.close()


async def sql(ds: Dataset, statement: str) -> str:
    """Runs one statement on the dataset; returns its status."""
    import asyncpg

    conn = await asyncpg.connect(ds.url)
    try:
        status: str = await conn.execute(statement)
        return status
    finally:
        await conn.close()


def write_parquet(path: Path, ev: Events) -> None:
    """The events as one Parquet file (ts, name, the five dims, uid, value in micros)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.generate import DIM_NAMES, NAMES
    from bench.rebuild_data import VOCABS

    def labels(codes: Any, vocab: Any) -> Any:
        return pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(list(vocab)))

    with pq.ParquetWriter(path, _parquet_schema()) as writer:
        for lo in range(0, ev.n, 2_000_000):
            hi = min(lo + 2_000_000, ev.n)
            cols: dict[str, Any] = {
                "ts": pa.array(ev.ts[lo:hi].astype("datetime64[ms]")),
                "name": labels(ev.name[lo:hi].astype("int32"), NAMES).cast(pa.string()),
            }
            for i, d in enumerate(DIM_NAMES):
                cols[d] = labels(ev.dims[i, lo:hi].astype("int32"), VOCABS[i]).cast(pa.string())
            cols["uid"] = pa.array(ev.uid[lo:hi])
            cols["value"] = pa.array(ev.value_micros[lo:hi])
            writer.write_table(pa.table(cols, schema=_parquet_schema()), row_group_size=1_000_000)


def _parquet_schema() -> Any:
    import pyarrow as pa

    from bench.generate import DIM_NAMES

    return pa.schema(
        [("ts", pa.timestamp("ms")), ("name", pa.string())]
        + [(d, pa.string()) for d in DIM_NAMES]
        + [("uid", pa.int32()), ("value", pa.int64())]
    )


def duckdb_rollups(path: Path, minute_low: int) -> tuple[float, int]:
    """DuckDB's GROUP BY of the same aggregation the rollups hold (per grain bucket and
    field, count and sum; minutes from minute_low): (seconds, rows)."""
    import duckdb

    from bench.generate import DIM_NAMES

    sets = ", ".join(["(b, name)"] + [f"(b, name, {d})" for d in DIM_NAMES])
    con = duckdb.connect()
    rows = 0
    t0 = time.perf_counter()
    for unit, where in (
        ("minute", f"WHERE ts >= epoch_ms({minute_low})"),
        ("hour", ""),
        ("day", ""),
    ):
        q = (
            f"SELECT date_trunc('{unit}', ts) AS b, name, {', '.join(DIM_NAMES)},"
            f" count(*) AS n, sum(value) AS s FROM read_parquet('{path}') {where}"
            f" GROUP BY GROUPING SETS ({sets})"
        )
        rows += con.sql(q).to_arrow_table().num_rows
    seconds = time.perf_counter() - t0
    con.close()
    return seconds, rows


def _rows(loaded: Loaded) -> str:
    return (
        f"{loaded.rollup_rows:,} rollup rows; raw log {loaded.raw_seconds:.1f}s,"
        f" rollups {loaded.rollup_seconds:.1f}s"
    )


async def rebuild_size(s: Stack, n: int, run: Run, *, load_only: bool = False) -> None:
    """Steps 1-3 and the baselines for one size."""
    size = f"{n:,}"
    end = bucket_start(time.time_ns() // 1_000_000, Grain.day)
    start = end - SPAN_DAYS * DAY_MS
    log(f"size {size}: generating {n:,} events over {SPAN_DAYS} days")
    ev = generate(n, start, end, uids=UIDS, seed=n % 1_000_003)
    ds = await asyncio.to_thread(dataset, s, f"r{n}")
    project = f"rb{n}"
    try:
        low = minute_edge(time.time_ns() // 1_000_000, MINUTE_DAYS)
        loaded = await load_history(ds, project, ev, end, low, scratch="bench_copy_baseline")
        await sql(ds, "DROP TABLE bench_copy_baseline")
        await sql(ds, "VACUUM ANALYZE raw_events, rollups_minute, rollups_hour, rollups_day")
        run.add(
            Step(size, "load (raw log + rollups + sketches)", loaded.seconds, n, 0, _rows(loaded))
        )
        run.add(Step(size, "baseline: Postgres COPY of the raw rows", loaded.copy_seconds, n))
        parquet = ds.work / "events.parquet"
        write_parquet(parquet, ev)
        duck_s, duck_rows = duckdb_rollups(parquet, low)
        run.add(
            Step(size, "baseline: DuckDB GROUP BY (Parquet)", duck_s, n, 0, f"{duck_rows:,} rows")
        )
        run.expect(
            duck_rows == loaded.rollup_rows,
            f"{size}: DuckDB makes {duck_rows:,} rollup rows, the loader {loaded.rollup_rows:,}",
        )
        parquet.unlink()
        del ev
        if load_only:
            return
        rng = ["--project", project, "--from", str(start), "--to", str(end)]
        await cli_step(run, ds, size, "rebuild --dry-run", n, ["rebuild", *rng, "--dry-run"], 0)
        await cli_step(
            run, ds, size, "rebuild (matching: 0 days rewritten)", n, ["rebuild", *rng], 0, days=0
        )
        deleted = 0
        for table in ("rollups_minute", "rollups_hour", "rollups_day"):
            status = await sql(
                ds,
                f"DELETE FROM {table} WHERE project = '{project}'"
                f" AND bucket >= to_timestamp({start / 1000})"
                f" AND bucket < to_timestamp({end / 1000})",
            )
            deleted += int(status.split()[-1])
        log(f"  deleted {deleted:,} rollup rows")
        await cli_step(
            run,
            ds,
            size,
            f"rebuild (all {deleted:,} rows deleted)",
            n,
            ["rebuild", *rng],
            None,
            days=SPAN_DAYS,
        )
        await cli_step(
            run, ds, size, "rebuild --dry-run (after)", n, ["rebuild", *rng, "--dry-run"], 0
        )
    finally:
        await asyncio.to_thread(drop, s, ds)


async def cli_step(
    run: Run,
    ds: Dataset,
    size: str,
    label: str,
    events: int,
    args: list[str],
    want: int | None,
    *,
    days: int | None = None,
) -> str:
    """One timed CLI step; checks its exit code, discrepancies (want, unless None) and days
    rewritten (days, unless None)."""
    seconds, rss, code, text = await asyncio.to_thread(timed_cli, ds, *args)
    found = discrepancies(text)
    rewrote = rewritten_days(text)
    outcome = f"{found} discrepancies" + (
        f", {rewrote} days rewritten" if rewrote is not None else ""
    )
    run.add(Step(size, label, seconds, events, rss, outcome))
    run.expect(code == 0, f"{size} {label}: exit {code}: {text[-1500:]}")
    if want is not None:
        run.expect(
            found == want, f"{size} {label}: {found} discrepancies, want {want}: {text[-800:]}"
        )
    if days is not None:
        run.expect(rewrote == days, f"{size} {label}: rewrote {rewrote} days, want {days}")
    return text


# -- reconcile and ingest -------------------------------------------------------------------------


async def reconcile_and_ingest(
    s: Stack,
    per_day: int,
    ingest_seconds: float,
    run: Run,
    *,
    ingest_rate: float = 0.0,
    load_only: bool = False,
) -> None:
    """Step 4: reconcile over 7 days x per_day events, then ingest alone and during reconcile."""
    n = per_day * RECONCILE_DAYS
    size = f"7 x {per_day:,}"
    end = bucket_start(time.time_ns() // 1_000_000, Grain.day)
    log(f"reconcile: {n:,} events over {RECONCILE_DAYS} days")
    ev = generate(n, end - RECONCILE_DAYS * DAY_MS, end, uids=UIDS, seed=11)
    ds = await asyncio.to_thread(dataset, s, "rec")
    project = "rc"
    try:
        low = minute_edge(time.time_ns() // 1_000_000, MINUTE_DAYS)
        loaded = await load_history(ds, project, ev, end, low, scratch=None)
        del ev
        await sql(ds, "VACUUM ANALYZE raw_events, rollups_minute, rollups_hour, rollups_day")
        run.add(
            Step(size, "load (raw log + rollups + sketches)", loaded.seconds, n, 0, _rows(loaded))
        )
        if load_only:
            return
        rec = ["reconcile", "--days", str(RECONCILE_DAYS), "--project", project]
        await cli_step(run, ds, size, "reconcile --dry-run", n, [*rec, "--dry-run"], 0)
        await cli_step(run, ds, size, "reconcile", n, rec, 0)
        if ingest_seconds > 0:
            await ingest_under_reconcile(s, ds, rec, n, ingest_seconds, run, ingest_rate)
    finally:
        await asyncio.to_thread(drop, s, ds)


async def ingest_under_reconcile(
    s: Stack, ds: Dataset, rec: list[str], events: int, seconds: float, run: Run, rate: float
) -> None:
    """Ingest's rate alone, then while reconcile runs back to back (same service, database
    and Redis)."""
    svc = ServiceProc(ds.env, ds.work / "service.log", ["--workers", "1"], ds.url, ds.prefix)
    s.services.append(svc)
    await asyncio.to_thread(svc.start)
    key = await asyncio.to_thread(create_key, ds.env, "ingest", "ingest")
    bodies = json_batches(json_events(20_000, uids=UIDS, seed=5, with_ts=False), batch=INGEST_BATCH)
    await drive(svc.url, key, bodies, min(5.0, seconds))  # warm-up, not counted
    during = 0
    for round_ in (1, 2):  # alternated, so a backlog or a noisy neighbour hits each alike
        alone = await drive(svc.url, key, bodies, seconds)
        run.add(
            Step(
                "ingest",
                f"POST /v1/events alone (round {round_})",
                seconds,
                alone,
                0,
                f"{alone / seconds:,.0f} events/s",
            )
        )
        for label, extra in (("--nice 0", ["--nice", "0"]), ("default --nice", [])):
            during, passes = await _ingest_beside(
                ds, [*rec, *extra], run, lambda: drive(svc.url, key, bodies, seconds)
            )
            ratio = during / alone if alone else 0.0
            run.add(
                Step(
                    "ingest",
                    f"POST /v1/events during reconcile {label} ({passes} passes, round {round_})",
                    seconds,
                    during,
                    0,
                    f"{during / seconds:,.0f} events/s, {ratio:.2f}x of alone",
                )
            )
    run.expect(during > 0, "no events ingested during reconcile")
    if rate > 0:
        # the load a dashboard's users put on it (Routy's "10k events a second"), not all
        # the machine can take: does ingest keep up, and how late are its batches?
        for label, beside in (("alone", False), ("during reconcile, default --nice", True)):
            if beside:
                paced, passes = await _ingest_beside(
                    ds, rec, run, lambda: drive_paced(svc.url, key, bodies, seconds, rate)
                )
                label = f"{label} ({passes} passes)"
            else:
                paced = await drive_paced(svc.url, key, bodies, seconds, rate)
            run.add(
                Step(
                    "ingest",
                    f"paced POST /v1/events at {rate:,.0f}/s {label}",
                    seconds,
                    paced.accepted,
                    0,
                    f"{paced.accepted / seconds:,.0f} events/s, batch lateness p50"
                    f" {paced.p50_ms:.1f} ms, p99 {paced.p99_ms:.1f} ms",
                )
            )
    svc.stop()
    del events


async def _ingest_beside(
    ds: Dataset, rec: list[str], run: Run, driving: Callable[[], Awaitable[T]]
) -> tuple[T, int]:
    """What `driving()` (an ingest drive) returns while `counters <rec>` runs back to back,
    and the reconcile's passes meanwhile."""
    stop = asyncio.Event()
    passes = 0

    async def reconcile_loop() -> None:
        nonlocal passes
        while not stop.is_set():
            _, _, code, text = await asyncio.to_thread(timed_cli, ds, *rec)
            run.expect(code == 0, f"reconcile during ingest: exit {code}: {text[-800:]}")
            passes += 1

    task = asyncio.create_task(reconcile_loop())
    during = await driving()
    stop.set()
    await task
    return during, passes


@dataclass
class Paced:
    """What a paced drive got through: events accepted and how late batches finished
    against their schedule (ms)."""

    accepted: int
    p50_ms: float
    p99_ms: float


async def drive_paced(
    url: str, key: str, bodies: list[bytes], seconds: float, rate: float
) -> Paced:
    """POSTs batches on a fixed schedule of `rate` events/s for `seconds` (INGEST_IN_FLIGHT
    at most at once); each batch's lateness is measured from when it was due, so a service
    that falls behind shows it (no coordinated omission)."""
    accepted = 0
    late: list[float] = []
    interval = INGEST_BATCH / rate
    start = time.perf_counter()
    due_count = int(seconds / interval)
    taken = 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=INGEST_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def loop() -> None:
            nonlocal accepted, taken
            while taken < due_count:
                k, taken = taken, taken + 1
                due = start + k * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                r = await client.post(
                    "/v1/events", content=bodies[k % len(bodies)], headers=headers
                )
                late.append((time.perf_counter() - due) * 1000)
                if r.status_code in (200, 202):
                    accepted += INGEST_BATCH

        await asyncio.gather(*(loop() for _ in range(INGEST_IN_FLIGHT)))
    late.sort()

    def at(q: float) -> float:
        return late[min(len(late) - 1, int(q * len(late)))] if late else 0.0

    return Paced(accepted, at(0.5), at(0.99))


async def drive(url: str, key: str, bodies: list[bytes], seconds: float) -> int:
    """POSTs the bodies round-robin from INGEST_IN_FLIGHT loops for `seconds`; returns events
    accepted."""
    accepted = 0
    deadline = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=INGEST_IN_FLIGHT)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:

        async def loop(i: int) -> None:
            nonlocal accepted
            while time.perf_counter() < deadline:
                r = await client.post(
                    "/v1/events", content=bodies[i % len(bodies)], headers=headers
                )
                if r.status_code in (200, 202):
                    accepted += INGEST_BATCH
                i += INGEST_IN_FLIGHT

        await asyncio.gather(*(loop(i) for i in range(INGEST_IN_FLIGHT)))
    return accepted


# -- report ---------------------------------------------------------------------------------------


def table(run: Run) -> str:
    """Every step with its ratio to the COPY and DuckDB baselines of the same size."""
    base: dict[str, dict[str, float]] = {}
    for st in run.steps:
        if st.label.startswith("baseline: Postgres COPY"):
            base.setdefault(st.size, {})["copy"] = st.rate
        if st.label.startswith("baseline: DuckDB"):
            base.setdefault(st.size, {})["duck"] = st.rate
    rows = []
    for st in run.steps:
        b = base.get(st.size, {})
        vs_copy = f"{st.rate / b['copy']:.3f}" if b.get("copy") and st.rss_mb else ""
        vs_duck = f"{st.rate / b['duck']:.4f}" if b.get("duck") and st.rss_mb else ""
        rows.append(
            [
                st.size,
                st.label,
                f"{st.seconds:.2f}",
                f"{st.rate:,.0f}",
                f"{st.rss_mb:.0f}" if st.rss_mb else "",
                vs_copy,
                vs_duck,
                target(st, run.steps),
                st.outcome,
            ]
        )
    return md_table(
        [
            "events",
            "step",
            "seconds",
            "events/s",
            "peak RSS MB",
            "÷ COPY",
            "÷ DuckDB",
            "issue 12 target",
            "result",
        ],
        rows,
    )


def target(step: Step, steps: list[Step]) -> str:
    """Whether a step meets issue 12's target: rebuild >= 500k events/s, reconcile < 30 s,
    both under 300 MB; ingest during reconcile within 10 % of ingest alone."""
    rss_ok = step.rss_mb < RSS_TARGET_MB
    if step.label.startswith("rebuild"):
        ok = step.rate >= REBUILD_TARGET and rss_ok
        return f"{'met' if ok else 'missed'} (>= 500k/s, < 300 MB)"
    if step.label.startswith("reconcile"):
        ok = step.seconds < RECONCILE_TARGET_S and rss_ok
        return f"{'met' if ok else 'missed'} (< 30 s, < 300 MB)"
    if step.label.startswith("paced POST /v1/events") and "during" in step.label:
        before = steps[: steps.index(step)]
        alone = next((s for s in reversed(before) if s.label.endswith("/s alone")), None)
        if alone is None or not alone.rate:
            return ""
        ok = step.rate >= (1 - INGEST_SLOWDOWN) * alone.rate
        return f"{'met' if ok else 'missed'} (keeps up within 10 %)"
    if step.label.startswith("POST /v1/events during"):
        before = steps[: steps.index(step)]
        alone = next(
            (s for s in reversed(before) if s.label.startswith("POST /v1/events alone")), None
        )
        if alone is None or not alone.rate:
            return ""
        ok = step.rate >= (1 - INGEST_SLOWDOWN) * alone.rate
        return f"{'met' if ok else 'missed'} (slowed < 10 %)"
    return ""


def git_rev() -> str:
    """The checked-out commit (short), with "+dirty" when the work tree has changes."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (rev or "unknown") + ("+dirty" if dirty else "")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench rebuild",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", default="1000000,10000000", help="sizes, comma-separated")
    p.add_argument("--reconcile-events-per-day", type=int, default=1_000_000)
    p.add_argument("--ingest-seconds", type=float, default=20.0)
    p.add_argument(
        "--ingest-rate",
        type=float,
        default=INGEST_RATE,
        help="events/s of the paced ingest beside reconcile (0: none)",
    )
    p.add_argument("--quick", action="store_true", help="200k events, 7 x 100k, 10 s ingest")
    p.add_argument(
        "--load-only", action="store_true", help="only load and run the baselines (no CLI steps)"
    )
    p.add_argument("--no-append", action="store_true", help="do not append to RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.reconcile_events_per_day, args.ingest_seconds = "200000", 100_000, 10.0
        args.ingest_rate = min(args.ingest_rate, 2_000.0)
    return args


async def run_all(args: argparse.Namespace) -> Run:
    run = Run()
    with stack() as s:
        for n in [int(x) for x in args.events.split(",") if x]:
            await rebuild_size(s, n, run, load_only=args.load_only)
        if args.reconcile_events_per_day > 0:
            await reconcile_and_ingest(
                s,
                args.reconcile_events_per_day,
                args.ingest_seconds,
                run,
                ingest_rate=args.ingest_rate,
                load_only=args.load_only,
            )
    return run


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    at_start = load_now()
    note = busy_warning()
    run = asyncio.run(run_all(args))
    body = table(run)
    tail = (
        f"\n\nGit revision {git_rev()}. Each CLI step is a fresh `counters` process timed"
        " over the whole command; peak RSS"
        " is that child's own ru_maxrss (bench/rss.py)."
        " ÷ COPY and ÷ DuckDB are the step's events/s over the baseline's, same size. "
        + (
            "Problems: " + "; ".join(p[:300] for p in run.problems)
            if run.problems
            else "No problems: every dry run found 0 discrepancies."
        )
        + (f"\n\n{note}" if note else "")
    )
    title = "Rebuild and reconcile at volume (issue 12)"
    print(body + tail)
    if not args.no_append:
        append_results(
            title, command("bench", ["rebuild", *argv]), body + tail, load_at_start=at_start
        )
    return 1 if run.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
