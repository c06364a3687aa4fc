"""The nightly reconcile shared by N processes, measured (issue 12 item 3), and the cost of
the progress plan (one GROUP BY per day vs one count).

    .venv/bin/python -m bench.ops_share --projects 4 --events 15000 --runners 1,2

Loads `projects` projects of `events` events each (the last 20 hours, 3 dims, uids) through
the ingestor and the persister on private embedded servers, then for each runner count N
starts N processes that each run engines/schedule.reconcile_share over the same projects
(one night: the same `since`), and reports the wall time, each process's share, peak RSS,
and that reconcile_runs holds exactly one run per project for that night."""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec

from counters.core.buckets import DAY_MS, HOUR_MS, Grain, bucket_ceil, bucket_start
from counters.core.clock import SystemClock
from counters.core.config import Settings
from counters.core.models import EventIn, RawEvent
from counters.engines.schedule import reconcile_share
from counters.harness.servers import create_database, start_servers, stop_servers
from counters.services import build_services
from lua.client import open_redis
from persist import rawlog
from persist.db import create_pool
from persist.projects import ensure_project


def log(text: str) -> None:
    print(time.strftime("%H:%M:%S ") + text, file=sys.stderr, flush=True)


async def _services(settings: Settings) -> Any:
    redis = open_redis(settings.redis_url or "")
    pool = await create_pool(settings.database_url or "", max_size=4)
    return build_services(settings, SystemClock(), redis, pool), redis, pool


async def load(settings: Settings, projects: list[str], events: int) -> None:
    """Ingests and persists every project's events (through the production paths)."""
    services, redis, pool = await _services(settings)
    rng = random.Random(1)
    now = SystemClock().now_ms()
    for project in projects:
        async with pool.acquire() as conn:
            await ensure_project(conn, project)
        for lo in range(0, events, 250):
            batch = [
                msgspec.convert(
                    {
                        "name": rng.choice(["view", "click", "buy"]),
                        "ts": now - rng.randrange(20 * HOUR_MS),
                        "dims": {
                            "country": f"c{rng.randrange(20)}",
                            "source": f"s{rng.randrange(8)}",
                            "plan": f"p{rng.randrange(3)}",
                        },
                        "uid": f"u{rng.randrange(5000)}",
                        "value": rng.randrange(100) / 10,
                    },
                    EventIn,
                )
                for _ in range(min(250, events - lo))
            ]
            await services.ingestor.apply(project, services.validate(batch, now_ms=now))
        while True:
            await services.persister.persist_project(project)
            async with pool.acquire() as conn:
                if await rawlog.count_raw(conn, project, 0, now + DAY_MS, None) >= events:
                    break
        log(f"loaded {project}: {events} events")
    await pool.close()
    await redis.aclose()


async def plan_cost(settings: Settings, projects: list[str]) -> dict[str, float]:
    """Milliseconds of count_raw vs count_raw_days over each project's 2-day window."""
    pool = await create_pool(settings.database_url or "", max_size=2)
    now = SystemClock().now_ms()
    lo, hi = bucket_start(now - DAY_MS, Grain.day), bucket_ceil(now, Grain.day)
    out = {"count_raw_ms": 0.0, "count_raw_days_ms": 0.0}
    async with pool.acquire() as conn:
        for project in projects:
            t = time.perf_counter()
            await rawlog.count_raw(conn, project, lo, hi, None)
            out["count_raw_ms"] += (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            await rawlog.count_raw_days(conn, project, lo, hi, None)
            out["count_raw_days_ms"] += (time.perf_counter() - t) * 1000
    await pool.close()
    return out


async def plan_cost_at_scale(settings: Settings, rows: int, days: int = 7) -> dict[str, float]:
    """Seconds of count_raw vs count_raw_days over `rows` raw rows of one project spread over
    `days` UTC days (rows COPYed straight into the raw log)."""
    pool = await create_pool(settings.database_url or "", max_size=2)
    project = "plan" + uuid.uuid4().hex[:8]
    end = bucket_start(SystemClock().now_ms(), Grain.day)
    start = end - days * DAY_MS
    step = (end - start) // rows
    async with pool.acquire() as conn:
        await ensure_project(conn, project)
        await rawlog.create_partitions(conn, range(start, end, DAY_MS))
        for lo in range(0, rows, 100_000):
            records = [
                rawlog.raw_record(
                    project,
                    RawEvent("view", start + i * step, None, {"country": "c1"}, 0, f"u{i}", 0),
                    f"{start + i}-0",
                    0,
                )
                for i in range(lo, min(rows, lo + 100_000))
            ]
            await rawlog.copy_raw_rows(conn, records)
        await conn.execute("ANALYZE raw_events")
        out: dict[str, float] = {}
        for label, count in (
            ("count_raw_s", rawlog.count_raw),
            ("count_raw_days_s", rawlog.count_raw_days),
        ):
            t = time.perf_counter()
            await count(conn, project, start, end, None)
            out[label] = round(time.perf_counter() - t, 3)
    await pool.close()
    return out


async def runner(settings: Settings, projects: list[str], since: datetime) -> None:
    """One process's share of the night, printed as JSON."""
    services, redis, pool = await _services(settings)
    t = time.perf_counter()
    share = await reconcile_share(
        services.rebuilder,
        pool,
        projects,
        now_ms=services.clock.now_ms(),
        days=1,
        since=since,
        echo=lambda _line: None,
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss_mb = usage.ru_maxrss / 1024
    print(
        json.dumps(
            {
                "reconciled": share.reconciled,
                "done_elsewhere": share.done_elsewhere,
                "discrepancies": share.discrepancies,
                "seconds": round(time.perf_counter() - t, 2),
                "peak_rss_mb": round(rss_mb),
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            }
        )
    )
    await pool.close()
    await redis.aclose()


async def runs_since(settings: Settings, projects: list[str], since: datetime) -> dict[str, int]:
    pool = await create_pool(settings.database_url or "", max_size=1)
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT project, count(*) AS n FROM reconcile_runs WHERE kind = 'reconcile'"
            " AND project = ANY($1) AND finished_at >= $2 GROUP BY project",
            projects,
            since,
        )
    await pool.close()
    return {r["project"]: r["n"] for r in rows}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--projects", type=int, default=4)
    ap.add_argument("--events", type=int, default=15_000)
    ap.add_argument("--runners", default="1,2")
    ap.add_argument("--plan-rows", type=int, default=0, help="also time the plan over N rows")
    ap.add_argument("--runner", help=argparse.SUPPRESS)  # settings JSON: run one share
    ap.add_argument("--names", help=argparse.SUPPRESS)
    ap.add_argument("--since", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runner:
        settings = msgspec.json.decode(args.runner, type=Settings)
        since = datetime.fromisoformat(args.since)
        asyncio.run(runner(settings, args.names.split(","), since))
        return
    servers = start_servers(None, None, tmp_prefix="ops-share-")
    try:
        dsn = create_database(servers.server_url, "ops_share", servers.owner_url)
        settings = Settings(
            redis_url=servers.redis_url,
            database_url=dsn,
            key_prefix="opsshare",
            data_dir=str(servers.data_dir),
        )
        projects = sorted("p" + uuid.uuid4().hex[:8] for _ in range(args.projects))
        t = time.perf_counter()
        asyncio.run(load(settings, projects, args.events))
        log(f"load: {time.perf_counter() - t:.1f}s")
        log(
            f"plan cost over {len(projects)} projects: {asyncio.run(plan_cost(settings, projects))}"
        )
        if args.plan_rows:
            cost = asyncio.run(plan_cost_at_scale(settings, args.plan_rows))
            log(f"plan cost over {args.plan_rows:,} raw rows of one project, 7 days: {cost}")
        encoded = msgspec.json.encode(settings).decode()
        for n in (int(x) for x in args.runners.split(",")):
            since = datetime.now(UTC)
            t = time.perf_counter()
            procs = [
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bench.ops_share",
                        "--runner",
                        encoded,
                        "--names",
                        ",".join(projects),
                        "--since",
                        since.isoformat(),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
                for _ in range(n)
            ]
            shares = [json.loads(p.communicate()[0]) for p in procs]
            wall = time.perf_counter() - t
            runs = asyncio.run(runs_since(settings, projects, since))
            once = sorted(runs) == projects and set(runs.values()) == {1}
            total = args.projects * args.events
            log(
                f"{n} runner(s): {wall:.1f}s wall, {total / wall:,.0f} events/s over"
                f" {len(projects)} projects x {args.events}; each project reconciled exactly"
                f" once: {once}; shares: "
                + "; ".join(
                    f"{len(s['reconciled'])} reconciled, {len(s['done_elsewhere'])} skipped,"
                    f" {s['seconds']}s ({s['cpu_s']}s CPU), {s['peak_rss_mb']} MB"
                    for s in shares
                )
            )
    finally:
        stop_servers(servers)


if __name__ == "__main__":
    main()
