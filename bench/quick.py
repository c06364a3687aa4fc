"""Quick local figures: batch-ingest events/s through a real `counters serve`, and the time
from a 2xx to the event being readable.

    .venv/bin/python -m bench.quick [--events 200000] [--batch 1000] [--clients 4]

Uses COUNTERS_REDIS_URL / COUNTERS_DATABASE_URL when set, else embedded servers in a
temporary data dir (stopped at the end)."""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from counters.harness.servers import Backends, start_servers, stop_servers
from counters.harness.service import Service, create_key, service_env


def make_batches(n: int, batch: int, spread_ms: int, seed: int = 1) -> list[bytes]:
    import msgspec

    rng = random.Random(seed)
    now = time.time_ns() // 1_000_000
    links = [f"l{i}" for i in range(1000)]
    weights = [1 / (i + 1) for i in range(1000)]
    sources = [f"s{i}" for i in range(50)]
    countries = [f"c{i}" for i in range(200)]
    devices = ["desktop", "mobile", "tablet", "tv", "bot"]
    out = []
    for start in range(0, n, batch):
        events = []
        for _ in range(min(batch, n - start)):
            events.append(
                {
                    "name": rng.choices(["click", "view", "conversion"], [55, 35, 10])[0],
                    "ts": now - rng.randrange(0, spread_ms),
                    "dims": {
                        "link": rng.choices(links, weights)[0],
                        "source": rng.choice(sources),
                        "country": rng.choice(countries),
                        "device": rng.choice(devices),
                    },
                    "uid": f"u{rng.randrange(2_000_000)}",
                    "value": rng.randrange(0, 10000) / 100,
                }
            )
        out.append(msgspec.json.encode(events))
    return out


async def run(args: argparse.Namespace) -> None:
    servers = start_servers(
        os.environ.get("COUNTERS_REDIS_URL"),
        os.environ.get("COUNTERS_DATABASE_URL"),
        tmp_prefix="counters-bench-",
    )
    work = Path(tempfile.mkdtemp(prefix="counters-bench-svc-"))
    env = service_env(
        Backends(
            servers.redis_url,
            servers.owner_url or servers.server_url,
            "bench" + uuid.uuid4().hex[:6],
            servers.data_dir,
        ),
        work,
        COUNTERS_GRACE_SECONDS="30",
        COUNTERS_PERSIST_INTERVAL_SECONDS="1",
        COUNTERS_CROSSTABS="",
    )
    svc = Service(env, work / "service.log")
    svc.start()
    try:
        project = "bench" + uuid.uuid4().hex[:6]
        ingest = {"Authorization": "Bearer " + create_key(env, project, "ingest")}
        read = {"Authorization": "Bearer " + create_key(env, project, "read")}
        batches = make_batches(args.events, args.batch, args.spread_seconds * 1000)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)
        limits = httpx.Limits(max_connections=args.clients)
        async with httpx.AsyncClient(base_url=svc.url, timeout=60, limits=limits) as c:

            async def worker() -> None:
                while not queue.empty():
                    body = queue.get_nowait()
                    r = await c.post("/v1/events", content=body, headers=ingest)
                    r.raise_for_status()

            t0 = time.perf_counter()
            await asyncio.gather(*[worker() for _ in range(args.clients)])
            elapsed = time.perf_counter() - t0
            print(
                f"batch ingest: {args.events} events in {elapsed:.2f}s = "
                f"{args.events / elapsed:,.0f} events/s "
                f"(batches of {args.batch}, {args.clients} clients, 1 worker, 4 dims, "
                f"ts spread over {args.spread_seconds}s)"
            )

            lags = []
            for i in range(args.freshness_samples):
                name = f"fresh{i}"
                r = await c.post("/v1/events", json=[{"name": name}], headers=ingest)
                r.raise_for_status()
                acked = time.perf_counter()
                params = {"name": name, "grain": "minute", "excluding_current": "false"}
                while True:
                    v = await c.get(f"/v1/projects/{project}/total", params=params, headers=read)
                    if v.json()["value"] == 1:
                        lags.append((time.perf_counter() - acked) * 1000)
                        break
            print(
                f"2xx -> readable: median {statistics.median(lags):.2f} ms, "
                f"max {max(lags):.2f} ms over {len(lags)} events"
            )
            reads = []
            for _ in range(50):
                t = time.perf_counter()
                r = await c.get(
                    f"/v1/projects/{project}/series",
                    params={"name": "click", "grain": "minute", "excluding_current": "false"},
                    headers=read,
                )
                r.raise_for_status()
                reads.append((time.perf_counter() - t) * 1000)
            print(
                f"30-bucket minute series (client wall-clock): median "
                f"{statistics.median(reads):.2f} ms"
            )
    finally:
        svc.stop()
        shutil.rmtree(work, ignore_errors=True)
        stop_servers(servers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--freshness-samples", type=int, default=20)
    p.add_argument("--spread-seconds", type=int, default=5, help="event times over the last N s")
    asyncio.run(run(p.parse_args(argv)))


if __name__ == "__main__":
    main()
