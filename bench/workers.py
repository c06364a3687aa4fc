"""Scenario `workers`: batch-ingest events/s through `counters serve --workers 1` and
`--workers 2` on this machine, side by side in one run: both services run at once (each on
its own database and key prefix, each with its persister in its own process, as serve
does by default), and the same wrk load (keep-alive connections, POSTs of 1,000-event
bodies without `ts`) goes to one, then the other, --rounds times (the machine is noisy).

Each run is checked against the service's own /metrics: counters_events_accepted_total
moves by exactly what wrk got 2xx for, on either service (one view across the workers).

    .venv/bin/python -m bench workers [--quick] [--seconds 10] [--rounds 3] [--connections 8]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end)."""

from __future__ import annotations

import argparse
import time

import msgspec

from bench import generate
from bench.common import (
    CpuMeter,
    ServiceProc,
    busy_warning,
    fmt,
    load_now,
    log,
    md_table,
    median,
    report,
    require_wrk,
    run_wrk,
    stack,
    wrk_script,
)

BATCH = 1000


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench workers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short smoke run")
    p.add_argument("--seconds", type=float, default=None, help="per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    p.add_argument("--connections", type=int, default=8, help="wrk keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--bodies", type=int, default=20, help="distinct 1,000-event bodies cycled")
    p.add_argument("--uids", type=int, default=100_000, help="uid cardinality (0: no uids)")
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    a = p.parse_args(argv)
    a.seconds = a.seconds or (3.0 if a.quick else 10.0)
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.append = (not a.quick) if a.append is None else a.append
    return a


def _cpu(used: dict[str, float], seconds: float) -> str:
    parts = [f"{k} {v / seconds * 100:.0f}%" for k, v in sorted(used.items()) if v > 0.01]
    return ", ".join(parts)


def _settled(svc: ServiceProc, timeout: float = 15.0) -> float:
    """counters_events_accepted_total once two scrapes 0.3 s apart agree (the requests wrk
    left in flight are done), or the last one after timeout."""
    last = svc.metric("counters_events_accepted_total")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = svc.metric("counters_events_accepted_total")
        if now == last:
            return now
        last = now
    return last


def main(argv: list[str]) -> int:
    args = parse(argv)
    require_wrk()
    load0 = load_now()
    busy = busy_warning()
    log(f"{load0}; generating {args.bodies} bodies of {BATCH} events")
    bodies = [
        generate.events(BATCH, uids=args.uids, seed=100 + i, with_ts=False)
        for i in range(args.bodies)
    ]
    enc = msgspec.json.Encoder()
    rows = []
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu_us: dict[int, list[float]] = {1: [], 2: []}
    loads: list[str] = []
    with stack() as st:
        services: dict[int, ServiceProc] = {}
        scripts = {}
        for n in (1, 2):
            svc = st.service(f"workers{n}", workers=n)
            services[n] = svc
            key = svc.key("bench", "ingest")
            requests_file = st.work / f"bodies-{n}.ndjson"
            requests_file.write_bytes(b"\n".join(enc.encode(b) for b in bodies) + b"\n")
            scripts[n] = wrk_script(
                st.work,
                method="POST",
                requests_file=requests_file,
                headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"},
            )
            run_wrk(svc.url, scripts[n], seconds=1, connections=2)  # warm-up
        for r in range(args.rounds):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                svc = services[n]
                log(f"round {r + 1}/{args.rounds}: --workers {n} for {args.seconds:.0f}s")
                accepted0 = _settled(svc)
                with CpuMeter(svc.pid, st.redis_url, svc.database_url) as cpu:
                    res = run_wrk(
                        svc.url,
                        scripts[n],
                        seconds=args.seconds,
                        connections=args.connections,
                        threads=args.threads,
                    )
                accepted = _settled(svc) - accepted0
                rate = res.rate * BATCH
                rates[n].append(rate)
                us = cpu.used.get("service", 0.0) / max(accepted, 1) * 1e6
                cpu_us[n].append(us)
                loads.append(load_now())
                note = (
                    f"p50 {res.p50_ms:.0f} ms, p99 {res.p99_ms:.0f} ms; non-2xx "
                    f"{res.status_errors}, socket errors {res.errors}; /metrics counted "
                    f"{accepted:,.0f} events, wrk saw {res.ok * BATCH:,} acknowledged (the "
                    "rest were in flight when it stopped); CPU " + _cpu(cpu.used, res.seconds)
                )
                rows.append([str(r + 1), f"--workers {n}", fmt(rate), f"{us:.1f}", note])
                log(f"  {fmt(rate)} events/s ({note})")
    one, two = median(rates[1]), median(rates[2])
    body = "\n".join(
        [
            f"Batch ingest (POST /v1/events, {BATCH:,} events per body, {args.connections} wrk "
            f"connections, {args.threads} wrk thread) through `counters serve --workers 1` and "
            "`--workers 2`, both running at once on their own database and key prefix, each "
            "with its persister in its own process (the default); runs alternate.",
            *(["", busy] if busy else []),
            "",
            md_table(["round", "service", "events/s", "service CPU µs/event", "notes"], rows),
            "",
            md_table(
                ["service", "median events/s", "ratio to 1 worker", "median CPU µs/event"],
                [
                    ["--workers 1", fmt(one), "1.00", f"{median(cpu_us[1]):.1f}"],
                    [
                        "--workers 2",
                        fmt(two),
                        f"{two / one:.2f}" if one else "-",
                        f"{median(cpu_us[2]):.1f}",
                    ],
                ],
            ),
            "",
            "Service CPU: the serve process and its children (workers, persister process), "
            "per event /metrics counted.",
            "",
            "Load average after each run: " + "; ".join(loads) + ".",
        ]
    )
    report(
        "workers: serve --workers 1 vs 2",
        "bench",
        ["workers", *argv],
        body,
        append=args.append,
        load_at_start=load0,
    )
    return 0
