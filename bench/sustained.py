"""Sustained ingest against burst (issue 13, item 3): the same wrk load of 1,000-event POSTs
first for a short burst, then for a long run (10 minutes by default) while the service's
persister (its own process, as `counters serve` runs it) copies the raw log to Postgres.
Every second the run samples the Redis raw-log backlog (events not yet in Postgres), the
persister's lag and the events accepted; it reports sustained/burst, the backlog's maximum,
the non-2xx answers (503 once the backlog reaches raw_backlog_cap), and plots backlog and
lag over the run (bench/sustained.png)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import msgspec

from bench import generate
from bench.common import (
    ROOT,
    busy_warning,
    finish_wrk,
    fmt,
    load_now,
    log,
    md_table,
    postgres_cpu,
    process_cpu,
    redis_cpu,
    report,
    require_wrk,
    run_wrk,
    stack,
    start_wrk,
    wrk_script,
)

BATCH = 1_000
PLOT = ROOT / "bench" / "sustained.png"


class Sample(msgspec.Struct, frozen=True):
    """One second of the long run."""

    at: float
    backlog: int
    lag_seconds: float
    accepted: float
    cpu: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """CPU seconds so far of the service (workers and persister process), Redis, Postgres."""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench sustained", description=__doc__)
    p.add_argument("--quick", action="store_true", help="30 s instead of 10 minutes")
    p.add_argument("--seconds", type=float, default=None, help="the long run (default 600)")
    p.add_argument("--burst-seconds", type=float, default=15.0, help="the burst run")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=1, help="serve --workers")
    p.add_argument("--uids", type=int, default=100_000)
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    a.seconds = a.seconds or (30.0 if a.quick else 600.0)
    a.append = (not a.quick) if a.append is None else a.append
    return a


def _plot(samples: list[Sample], burst: float, sustained: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.at for s in samples]
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    top.plot(t, [s.backlog / 1000 for s in samples], color="#2563eb")
    top.set_ylabel("raw backlog (k events)")
    top.set_title(
        f"sustained {sustained:,.0f} vs burst {burst:,.0f} events/s ({sustained / burst:.2f} x)"
    )
    mid.plot(t, [s.lag_seconds for s in samples], color="#dc2626")
    mid.set_ylabel("persister lag (s)")
    rates = [0.0] + [
        (b.accepted - a.accepted) / (b.at - a.at) / 1000
        for a, b in zip(samples, samples[1:], strict=False)
        if b.at > a.at
    ]
    low.plot(t[: len(rates)], rates, color="#16a34a")
    low.set_ylabel("accepted (k events/s)")
    low.set_xlabel("seconds into the run")
    for ax in (top, mid, low):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _cpu_per_event(samples: list[Sample]) -> str:
    """CPU µs per accepted event of each side, in the first and in the last sixth of the run
    (where a slowdown over the run comes from)."""
    marked = [s for i, s in enumerate(samples) if i % 10 == 0 and s.accepted > 0]
    if len(marked) < 4:
        return ""
    k = max(1, len(marked) // 6)
    parts = []
    for label, a, b in (("first", marked[0], marked[k]), ("last", marked[-1 - k], marked[-1])):
        events = b.accepted - a.accepted
        if events <= 0:
            return ""
        per = [(y - x) / events * 1e6 for x, y in zip(a.cpu, b.cpu, strict=True)]
        rate = events / (b.at - a.at)
        parts.append(
            f"{label} {b.at - a.at:.0f} s: {rate:,.0f} events/s, service {per[0]:.1f}, "
            f"Redis {per[1]:.1f}, Postgres {per[2]:.1f} µs CPU per event"
        )
    lead = "\n\nWhere the CPU went (service = workers + persister process): "
    return lead + "; ".join(parts) + "."


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Burst, drain, then the long run; prints (and appends) the result table."""
    import redis as sync_redis

    from lua.keys import ProjectKeys

    require_wrk()
    load0 = load_now()
    busy = busy_warning()
    log(f"{load0}; generating 20 bodies of {BATCH} events")
    enc = msgspec.json.Encoder()
    bodies = [
        enc.encode(generate.events(BATCH, uids=args.uids, seed=300 + i, with_ts=False))
        for i in range(20)
    ]
    with stack() as st:
        svc = st.service("sustained", workers=args.workers)  # persister: its own process
        key = svc.key("bench", "ingest")
        requests_file = st.work / "bodies.ndjson"
        requests_file.write_bytes(b"\n".join(bodies) + b"\n")
        script = wrk_script(
            st.work,
            method="POST",
            requests_file=requests_file,
            headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
        )
        sync = sync_redis.Redis.from_url(st.redis_url)
        wm = ProjectKeys(svc.prefix, "bench").watermarks

        def backlog() -> int:
            return int(sync.hget(wm, "rawn") or 0)

        run_wrk(svc.url, script, seconds=2, connections=2)  # warm-up
        log(f"burst: {args.burst_seconds:.0f} s")
        burst = run_wrk(
            svc.url,
            script,
            seconds=args.burst_seconds,
            connections=args.connections,
            threads=args.threads,
        )
        burst_backlog = backlog()
        log(f"  {burst.rate * BATCH:,.0f} events/s, backlog after it {burst_backlog:,}")
        deadline = time.monotonic() + 300
        while backlog() > 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        drained_in = 300 - (deadline - time.monotonic())
        log(f"  drained in {drained_in:.0f} s; long run: {args.seconds:.0f} s")
        samples: list[Sample] = []
        proc = start_wrk(
            svc.url,
            script,
            seconds=args.seconds,
            connections=args.connections,
            threads=args.threads,
        )
        t0 = time.monotonic()
        while proc.poll() is None and time.monotonic() - t0 < args.seconds + 30:
            n = len(samples)
            cpu = (
                (process_cpu(svc.pid), redis_cpu(st.redis_url), postgres_cpu(svc.database_url))
                if n % 10 == 0
                else samples[-1].cpu
            )
            samples.append(
                Sample(
                    time.monotonic() - t0,
                    backlog(),
                    svc.metric("counters_persister_lag_seconds"),
                    svc.metric("counters_events_accepted_total"),
                    cpu,
                )
            )
            time.sleep(1.0)
        long = finish_wrk(proc, args.seconds)
        sync.close()
    burst_rate, long_rate = burst.rate * BATCH, long.rate * BATCH
    cpu_md = _cpu_per_event(samples)
    peak = max(samples, key=lambda s: s.backlog)
    worst_lag = max(s.lag_seconds for s in samples)
    if args.append:
        _plot(samples, burst_rate, long_rate, PLOT)
    rows = [
        [
            f"burst ({args.burst_seconds:.0f} s)",
            fmt(burst_rate),
            "1.00",
            f"{burst.status_errors:,}",
            f"{burst_backlog:,} at its end",
            "",
        ],
        [
            f"sustained ({args.seconds:.0f} s)",
            fmt(long_rate),
            f"{long_rate / burst_rate:.2f}",
            f"{long.status_errors:,}",
            f"{peak.backlog:,} (at {peak.at:.0f} s), {samples[-1].backlog:,} at the end",
            f"{worst_lag:.0f} s",
        ],
    ]
    body = (
        (busy + "\n\n" if busy else "")
        + f"`serve --workers {args.workers}` with its persister in its own process, wrk "
        f"{args.connections} connections × 1,000-event POSTs without `ts`; the burst's "
        f"backlog drained in {drained_in:.0f} s before the long run.\n\n"
        + md_table(
            [
                "run",
                "events/s",
                "÷ burst",
                "non-2xx (503)",
                "Redis raw backlog, max",
                "persister lag, max",
            ],
            rows,
        )
        + cpu_md
        + "\n\nBacklog over the run (s: events): "
        + ", ".join(f"{s.at:.0f}: {s.backlog:,}" for s in samples[:: max(1, len(samples) // 10)])
        + "."
        + ("\n\n![sustained](sustained.png)\n" if args.append else "\n")
    )
    report(
        "Sustained against burst ingest (issue 13)",
        "bench.sustained",
        argv,
        body,
        append=args.append,
        load_at_start=load0,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse(argv or [])
    return run(args, argv or [])
