"""Fault injection, long form, and the default-mode kill -9 loss figure.

    .venv/bin/python -m bench.faults --events 1000000 --faults 50 [--seed S] [--rate R]
    .venv/bin/python -m bench.faults --kill-redis-default [--repeat 3] [--seconds 20]

The first drives --events events through a real service (durable acknowledgements on) while
a chaos loop injects --faults faults (persister kill -9, some mid-drain; Postgres restart;
Valkey kill -9; service kill -9; `counters rebuild` of a live range; Redis total loss, i.e.
FLUSHALL or a restart with the AOF deleted), then verifies every invariant
(counters/harness/faults/verify.py) and prints the figures; exit code 1 on any finding. After
a Redis total loss only the events acknowledged but not yet in Postgres's raw log at that
moment may be missing, and the run reports exactly how many were lost that way.

The second posts at a steady rate with durable acknowledgements off while Valkey
(appendfsync everysec) is kill -9ed once and restarted, and prints how many acknowledged
events are gone afterwards (from the raw log, and from the counts).

Then schemathesis runs its long form (bench/fuzz.py, --fuzz-cases test cases, 10,000 by
default) against a fresh service.

Everything runs on private servers in temporary directories under /tmp (removed at the end
unless --keep)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from counters.harness.faults import FaultConfig, run_faults, run_kill_redis_default


def _log(text: str) -> None:
    print(time.strftime("%H:%M:%S ") + text, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--faults", type=int, default=50)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--rate", type=float, default=1500.0, help="events/s over all clients")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--persisters", type=int, default=2)
    p.add_argument("--uids", type=int, default=100_000)
    p.add_argument("--kinds", default="persister,valkey,postgres,rebuild,service,redis_loss")
    p.add_argument("--max-losses", type=int, default=None, help="cap on redis_loss faults")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    p.add_argument(
        "--redis-cluster",
        action="store_true",
        help="run on a 3-master embedded Valkey Cluster (Valkey faults hit the project's master)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        help="split the project into this many shards first (counters projects shards)",
    )
    p.add_argument(
        "--fuzz-cases",
        type=int,
        default=10_000,
        help="schemathesis test cases after the chaos run (bench/fuzz.py; 0 = skip)",
    )
    p.add_argument(
        "--kill-redis-default",
        action="store_true",
        help="measure acknowledged events lost to a Valkey kill -9 without durable acks",
    )
    p.add_argument("--repeat", type=int, default=3, help="runs of --kill-redis-default")
    p.add_argument("--seconds", type=float, default=20.0, help="traffic per loss run")
    p.add_argument("--loss-rate", type=float, default=2000.0, help="events/s per loss run")
    args = p.parse_args(argv)

    if args.kill_redis_default:
        lines = []
        for i in range(args.repeat):
            _log(f"loss run {i + 1}/{args.repeat}")
            r = asyncio.run(
                run_kill_redis_default(
                    seconds=args.seconds, rate=args.loss_rate, seed=args.seed, log=_log
                )
            )
            lines.append(r.line())
            for failure in r.failures:
                _log("  finding: " + failure.splitlines()[0])
        print("\n".join(["", "kill -9 Valkey without durable acknowledgements:", *lines]))
        print(
            "(a kill -9 of the server keeps what it already wrote to the kernel's page cache;"
            " appendfsync everysec can lose up to ~1 s of acknowledged writes only on an OS"
            " crash or power loss, which this machine cannot simulate)"
        )
        return

    cfg = FaultConfig(
        events=args.events,
        faults=args.faults,
        seed=args.seed,
        clients=args.clients,
        rate=args.rate or None,
        persisters=args.persisters,
        kinds=tuple(k for k in args.kinds.split(",") if k),
        uids=args.uids,
        max_losses=args.max_losses,
        drain_timeout=600.0,
        keep=args.keep,
        redis_cluster=args.redis_cluster,
        shards=args.shards,
        log=_log,
    )
    report = asyncio.run(run_faults(cfg))
    f = report.findings
    print()
    print(report.summary_line())
    print(
        f"cells compared {f.cells} (differ {f.bad_cells}); raw log rows {f.raw_rows} (missing"
        f" {f.raw_missing}, unacknowledged {f.raw_extra}, repeated {f.raw_repeated}); uniques"
        f" (API/exact) {f.uniques}; findings {len(report.all_failures())}"
    )
    if f.losses:
        print(
            f"Redis total losses {f.losses}: {f.at_risk} acknowledged events were not in"
            f" Postgres's raw log at a loss (at risk); {f.lost_to_loss} of them are gone,"
            f" {f.reaccepted} came back through a client re-send; {f.uncounted} raw events"
            f" were missing from the counts until the rebuild, which rewrote {f.repaired}"
            f" buckets; the day in progress is short {f.in_progress_short} until it seals"
            " and reconcile runs"
        )
    failed = bool(report.all_failures() or report.lost or report.double)
    if args.fuzz_cases:
        from bench import fuzz

        try:
            fuzz.main(["--cases", str(args.fuzz_cases)])
        except SystemExit as exc:
            failed = failed or bool(exc.code)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
