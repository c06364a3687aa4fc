"""Scenario 4, freshness and lag, on real `counters serve` processes:

  * 2xx -> readable: post one event (no ts), then poll GET .../total until it counts it;
    idle, and again while wrk posts 1,000-event batches in the background;
  * 2xx -> raw log in Postgres: post one event with an id, poll raw_events for it;
  * bucket close -> Postgres: post an event into the current minute, then poll rollups_minute
    for that minute's row; the lag is measured from the minute's end. Once with
    COUNTERS_GRACE_SECONDS=1 and COUNTERS_PERSIST_INTERVAL_SECONDS=0.2, and (full mode) once
    with the defaults (30 s grace, 1 s interval): what a user gets out of the box.

Bucket samples need a minute boundary each, so this scenario takes --minutes minutes plus
the grace; the other measurements run meanwhile.

    .venv/bin/python -m bench.freshness [--quick] [--samples 200] [--minutes 3]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from bench import generate
from bench.common import (
    ServiceProc,
    busy_warning,
    finish_wrk,
    fmt,
    load_now,
    log,
    md_table,
    median,
    percentile,
    report,
    require_wrk,
    stack,
    start_wrk,
    wrk_script,
)

PROJECT = "fresh"
MINUTE_MS = 60_000


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.freshness",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short run (one minute boundary)")
    p.add_argument("--samples", type=int, default=None, help="idle 2xx->read samples (200)")
    p.add_argument("--load-samples", type=int, default=None, help="under load (200)")
    p.add_argument("--raw-samples", type=int, default=None, help="2xx->raw_events (20)")
    p.add_argument("--minutes", type=int, default=None, help="bucket-close samples (3)")
    p.add_argument(
        "--load-rate", type=int, default=10_000, help="background events/s (wrk, batches)"
    )
    p.add_argument(
        "--default-grace",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure a service on the default grace/interval (default: full mode)",
    )
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    q = a.quick
    a.samples = a.samples or (30 if q else 200)
    a.load_samples = a.load_samples or (30 if q else 200)
    a.raw_samples = a.raw_samples or (5 if q else 20)
    a.minutes = a.minutes or (1 if q else 3)
    a.default_grace = (not q) if a.default_grace is None else a.default_grace
    a.append = (not q) if a.append is None else a.append
    return a


@dataclass
class Target:
    """One service, its keys and a pool on its database."""

    label: str
    svc: ServiceProc
    ingest: dict[str, str]
    read: dict[str, str]
    grace: float
    interval: float
    pool: Any = None
    bucket_lags: list[float] = field(default_factory=list)
    raw_lags: list[float] = field(default_factory=list)


async def _post(client: Any, t: Target, events: list[dict[str, Any]]) -> None:
    r = await client.post(t.svc.url + "/v1/events", json=events, headers=t.ingest)
    r.raise_for_status()


async def _total(client: Any, t: Target, name: str) -> float:
    r = await client.get(
        f"{t.svc.url}/v1/projects/{PROJECT}/total",
        params={"name": name, "grain": "hour", "excluding_current": "false"},
        headers=t.read,
    )
    r.raise_for_status()
    return float(r.json()["value"])


@dataclass
class Fresh:
    lags: list[float] = field(default_factory=list)
    posts: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    polls: list[int] = field(default_factory=list)


async def fresh_samples(client: Any, t: Target, n: int, name: str, stop_at: float) -> Fresh:
    """n times: post one event, then read the total until it counts it (ms figures)."""
    out = Fresh()
    seen = await _total(client, t, name)
    for _ in range(n):
        if time.monotonic() > stop_at:
            break
        t0 = time.perf_counter()
        await _post(client, t, [{"name": name}])
        acked = time.perf_counter()
        out.posts.append((acked - t0) * 1000)
        polls = 0
        deadline = acked + 10
        while True:
            polls += 1
            r0 = time.perf_counter()
            value = await _total(client, t, name)
            now = time.perf_counter()
            out.reads.append((now - r0) * 1000)
            if value >= seen + 1:
                seen = value
                out.lags.append((now - acked) * 1000)
                out.polls.append(polls)
                break
            if now > deadline:
                raise RuntimeError(
                    f"event not readable after 10 s (total {value}, want {seen + 1})"
                )
    return out


async def raw_lag(client: Any, targets: list[Target], n: int) -> None:
    """n times: post one event with an id to every target, poll raw_events for it (polls
    every 10 ms; a random pause up to one persist interval between samples)."""

    async def one(t: Target) -> None:
        eid = "raw-" + uuid.uuid4().hex
        await _post(client, t, [{"name": "rawlag", "id": eid}])
        acked = time.perf_counter()
        deadline = acked + 30
        while time.perf_counter() < deadline:
            if await t.pool.fetchval(
                "SELECT 1 FROM raw_events WHERE project = $1 AND event_id = $2", PROJECT, eid
            ):
                t.raw_lags.append((time.perf_counter() - acked) * 1000)
                return
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{t.label}: event {eid} not in raw_events after 30 s")

    rng = random.Random(3)
    longest = max(t.interval for t in targets)
    for _ in range(n):
        await asyncio.gather(*(one(t) for t in targets))
        # a random pause, so the posts do not fall in step with the persister's passes
        await asyncio.sleep(rng.uniform(0.0, longest))


async def bucket_lag(client: Any, targets: list[Target], minutes: int) -> None:
    """Per minute: an event into the current minute M on every target, then the time from
    M's end until rollups_minute has the row (every target polled concurrently)."""

    async def poll(t: Target, minute: int) -> None:
        end = minute + MINUTE_MS
        when = dt.datetime.fromtimestamp(minute / 1000, dt.UTC)
        deadline = end / 1000 + t.grace + 60
        while time.time() < deadline:
            if await t.pool.fetchval(
                "SELECT 1 FROM rollups_minute WHERE project = $1 AND name = 'bucket'"
                " AND rollup = '' AND dims = '{}' AND bucket = $2",
                PROJECT,
                when,
            ):
                t.bucket_lags.append(time.time() - end / 1000)
                log(
                    f"  {t.label}: minute {when:%H:%M} in Postgres {t.bucket_lags[-1]:.2f} s "
                    "after its end"
                )
                return
            await asyncio.sleep(0.01)
        raise RuntimeError(f"{t.label}: minute {when:%H:%M} not in Postgres in time")

    polls: list[asyncio.Task[None]] = []
    for _ in range(minutes):
        while True:  # post at least 1 s into a minute and 2 s before its end
            now = generate.now_ms()
            into = now % MINUTE_MS
            if 1000 <= into <= MINUTE_MS - 2000:
                break
            await asyncio.sleep((MINUTE_MS - into + 1000) / 1000 if into > 1000 else 1.0)
        minute = now - into
        await asyncio.gather(*(_post(client, t, [{"name": "bucket", "ts": now}]) for t in targets))
        polls.extend(asyncio.create_task(poll(t, minute)) for t in targets)
        next_minute = minute + MINUTE_MS
        await asyncio.sleep(max(0.0, (next_minute + 1000 - generate.now_ms()) / 1000))
    await asyncio.gather(*polls)


def _load_script(st: Any, t: Target, rate: int) -> tuple[Any, float]:
    bodies = [generate.events(1000, uids=100_000, seed=500 + i, with_ts=False) for i in range(10)]
    enc = msgspec.json.Encoder()
    f = st.work / "fresh-bodies.ndjson"
    f.write_bytes(b"\n".join(enc.encode(b) for b in bodies) + b"\n")
    delay_ms = 1000 * 1000 / max(rate, 1)
    script = wrk_script(
        st.work,
        method="POST",
        requests_file=f,
        headers={**t.ingest, "Content-Type": "application/json"},
        delay_ms=delay_ms,
    )
    return script, delay_ms


async def measure(args: argparse.Namespace, st: Any, targets: list[Target]) -> dict[str, Any]:
    import asyncpg
    import httpx

    main = targets[0]
    for t in targets:
        t.pool = await asyncpg.create_pool(t.svc.database_url, min_size=1, max_size=4)
    out: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=8)) as c:
            log(f"bucket-close lag over {args.minutes} minute boundaries (in the background)")
            buckets = asyncio.create_task(bucket_lag(c, targets, args.minutes))
            log(f"{args.samples} idle 2xx -> readable samples")
            out["idle"] = await fresh_samples(
                c, main, args.samples, "fresh", time.monotonic() + 120
            )
            log(f"{args.raw_samples} 2xx -> raw_events samples")
            await raw_lag(c, targets, args.raw_samples)
            script, _ = _load_script(st, main, args.load_rate)
            seconds = 10 if args.quick else 40
            log(
                f"{args.load_samples} samples under wrk load (~{args.load_rate:,} events/s, "
                f"at most {seconds} s)"
            )
            wrk = start_wrk(main.svc.url, script, seconds=seconds, connections=1)
            try:
                await asyncio.sleep(1.0)
                out["load"] = await fresh_samples(
                    c, main, args.load_samples, "fresh", time.monotonic() + seconds - 2
                )
            finally:
                if wrk.poll() is None:
                    wrk.send_signal(signal.SIGINT)
                out["wrk"] = finish_wrk(wrk, seconds)
            remaining = (args.minutes + 1) * 60 + max(t.grace for t in targets)
            log(f"waiting for the bucket samples (at most ~{remaining:.0f} s)")
            await buckets
    finally:
        for t in targets:
            await t.pool.close()
    return out


def _ms_row(label: str, xs: list[float], note: str = "") -> tuple[str, ...]:
    return (
        label,
        str(len(xs)),
        f"{percentile(xs, 50):.1f}",
        f"{percentile(xs, 99):.1f}",
        f"{max(xs):.1f}" if xs else "-",
        note,
    )


def run(args: argparse.Namespace, argv: list[str]) -> int:
    require_wrk()
    load0 = load_now()
    busy = busy_warning()
    with stack() as st:
        fast_env = {"COUNTERS_GRACE_SECONDS": "1", "COUNTERS_PERSIST_INTERVAL_SECONDS": "0.2"}
        fast = st.service("fresh", env=fast_env)
        targets = [
            Target(
                "grace 1 s, interval 0.2 s",
                fast,
                {"Authorization": "Bearer " + fast.key(PROJECT, "ingest")},
                {"Authorization": "Bearer " + fast.key(PROJECT, "read")},
                1.0,
                0.2,
            )
        ]
        if args.default_grace:
            dflt = st.service("dflt")  # the product defaults: grace 30 s, interval 1 s
            targets.append(
                Target(
                    "defaults (grace 30 s, interval 1 s)",
                    dflt,
                    {"Authorization": "Bearer " + dflt.key(PROJECT, "ingest")},
                    {"Authorization": "Bearer " + dflt.key(PROJECT, "read")},
                    30.0,
                    1.0,
                )
            )
        out = asyncio.run(measure(args, st, targets))

    idle: Fresh = out["idle"]
    load: Fresh = out["load"]
    wrk = out["wrk"]
    bg_rate = wrk.rate * 1000
    rows = [
        _ms_row(
            "2xx → readable via `total`, idle",
            idle.lags,
            f"max polls {max(idle.polls)}; a read takes p50 {percentile(idle.reads, 50):.1f}",
        ),
        _ms_row(
            f"2xx → readable, under {fmt(bg_rate)} events/s of batch load",
            load.lags,
            f"max polls {max(load.polls) if load.polls else 0}; a read takes p50 "
            f"{percentile(load.reads, 50):.1f}, p99 {percentile(load.reads, 99):.1f}",
        ),
        _ms_row("single-event POST (to its 2xx), idle", idle.posts),
        _ms_row("single-event POST, under load", load.posts),
    ]
    for t in targets:
        rows.append(_ms_row(f"2xx → row in raw_events, {t.label}", t.raw_lags))
    table = md_table(["measure", "samples", "p50 ms", "p99 ms", "max ms", "note"], rows)

    brows = []
    for t in targets:
        lags = t.bucket_lags
        brows.append(
            (
                t.label,
                str(len(lags)),
                f"{median(lags):.2f}",
                f"{max(lags):.2f}" if lags else "-",
                " / ".join(f"{x:.2f}" for x in lags),
                f"{t.grace + t.interval:.1f}",
            )
        )
    if not args.default_grace:
        brows.append(
            (
                "defaults (grace 30 s, interval 1 s), not measured in this run",
                "0",
                "-",
                "-",
                "-",
                "31.0 (grace + interval)",
            )
        )
    btable = md_table(
        ["persister settings", "samples", "median s", "max s", "each", "bound: grace + interval"],
        brows,
    )
    body = "\n".join(
        [
            busy,
            "",
            "One service with COUNTERS_GRACE_SECONDS=1, COUNTERS_PERSIST_INTERVAL_SECONDS=0.2"
            + (", one on the defaults" if args.default_grace else "")
            + "; no cross-tabs. Reads are `GET /v1/projects/fresh/total?grain=hour&"
            "excluding_current=false` polled back to back from one client (Python httpx, so a "
            "poll's own cost is in the figure). Background load: wrk, one connection posting "
            f"1,000-event bodies, achieved {fmt(bg_rate)} events/s (p50 {wrk.p50_ms:.0f} ms "
            "per POST).",
            "",
            table,
            "",
            "Minute bucket end → its row in `rollups_minute` (seconds; polled every 10 ms):",
            "",
            btable,
            "",
        ]
    )
    report(
        "Scenario 4: freshness and lag (bench.freshness)",
        "bench.freshness",
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
