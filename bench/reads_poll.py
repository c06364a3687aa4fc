"""Polled dashboards with and without the read cache, side by side in one run
(`python -m bench reads --polling [--levels 1000000] [--runs 200] [--poll-seconds 30]`).

One history (bench/reads.py's: 365 days, loaded through the persister's paths) is served by
two `counters serve` processes on the same backends: one with the read cache on (the
default read_cache_entries), one with COUNTERS_READ_CACHE_ENTRIES=0. Then:

1. the 30-day hourly sparkline, asked of both in turn `--runs` times: server-side p50/p99
   (the Server-Timing header);
2. 1,000 dashboards polling every 3 s (333 requests/s), each one fixed query out of a mix
   of names, dims filters, precisions and ranges whose `to` is now (the service snaps it to
   the precision), asked of each process in turn for `--poll-seconds`: the server
   process's CPU (user + system, psutil, children included) per wall second, latencies and
   the rate achieved.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import random
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import msgspec
import psutil

from bench.reads import generate, load_counters, machine
from counters import embedded
from counters.core.buckets import DAY_MS, HOUR_MS
from counters.core.clock import SystemClock
from counters.core.config import Settings
from counters.engines.read.context import ReadContext
from counters.engines.read.engine import read_series
from counters.engines.read.history_cache import HistoryCache
from counters.engines.read.parse import parse_read
from counters.harness.servers import Backends, create_database, drop_database
from counters.harness.service import Service, service_env
from counters.services import open_services
from lua.keys import ProjectKeys
from persist.projects import create_key

DASHBOARDS = 1_000
PERIOD_S = 3.0
CONNECTIONS = 16
SHAPES: tuple[tuple[str, str, int, str], ...] = (
    # (route, precision, span ms, measure)
    ("series", "1h", 30 * DAY_MS, "count"),
    ("series", "1h", 7 * DAY_MS, "count"),
    ("series", "1h", 1 * DAY_MS, "sum"),
    ("series", "1d", 30 * DAY_MS, "count"),
    ("series", "1d", 365 * DAY_MS, "count"),
    ("series", "1d", 90 * DAY_MS, "sum"),
    ("series", "5m", 6 * HOUR_MS, "count"),
    ("total", "1d", 30 * DAY_MS, "count"),
    ("total", "1d", 7 * DAY_MS, "uniques"),
)
FILTERS: tuple[dict[str, str], ...] = (
    {},
    {},
    {"source": "so1"},
    {"country": "co7"},
    {"device": "de2"},
    {"link": "li0"},
)
NAMES = ("click", "click", "view", "conversion")


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))] if s else float("nan")


def dashboard_queries(project: str, seed: int = 13) -> list[tuple[str, dict[str, str]]]:
    """DASHBOARDS fixed questions (path, params without from/to's values): varied names,
    filters (day-grain rollups for one dim; hours and minutes only for the total) and
    shapes; some dashboards ask the same question, as real ones do."""
    rng = random.Random(seed)
    out = []
    for _ in range(DASHBOARDS):
        route, precision, span, measure = rng.choice(SHAPES)
        filters = rng.choice(FILTERS) if precision == "1d" else {}
        params = {"name": rng.choice(NAMES), "precision": precision, "measure": measure}
        params |= {"span": str(span), **filters}
        out.append((f"/v1/projects/{project}/{route}", params))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process and its children so far."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        t = p.cpu_times()
        total += t.user + t.system
    return total


async def sparkline(
    urls: dict[str, str], key: str, project: str, runs: int
) -> dict[str, list[float]]:
    """Server-side ms of the 30-day hourly sparkline, asked of each service in turn."""
    out: dict[str, list[float]] = {label: [] for label in urls}
    clients = {label: httpx.AsyncClient(base_url=url, timeout=30) for label, url in urls.items()}
    auth = {"Authorization": f"Bearer {key}"}
    try:
        for i in range(runs + 5):
            now = int(time.time() * 1000)
            params = {"name": "click", "precision": "1h"}
            params |= {"from": str(now - 30 * DAY_MS), "to": str(now)}
            for label, c in clients.items():
                r = await c.get(f"/v1/projects/{project}/series", params=params, headers=auth)
                assert r.status_code == 200, r.text
                if i >= 5:  # warm-up: the first reads fill the cache
                    out[label].append(float(r.headers["server-timing"].split("dur=")[1]))
    finally:
        for c in clients.values():
            await c.aclose()
    return out


async def _worker(
    url: str, key: str, queue: asyncio.Queue[tuple[str, dict[str, str]] | None], out: Any
) -> None:
    """One keep-alive connection speaking just enough HTTP/1.1 (httpx costs the client
    more CPU per request than the server spends: the client would be the bottleneck)."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while (item := await queue.get()) is not None:
            path, params = item
            now = int(time.time() * 1000)
            p = {k: v for k, v in params.items() if k != "span"}
            p |= {"from": str(now - int(params["span"])), "to": str(now)}
            target = path + "?" + urlencode(p)
            auth = f"Authorization: Bearer {key}"
            writer.write(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            status = int(lines[0].split()[1])
            headers = dict(
                (k.lower(), v.strip()) for k, _, v in (h.partition(":") for h in lines[1:] if h)
            )
            await reader.readexactly(int(headers.get("content-length", "0")))
            if status != 200:
                out.errors += 1
            else:
                out.server.append(float(headers["server-timing"].split("dur=")[1]))
    finally:
        writer.close()


class Polled:
    def __init__(self) -> None:
        self.server: list[float] = []
        self.errors = 0


async def poll(
    url: str, key: str, queries: list[tuple[str, dict[str, str]]], seconds: float
) -> Any:
    """Every dashboard asks its question every PERIOD_S for `seconds` over CONNECTIONS
    keep-alive connections; returns server-side ms per request, the count of non-200
    answers and the rate achieved."""
    out = Polled()
    queue: asyncio.Queue[tuple[str, dict[str, str]] | None] = asyncio.Queue()
    workers = [asyncio.create_task(_worker(url, key, queue, out)) for _ in range(CONNECTIONS)]
    rate = len(queries) / PERIOD_S
    total = int(seconds * rate)
    t0 = time.perf_counter()
    for k in range(total):
        delay = t0 + k / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait(queries[k % len(queries)])
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    elapsed = time.perf_counter() - t0
    return out.server, out.errors, len(out.server) / elapsed


async def engine_cpu(services: Any, prefix: str, project: str, runs: int) -> dict[str, float]:
    """CPU ms per 30-day hourly sparkline of the read engine alone, in this process (parse,
    read, reply, JSON; no HTTP, authorization or rate limit), cache on and off."""
    enc = msgspec.json.Encoder(decimal_format="number")
    base = ReadContext(
        services.pool, services.redis, services.scripts, ProjectKeys(prefix, project), 0
    )
    out = {}
    for label, cache in (("cache on", HistoryCache(64, 1 << 24)), ("cache off", None)):
        ctx = dataclasses.replace(base, history=cache)
        now = int(time.time() * 1000)
        params = {"name": "click", "precision": "1h"}
        params |= {"from": str(now - 30 * DAY_MS), "to": str(now)}
        for n in range(runs + 5):
            if n == 5:
                t0 = time.process_time()
            enc.encode(await read_series(ctx, parse_read(params, now, ())))
        out[label] = (time.process_time() - t0) / runs * 1000
    return out


async def run(args: argparse.Namespace) -> None:
    level = int(args.levels.split(",")[0])
    data_dir = Path(tempfile.mkdtemp(prefix="counters-bench-poll-"))
    data_dir.chmod(0o755)
    redis_url = os.environ.get("COUNTERS_REDIS_URL") or embedded.ensure_valkey(data_dir)
    server_url = os.environ.get("COUNTERS_DATABASE_URL") or embedded.postgres_admin_url(data_dir)
    owner_url = (
        None if os.environ.get("COUNTERS_DATABASE_URL") else embedded.ensure_postgres(data_dir)
    )
    db = "bench_poll_" + uuid.uuid4().hex[:6]
    database_url = await asyncio.to_thread(create_database, server_url, db, owner_url)
    prefix = "benchp" + uuid.uuid4().hex[:4]
    backends = Backends(redis_url, database_url, prefix, data_dir)
    common = dict(
        COUNTERS_PERSISTER_ENABLED="false",
        COUNTERS_RECONCILE_ENABLED="false",
        COUNTERS_CROSSTABS="",
    )
    services = {
        "cache on": Service(service_env(backends, data_dir / "on", **common), data_dir / "on.log"),
        "cache off": Service(
            service_env(backends, data_dir / "off", COUNTERS_READ_CACHE_ENTRIES="0", **common),
            data_dir / "off.log",
        ),
    }
    for label in ("on", "off"):
        (data_dir / label).mkdir()
    settings = Settings(redis_url=redis_url, database_url=database_url, key_prefix=prefix)
    opened = open_services(settings, SystemClock(), pool_max_size=4)
    svcs = await opened.__aenter__()
    end = (time.time_ns() // 1_000_000) // HOUR_MS * HOUR_MS
    project = f"poll{level}"
    lines: list[str] = []
    try:
        print(f"level {level:,}: generating", flush=True)
        h = generate(level, end, seed=level)
        async with svcs.pool.acquire() as conn:
            key = await create_key(conn, project, "read")
        secs = await load_counters(svcs.pool, svcs.redis, prefix, project, h, print)
        print(f"  loaded in {secs:.0f}s", flush=True)
        for s in services.values():
            s.start()
        urls = {label: s.url for label, s in services.items()}
        load_at_start = os.getloadavg()
        await sparkline(urls, key, project, 5)  # warm-up: the first reads fill the cache
        pids = {label: s.pid for label, s in services.items()}
        cpu_before = {label: cpu_seconds(pid) for label, pid in pids.items()}
        spark = await sparkline(urls, key, project, args.runs)
        spark_cpu = {
            label: (cpu_seconds(pid) - cpu_before[label]) / args.runs * 1000
            for label, pid in pids.items()
        }
        engine = await engine_cpu(svcs, prefix, project, args.runs)
        queries = dashboard_queries(project)
        polled: dict[str, tuple[float, list[float], int, float]] = {}
        for label, s in services.items():
            await poll(s.url, key, queries[:50], 2.0)  # warm-up
            spy = None
            if args.py_spy:  # collapsed stacks of the server while it is polled
                out = Path(args.py_spy) / f"{label.replace(' ', '-')}.txt"
                spy = subprocess.Popen(
                    [shutil.which("py-spy") or "py-spy", "record", "-f", "raw", "-o", str(out)]
                    + ["-d", str(int(args.poll_seconds)), "--pid", str(s.pid), "-r", "200"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            before, t0 = cpu_seconds(s.pid), time.perf_counter()
            server, errors, rate = await poll(s.url, key, queries, args.poll_seconds)
            if spy is not None:
                spy.wait(30)
            cores = (cpu_seconds(s.pid) - before) / (time.perf_counter() - t0)
            polled[label] = (cores, server, errors, rate)
            print(
                f"  {label}: {cores:.3f} cores at {rate:.0f} req/s, p50 {pct(server, 50):.2f}"
                f" p99 {pct(server, 99):.2f} ms, {errors} errors",
                flush=True,
            )
        on, off = spark["cache on"], spark["cache off"]
        lines += [
            f"Command: `.venv/bin/python -m bench reads --polling --levels {level}"
            f" --runs {args.runs} --poll-seconds {args.poll_seconds:g}`; {machine()}"
            f" (load at the measurement's start {load_at_start[0]:.1f}, at its end"
            f" {os.getloadavg()[0]:.1f}). Events: {level:,} over 365 days. Both services run"
            " side by side on the same backends; one has the read cache on (defaults), the"
            " other COUNTERS_READ_CACHE_ENTRIES=0.",
            "",
            "| | cache on | cache off | on / off |",
            "| --- | --- | --- | --- |",
            f"| 30-day hourly sparkline, server p50 (ms, {args.runs} runs each, interleaved)"
            f" | {pct(on, 50):.2f} | {pct(off, 50):.2f} | {pct(on, 50) / pct(off, 50):.2f} |",
            f"| sparkline server p99 (ms) | {pct(on, 99):.2f} | {pct(off, 99):.2f}"
            f" | {pct(on, 99) / pct(off, 99):.2f} |",
            f"| sparkline: read engine CPU per read, in-process (ms) | {engine['cache on']:.2f}"
            f" | {engine['cache off']:.2f} | {engine['cache on'] / engine['cache off']:.2f} |",
            f"| sparkline: server CPU per request (ms) | {spark_cpu['cache on']:.2f}"
            f" | {spark_cpu['cache off']:.2f}"
            f" | {spark_cpu['cache on'] / spark_cpu['cache off']:.2f} |",
        ]
        pon, poff = polled["cache on"], polled["cache off"]
        lines += [
            f"| {DASHBOARDS:,} dashboards every {PERIOD_S:g} s: server CPU (cores)"
            f" | {pon[0]:.3f} | {poff[0]:.3f} | {pon[0] / poff[0]:.2f} |",
            f"| polled requests/s achieved | {pon[3]:.0f} | {poff[3]:.0f} | |",
            f"| server CPU per polled request (ms) | {1000 * pon[0] / pon[3]:.2f}"
            f" | {1000 * poff[0] / poff[3]:.2f} | {(pon[0] / pon[3]) / (poff[0] / poff[3]):.2f} |",
            f"| cores at {DASHBOARDS / PERIOD_S:.0f} requests/s (CPU per request x rate)"
            f" | {pon[0] / pon[3] * DASHBOARDS / PERIOD_S:.3f}"
            f" | {poff[0] / poff[3] * DASHBOARDS / PERIOD_S:.3f} | |",
            f"| polled server p50 / p99 (ms) | {pct(pon[1], 50):.2f} / {pct(pon[1], 99):.2f}"
            f" | {pct(poff[1], 50):.2f} / {pct(poff[1], 99):.2f} | |",
            f"| non-200 answers | {pon[2]} | {poff[2]} | |",
        ]
    finally:
        for s in services.values():
            s.stop()
        await opened.__aexit__(None, None, None)
        if not args.keep:
            await asyncio.to_thread(drop_database, server_url, db)
            if not os.environ.get("COUNTERS_REDIS_URL") or not os.environ.get(
                "COUNTERS_DATABASE_URL"
            ):
                embedded.stop_embedded(data_dir)
            shutil.rmtree(data_dir, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
