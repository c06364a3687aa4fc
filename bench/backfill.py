"""Scenario backfill: ingest of history at live speed (issue 13, items 3 and 4).

One `counters serve` (one uvicorn worker, its in-process persister), two projects, the same
connection count and batches of 1,000 generated events (5 Zipf dims, 3 names, uids):

  live      events without `ts` (counted at arrival: the last minute), as bench.ingest posts
  backfill  events with `ts` spread uniformly over the last 30 days (every batch touches
            hundreds of sealed minutes, hours and days: the late path)

The two phases alternate --rounds times on the same server and the table gives the median
of each and their ratio. For each phase: events/s of the POSTs, the time until the
persister has caught up (raw log drained, every late generation applied), and CPU µs per
event of the service, Redis and Postgres. Then the raw-log copy alone: the same raw log
(the backfill project's) copied again by RawCopier into a fresh project while nothing else
runs, events/s and CPU µs/event of the copying process and Postgres.

    .venv/bin/python -m bench.backfill [--events 200000] [--connections 4] [--rounds 2]
        [--profile] [--append]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end)."""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import generate
from bench.common import (
    CpuMeter,
    ServiceProc,
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
    stack,
    start_profile,
)

BATCH = 1000
DAY_MS = 86_400_000
SPAN_MS = 30 * DAY_MS - 3_600_000
"""The backfill spread: the last 30 days, less an hour of margin to max_event_age_days."""
END_GAP_MS = 5 * 60_000
"""Backfill events end 5 minutes ago (all in sealed minutes)."""


@dataclass
class Phase:
    label: str
    events: int
    seconds: float
    caught_up_s: float
    cpu: dict[str, float]
    redis_us: dict[str, float]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def us(self, who: str) -> float:
        return self.cpu.get(who, 0.0) / self.events * 1e6 if self.events else 0.0


def bodies(n: int, *, backfill: bool, seed: int) -> list[bytes]:
    end = generate.now_ms() - END_GAP_MS
    evs = generate.events(n, span_ms=SPAN_MS, end_ms=end, seed=seed, with_ts=backfill)
    return generate.json_batches(evs, BATCH)


async def post_all(url: str, key: str, batches: list[bytes], connections: int) -> float:
    """POSTs every body over `connections` keep-alive connections; returns the seconds."""
    queue = list(reversed(batches))
    headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            while queue:
                body = queue.pop()
                for _ in range(50):
                    r = await client.post("/v1/events", content=body, headers=headers)
                    if r.status_code != 503:
                        break
                    await asyncio.sleep(float(r.headers.get("Retry-After", "1")))
                if r.status_code != 200:
                    raise RuntimeError(f"POST answered {r.status_code}: {r.text[:300]}")

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        return time.perf_counter() - t0


def caught_up(svc: ServiceProc, project: str) -> bool:
    """The raw log is in Postgres and no late generation is waiting to be applied."""
    import redis as sync_redis

    from lua.keys import ProjectKeys

    keys = ProjectKeys(svc.prefix, project)
    r = sync_redis.Redis.from_url(svc.env["COUNTERS_REDIS_URL"])
    try:
        wm = r.hgetall(keys.watermarks)
        gen = int(wm.get(b"gen", b"0"))
        if int(wm.get(b"rawn", b"0")) > 0:
            return False
        if r.exists(keys.late(gen), keys.late_hll_index(gen)):
            return False
    finally:
        r.close()
    return late_applied(svc.database_url, project) >= gen - 1


def late_applied(database_url: str, project: str) -> int:
    import asyncpg

    async def q() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            v = await conn.fetchval(
                "SELECT late_applied FROM persist_state WHERE project = $1", project
            )
            return int(v or 0)
        finally:
            await conn.close()

    return asyncio.run(q())


def run_phase(
    s: Stack,
    svc: ServiceProc,
    label: str,
    project: str,
    key: str,
    batches: list[bytes],
    connections: int,
    profile: Path | None,
) -> Phase:
    stats0 = redis_commandstats(s.redis_url)
    prof = start_profile(svc.pid, 10, profile) if profile is not None else None
    with CpuMeter(svc.pid, s.redis_url, svc.database_url) as cpu:
        seconds = asyncio.run(post_all(svc.url, key, batches, connections))
        t0 = time.perf_counter()
        deadline = t0 + 600
        while not caught_up(svc, project):
            if time.perf_counter() > deadline:
                raise RuntimeError(f"{label}: persister did not catch up in 600 s")
            time.sleep(0.2)
        caught = time.perf_counter() - t0
    if prof is not None:
        prof.wait(60)
    stats1 = redis_commandstats(s.redis_url)
    n = len(batches) * BATCH
    redis_us = {
        cmd: (usec - stats0.get(cmd, (0, 0))[1]) / n
        for cmd, (_, usec) in stats1.items()
        if usec - stats0.get(cmd, (0, 0))[1] > 0
    }
    phase = Phase(label, n, seconds, caught, dict(cpu.used), redis_us)
    log(
        f"{label}: {fmt(phase.rate)} events/s, caught up {caught:.1f} s later; service"
        f" {phase.us('service'):.1f} µs/ev, redis {phase.us('redis'):.1f}, postgres"
        f" {phase.us('postgres'):.1f}"
    )
    return phase


@dataclass
class RawCopy:
    events: int
    seconds: float
    python_s: float
    postgres_s: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def us(self, cpu: float) -> float:
        return cpu / self.events * 1e6 if self.events else 0.0


def raw_copy_alone(s: Stack, svc: ServiceProc, n: int, seed: int) -> RawCopy:
    """n live events written to a project's raw-log stream by the ingest script (svc runs
    without a persister), then copied to Postgres by RawCopier in this process with nothing
    else running: wall time, this process's CPU and Postgres's."""
    from counters.engines.ingest import Ingestor
    from counters.engines.rawcopy import RawCopier
    from counters.metrics import Metrics
    from lua import Scripts
    from lua.client import open_redis
    from lua.keys import ProjectKeys

    project = f"rawcopy{seed}"
    keys = ProjectKeys(svc.prefix, project)
    svc.key(project, "ingest")  # the project exists
    raw = generate.raw_events(generate.events(n, span_ms=20_000, seed=seed, with_ts=False))

    async def fill() -> None:
        redis = open_redis(s.redis_url)
        scripts = Scripts(redis)
        try:
            await scripts.restore(keys=[keys.watermarks], args=[0, 0, 0, 1, "0-0"])

            async def restore(p: str) -> None:
                raise RuntimeError("the watermarks are there")

            ing = Ingestor(
                redis,
                scripts,
                key_prefix=svc.prefix,
                crosstabs=[],
                dedupe_window_ms=60_000,
                backlog_cap=0,
                restore_watermarks=restore,
            )
            for i in range(0, len(raw), BATCH):
                await ing.apply(project, raw[i : i + BATCH])
        finally:
            await redis.aclose()

    async def copy() -> tuple[int, float, float]:
        import asyncpg

        redis = open_redis(s.redis_url)
        copier = RawCopier(redis, Scripts(redis), Metrics())
        conn = await asyncpg.connect(svc.database_url)
        try:
            await conn.execute("SELECT 1")
            c0, t0 = time.process_time(), time.perf_counter()
            done = await copier.copy(conn, keys)
            return done, time.perf_counter() - t0, time.process_time() - c0
        finally:
            await conn.close()
            await redis.aclose()

    asyncio.run(fill())
    from bench.common import postgres_cpu

    pg0 = postgres_cpu(svc.database_url)
    done, seconds, python_s = asyncio.run(copy())
    pg1 = postgres_cpu(svc.database_url)
    out = RawCopy(done, seconds, python_s, pg1 - pg0)
    log(
        f"raw copy alone: {fmt(out.rate)} events/s, copier {out.us(python_s):.1f} µs/ev,"
        f" postgres {out.us(out.postgres_s):.1f} µs/ev"
    )
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=200_000, help="events per phase and round")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--profile", action="store_true", help="py-spy the service (backfill)")
    p.add_argument("--append", action="store_true", help="append the result to RESULTS.md")
    p.add_argument("--copy-only", action="store_true", help="only the raw-copy measurement")
    p.add_argument("--quick", action="store_true", help="5,000 events, one round")
    p.add_argument(
        "--max-batch-groups",
        type=int,
        default=0,
        help="the service's max_batch_groups (default 0 = off: a 1,000-event batch spread"
        " over 30 days is ~18,600 units of script work, over the default 4,000)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.events, args.rounds = 5_000, 1
    load_at_start = load_now()
    warning = busy_warning()
    n = max(BATCH, args.events // BATCH * BATCH)
    env = {"COUNTERS_MAX_BATCH_GROUPS": str(args.max_batch_groups)}
    with stack() as s:
        svc = s.service("backfill", env=env)
        phases: dict[str, list[Phase]] = {"live": [], "backfill": []}
        prof_path = s.work / "backfill.pyspy"
        quiet = s.service("copy", persister=False, env=env)
        copies = [raw_copy_alone(s, quiet, n, seed=rnd + 1) for rnd in range(args.rounds)]
        if args.copy_only:
            for c in copies:
                print(
                    f"raw copy: {fmt(c.rate)} events/s, copier {c.us(c.python_s):.1f} µs/ev,"
                    f" postgres {c.us(c.postgres_s):.1f} µs/ev"
                )
            return
        for rnd in range(args.rounds):
            for label in ("live", "backfill"):
                project = f"{label}{rnd}"
                key = svc.key(project, "ingest")
                batches = bodies(n, backfill=label == "backfill", seed=rnd + 1)
                want = prof_path if args.profile and label == "backfill" and rnd == 0 else None
                phases[label].append(
                    run_phase(s, svc, label, project, key, batches, args.connections, want)
                )
        live, back = phases["live"], phases["backfill"]
        rows = []
        for label, ps in phases.items():
            rows.append(
                (
                    label,
                    fmt(median([x.rate for x in ps])),
                    " / ".join(fmt(x.rate) for x in ps),
                    f"{median([x.caught_up_s for x in ps]):.1f}",
                    f"{median([x.us('service') for x in ps]):.1f}",
                    f"{median([x.us('redis') for x in ps]):.1f}",
                    f"{median([x.us('postgres') for x in ps]):.1f}",
                )
            )
        ratio = median([x.rate for x in back]) / median([x.rate for x in live])
        body = [
            warning,
            f"{n:,} events per phase and round, batches of {BATCH:,}, {args.connections}"
            f" connections, one uvicorn worker with its in-process persister (grace 30 s),"
            f" no cross-tabs; live = no `ts`, backfill = `ts` uniform over the last 30 days;"
            f" {args.rounds} rounds, phases alternating.",
            "",
            md_table(
                [
                    "phase",
                    "events/s (median)",
                    "each round",
                    "persister caught up after (s)",
                    "service µs/ev",
                    "Redis µs/ev",
                    "Postgres µs/ev",
                ],
                rows,
            ),
            "",
            f"**backfill ÷ live = {ratio:.2f}** (target ≥ 0.5).",
            "",
            "Redis time per event (INFO commandstats, median over rounds; a command a script"
            " calls counts both on its own line and inside `evalsha`): "
            + ", ".join(
                f"{label} " + ", ".join(f"`{c}` {u:.2f} µs" for c, u in top(ps))
                for label, ps in phases.items()
            ),
        ]
        ingest_us = median([x.us("service") + x.us("redis") for x in live])
        copy_us = median([c.us(c.python_s) + c.us(c.postgres_s) for c in copies])
        body += [
            "",
            "Raw-log copy alone (RawCopier in the bench process, the stream of"
            f" {n:,} live events, nothing else running; {args.rounds} rounds):",
            "",
            md_table(
                ["", "events/s", "copier µs/ev", "Postgres µs/ev", "each round (events/s)"],
                [
                    (
                        "raw copy",
                        fmt(median([c.rate for c in copies])),
                        f"{median([c.us(c.python_s) for c in copies]):.1f}",
                        f"{median([c.us(c.postgres_s) for c in copies]):.1f}",
                        " / ".join(fmt(c.rate) for c in copies),
                    )
                ],
            ),
            "",
            f"Copy cost {copy_us:.1f} µs/event (copier + Postgres) against live ingest"
            f" {ingest_us:.1f} µs/event (service + Redis, live phase; the service figure"
            f" includes its in-process persister): **{copy_us / ingest_us:.2f} ×** (target"
            " ≤ 0.33).",
        ]
        if args.profile:
            body += [
                "",
                "py-spy of the service, backfill phase (10 s):",
                "",
                profile_table(prof_path),
            ]
        report(
            "Backfill vs live (bench.backfill)",
            "bench.backfill",
            argv or [],
            "\n".join(body),
            append=args.append,
            load_at_start=load_at_start,
        )


def top(ps: list[Phase], k: int = 6) -> list[tuple[str, float]]:
    cmds = {c for x in ps for c in x.redis_us}
    med = {c: median([x.redis_us.get(c, 0.0) for x in ps]) for c in cmds}
    return sorted(med.items(), key=lambda kv: -kv[1])[:k]


if __name__ == "__main__":
    main()
