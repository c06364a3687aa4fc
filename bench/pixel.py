"""Scenario 2, pixel: requests/s of single-event GET /v1/pixel.gif on a real `counters serve`
against an empty Starlette handler that returns the same GIF, served by uvicorn with the same
settings (uvloop, serve's protocol class api.server:CountersHttpProtocol, serve's keep-alive,
one worker, access log off) in a separate process. wrk (keep-alive connections) drives both;
they run alternately, --rounds times, and the table has the medians and the ratio of medians.

The service runs with its persister in-process (today's `serve` default), in its own
`counters persist` process, or both side by side (--persister, default both: one service
each). Two kinds of counters traffic: --urls distinct generated pixel URLs cycled (5 Zipf
dims, uid, value on conversions) and one fixed URL (every hit the same event shape, so a
group commit folds into the fewest Redis updates). The empty handler gets the same URLs.

    .venv/bin/python -m bench.pixel [--quick] [--seconds 10] [--rounds 3] [--connections 32]
        [--persister in-process|separate|both] [--profile-out FILE]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else private embedded servers in a
temporary directory (stopped at the end)."""

from __future__ import annotations

import argparse
import base64
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

# The same bytes and headers as api/pixel.py (checked in run(): kept here so the empty app
# imports nothing of counters).
GIF = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
GIF_HEADERS = {"Cache-Control": "no-store, no-cache, must-revalidate", "Pragma": "no-cache"}


async def _empty_pixel(request: Request) -> Response:
    return Response(GIF, 200, GIF_HEADERS, media_type="image/gif")


async def _ok(request: Request) -> Response:
    return Response(b"ok")


SERVE_HTTP = "api.server:CountersHttpProtocol"
"""The uvicorn protocol class `counters serve` runs (counters/cli/__init__.py)."""
SERVE_KEEPALIVE = 5
"""`counters serve`'s keep-alive timeout with the default keepalive_timeout_seconds."""

empty_app = Starlette(
    routes=[Route("/v1/pixel.gif", _empty_pixel), Route("/healthz", _ok)],
)
"""The baseline: `uvicorn bench.pixel:empty_app`."""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.pixel",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="short smoke run (well under a minute)")
    p.add_argument("--seconds", type=float, default=None, help="per run (default 10)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 3)")
    p.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections")
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--urls", type=int, default=200, help="distinct pixel URLs cycled")
    p.add_argument("--uids", type=int, default=100_000, help="uid cardinality")
    p.add_argument(
        "--fixed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also measure one fixed URL (default: in full mode)",
    )
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--append", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--profile-out", default=None, help="keep py-spy's raw folded stacks here")
    p.add_argument(
        "--persister",
        choices=("in-process", "separate", "both"),
        default="both",
        help="the service's persister: in its process, its own process, or one service each",
    )
    a = p.parse_args(argv)
    a.seconds = a.seconds or (3.0 if a.quick else 10.0)
    a.rounds = a.rounds or (2 if a.quick else 3)
    a.fixed = (not a.quick) if a.fixed is None else a.fixed
    a.profile = (not a.quick) if a.profile is None else a.profile
    a.append = (not a.quick) if a.append is None else a.append
    return a


@dataclass
class Series:
    label: str
    rates: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    non2xx: int = 0
    errors: int = 0
    requests: int = 0
    cpu: list[dict[str, float]] = field(default_factory=list)
    per_call: list[float] = field(default_factory=list)
    counted: float = 0.0


class EmptyServer:
    """uvicorn bench.pixel:empty_app with the service's settings, in its own process."""

    def __init__(self, log_path: Any) -> None:
        from counters.harness.servers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        from bench.common import ROOT, wait_healthy

        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "uvicorn",
                    "bench.pixel:empty_app",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                    "--loop",
                    "uvloop",
                    # the same protocol class and keep-alive as `counters serve`
                    "--http",
                    SERVE_HTTP,
                    "--timeout-keep-alive",
                    str(SERVE_KEEPALIVE),
                    "--log-level",
                    "warning",
                    "--no-access-log",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                start_new_session=True,
            )
        wait_healthy(self.url, self.proc, self.log_path, 30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from api import pixel as product_pixel
    from bench import generate
    from bench.common import (
        CpuMeter,
        busy_warning,
        fmt,
        load_now,
        log,
        md_table,
        median,
        process_cpu,
        profile_table,
        redis_commandstats,
        report,
        require_wrk,
        run_wrk,
        stack,
        start_profile,
        wrk_script,
    )

    assert GIF == product_pixel.GIF and GIF_HEADERS == product_pixel.GIF_HEADERS
    require_wrk()
    load0 = load_now()
    busy = busy_warning()
    with stack() as st:
        modes = ["in-process", "separate"] if args.persister == "both" else [args.persister]
        services: dict[str, Any] = {}
        persisters: dict[str, Any] = {}
        for mode in modes:
            if mode == "in-process":
                services[mode] = st.service("pixel")
            else:
                services[mode] = st.service("pixsep", persister=False)
                persisters[mode] = st.persister(services[mode])
        empty = EmptyServer(st.work / "empty.log")
        empty.start()
        try:
            scripts: dict[str, tuple[Any, Any]] = {}
            for mode, svc in services.items():
                key = svc.key("pixel", "ingest")
                paths = generate.pixel_paths(args.urls, key=key, uids=args.uids)
                varied_file = st.work / f"pixel-urls-{mode}.txt"
                varied_file.write_text("\n".join(paths) + "\n")
                fixed_file = st.work / f"pixel-fixed-{mode}.txt"
                fixed_file.write_text(paths[0] + "\n")
                scripts[mode] = (
                    wrk_script(st.work, method="GET", requests_file=varied_file),
                    wrk_script(st.work, method="GET", requests_file=fixed_file),
                )
            e_var = Series("empty Starlette handler, same GIF")
            runs: list[tuple[Series, Any, Any, str | None]] = []
            counters_series: list[Series] = []
            for i, mode in enumerate(modes):
                where = "in-process persister" if mode == "in-process" else "persister process"
                s_var = Series(f"counters ({where}), {args.urls} distinct pixel URLs")
                runs.append((s_var, services[mode], scripts[mode][0], mode))
                counters_series.append(s_var)
                if i == 0:
                    runs.append((e_var, empty, scripts[mode][0], None))
                if args.fixed and i == 0:
                    s_fix = Series(f"counters ({where}), one fixed pixel URL")
                    runs.append((s_fix, services[mode], scripts[mode][1], mode))
                    counters_series.append(s_fix)
            for _, server, script, _ in runs:  # warm-up
                run_wrk(server.url, script, seconds=1, connections=args.connections)
            for r in range(args.rounds):
                for series, server, script, mode in runs:
                    svc = services[mode] if mode is not None else None
                    before = svc.metric("counters_events_accepted_total") if svc else 0
                    stats0 = redis_commandstats(st.redis_url)
                    db = svc.database_url if svc else services[modes[0]].database_url
                    pers = persisters.get(mode or "")
                    p0 = process_cpu(pers.pid) if pers is not None else 0.0
                    with CpuMeter(server.pid, st.redis_url, db) as cpu:
                        res = run_wrk(
                            server.url,
                            script,
                            seconds=args.seconds,
                            connections=args.connections,
                            threads=args.threads,
                        )
                    used = dict(cpu.used)
                    if pers is not None:
                        used["persister"] = process_cpu(pers.pid) - p0
                    series.rates.append(res.rate)
                    series.p50.append(res.p50_ms)
                    series.p99.append(res.p99_ms)
                    series.non2xx += res.status_errors
                    series.errors += res.errors
                    series.requests += res.requests
                    series.cpu.append({k: v / res.seconds for k, v in used.items()})
                    extra = ""
                    if svc is not None:
                        counted = svc.metric("counters_events_accepted_total") - before
                        series.counted += counted
                        calls = (
                            redis_commandstats(st.redis_url).get("evalsha", (0, 0))[0]
                            - (stats0.get("evalsha", (0, 0))[0])
                        )
                        series.per_call.append(counted / calls if calls else 0.0)
                        extra = (
                            f", counted {counted:,.0f} of {res.requests:,} answered, "
                            f"{series.per_call[-1]:.1f} events per script call"
                        )
                    log(
                        f"round {r + 1}: {series.label}: {res.rate:,.0f} req/s, p50 "
                        f"{res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms{extra}"
                    )
            rejected = sum(s.metric("counters_events_rejected_total") for s in services.values())

            profile_md = ""
            if args.profile:
                mode = modes[-1]
                svc = services[mode]
                out = st.work / "pixel.pyspy.txt"
                secs = max(5.0, min(args.seconds, 10.0))
                log(f"profiling the service ({mode}) with py-spy for {secs:.0f}s, same load")
                prof = start_profile(svc.pid, secs + 1, out)
                if prof is not None:
                    time.sleep(0.5)
                    run_wrk(svc.url, scripts[mode][0], seconds=secs, connections=args.connections)
                    prof.wait(timeout=secs + 60)
                    if args.profile_out:
                        shutil.copyfile(out, args.profile_out)
                    profile_md = (
                        f"\npy-spy profile of the service ({mode} persister) under the"
                        f" distinct-URL load ({secs:.0f} s; share of samples whose stack holds"
                        " the function; py-spy samples wall time, so a syscall that wakes"
                        " another process weighs more than its CPU):\n\n"
                        + profile_table(out)
                        + "\n"
                    )
        finally:
            empty.stop()

    base = median(e_var.rates)
    everything = [*counters_series, e_var]
    rows = []
    for s in everything:
        m = median(s.rates)
        rows.append(
            (
                s.label,
                fmt(m),
                " / ".join(fmt(x) for x in s.rates),
                f"{median(s.p50):.1f} / {median(s.p99):.1f}",
                f"{m / base:.2f}",
            )
        )
    table = md_table(
        ["server", "requests/s (median)", "each round", "p50 / p99 ms", "÷ empty handler"],
        rows,
    )
    cpu_rows = []
    kinds = ("service", "persister", "redis", "postgres", "loadgen")
    for s in everything:
        agg = {k: median([d.get(k, 0.0) for d in s.cpu]) for k in kinds}
        m = median(s.rates)
        cpu_rows.append(
            (
                s.label,
                *(f"{agg[k] * 100:.0f}% ({agg[k] / m * 1e6:.0f} µs/req)" for k in agg),
            )
        )
    cpu_table = md_table(
        ["server", "server process", "persister process", "Redis", "Postgres", "wrk"], cpu_rows
    )
    ratios = [f"{median(s.rates) / base:.2f} ({s.label})" for s in counters_series]
    best = max(median(s.rates) for s in counters_series if "distinct" in s.label) / base
    per_call = "; ".join(f"{s.label}: {median(s.per_call):.1f}" for s in counters_series)
    body = "\n".join(
        [
            busy,
            "",
            f"wrk {args.threads} thread, {args.connections} keep-alive connections, "
            f"{args.seconds:.0f} s per run, {args.rounds} rounds alternating; both servers "
            f"uvicorn with uvloop, `{SERVE_HTTP}` (serve's protocol class), keep-alive "
            f"{SERVE_KEEPALIVE} s, one worker, access log off; "
            "pixel URLs carry 5 dims, a uid and (conversions) a value, no ts. "
            "Persister: in the service process (today's `serve` default) and/or its own "
            "`counters persist` process (the service with `--no-persister`).",
            "",
            table,
            "",
            f"Non-2xx: counters {sum(s.non2xx for s in counters_series)}, empty "
            f"{e_var.non2xx}; socket errors: counters {sum(s.errors for s in counters_series)}"
            f", empty {e_var.errors}; pixel events rejected by the services: {rejected:,.0f}."
            f" Events counted per EVALSHA (a batch makes two: its rate-limit charge and its "
            f"ingest): {per_call}.",
            "",
            "CPU while each ran (share of one core, and per request):",
            "",
            cpu_table,
            "",
            f"Target ≥ 0.7 of the empty handler: {'met' if best >= 0.7 else 'not met'} "
            f"({'; '.join(ratios)}).",
            profile_md,
        ]
    )
    report(
        "Scenario 2: pixel (bench.pixel)",
        "bench.pixel",
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
