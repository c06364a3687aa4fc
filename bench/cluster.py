"""Scenario cluster: where Redis's work lands on a 3-master Valkey Cluster, for one hot
project with 1 shard and the same project split into 3 (issue 13 item 2).

One `counters serve` (1 worker, persister in-process) on an embedded 3-master Valkey
Cluster, loaded by wrk with 1,000-event POSTs (no `ts`: counted at arrival, no event ids:
each batch goes whole to one shard, round robin), alternately for --rounds rounds:

  1 shard     the project unsplit: its slot, so one master, does all the work
  3 shards    the same project after `counters projects shards P 3`; P is chosen so that
              {p:P}, {p:P:1}, {p:P:2} sit on the three masters (about 27% of names do)

and, in the same run, the same load on one project on a single embedded Valkey. For each:
events/s, Redis CPU per event per master (INFO cpu of every node before and after), and
the share of the round's batches each shard's raw stream took (XINFO STREAM entries-added:
a check that the split was in effect).

    .venv/bin/python -m bench cluster [--quick] [--seconds 15] [--rounds 3] [--append]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis as sync_redis
from redis.asyncio import RedisCluster

from bench import generate
from bench.common import (
    ServiceProc,
    Stack,
    busy_warning,
    finish_wrk,
    load_now,
    log,
    md_table,
    median,
    redis_cpu,
    report,
    require_wrk,
    start_wrk,
    wrk_script,
)
from counters.core.shards import shard_projects
from counters.embedded import cluster_nodes, ensure_valkey_cluster
from counters.harness.placement import shard_masters, spread_project
from counters.harness.servers import Servers, start_servers, stop_servers
from counters.harness.service import cli
from lua.client import open_redis
from lua.keys import ProjectKeys

BATCH = 1000
SHARDS = 3
REFRESH_SECONDS = 0.5
"""The service's shard_refresh_seconds here: a change of N is routed by within it."""


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0, help="wrk seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=6, help="wrk connections")
    p.add_argument("--quick", action="store_true", help="--seconds 5 --rounds 1")
    p.add_argument("--append", action="store_true", help="append the result to RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 5.0, 1
    return args


@dataclass
class Shape:
    """One load shape: its measurements over the rounds."""

    name: str
    shards: int
    rates: list[float] = field(default_factory=list)
    per_master: list[list[float]] = field(default_factory=list)
    """Per round: Redis CPU µs per event of each master (sorted by port)."""
    per_shard: list[list[float]] = field(default_factory=list)
    """Per round: the share of the round's batches each shard took."""


def _node_urls(url: str, data_dir: Path | None) -> list[str]:
    """One URL per master of the embedded cluster (same password), by port."""
    assert data_dir is not None
    head, _, _ = url.rpartition("@")
    return [
        f"{head}@127.0.0.1:{n.port}/0"
        for n in sorted(cluster_nodes(data_dir), key=lambda n: n.port)
    ]


def _spread_project(cluster_url: str) -> tuple[str, list[int]]:
    """A fresh project name whose 3 shards sit on the 3 masters, and each shard's port."""

    async def pick() -> tuple[str, list[int]]:
        client = open_redis(cluster_url, cluster=True)
        assert isinstance(client, RedisCluster)
        try:
            await client.initialize()
            name = spread_project(client, "bc" + uuid.uuid4().hex[:6] + "n", SHARDS)
            return name, shard_masters(client, name, SHARDS)
        finally:
            await client.aclose()

    return asyncio.run(pick())


def _entries_added(redis_url: str, cluster: bool, prefix: str, project: str) -> list[int]:
    """XINFO STREAM entries-added of each shard's raw stream (0 where none yet)."""
    if cluster:
        client: Any = sync_redis.RedisCluster.from_url(redis_url)
    else:
        client = sync_redis.Redis.from_url(redis_url)
    try:
        out = []
        for name in shard_projects(project, SHARDS):
            key = ProjectKeys(prefix, name).raw
            out.append(int(client.xinfo_stream(key)["entries-added"]) if client.exists(key) else 0)
        return out
    finally:
        client.close()


@dataclass
class Target:
    """Where a shape sends its load and what it watches."""

    svc: ServiceProc
    project: str
    script: Path
    redis_url: str
    cluster: bool
    node_urls: list[str]
    headers: dict[str, str]
    """The project's ingest key, for small posts of our own."""

    def added(self) -> list[int]:
        return _entries_added(self.redis_url, self.cluster, self.svc.prefix, self.project)


def _set_shards(t: Target, n: int, body: bytes) -> None:
    """`counters projects shards P n`, then small posts until the service routes by it
    (for 1: three posts in a row on shard 0; for more: one on a shard other than 0)."""
    cli(t.svc.env, "projects", "shards", t.project, str(n))
    deadline = time.monotonic() + 30
    in_a_row = 0
    while time.monotonic() < deadline:
        before = t.added()
        httpx.post(t.svc.url + "/v1/events", content=body, headers=t.headers, timeout=10)
        grew = [a - b for a, b in zip(t.added(), before, strict=True)]
        if n == 1:
            in_a_row = in_a_row + 1 if grew[0] and not any(grew[1:]) else 0
            if in_a_row >= 3:
                return
        elif any(grew[1:]):
            return
        time.sleep(REFRESH_SECONDS / 5)
    raise RuntimeError(f"the service did not route {t.project} over {n} shards in 30 s")


def _measure(t: Target, seconds: float, conns: int) -> tuple[float, list[float], list[float]]:
    """events/s, Redis CPU µs per event of each node, and each shard's share of the
    batches, over one wrk run."""
    cpu0 = [redis_cpu(u) for u in t.node_urls]
    added0 = t.added()
    accepted0 = t.svc.metric("counters_events_accepted_total")
    result = finish_wrk(start_wrk(t.svc.url, t.script, seconds=seconds, connections=conns), seconds)
    accepted = t.svc.metric("counters_events_accepted_total") - accepted0
    cpu = [redis_cpu(u) - c for u, c in zip(t.node_urls, cpu0, strict=True)]
    added = [a - b for a, b in zip(t.added(), added0, strict=True)]
    events = max(accepted, 1.0)
    shares = [a / max(1, sum(added)) for a in added]
    return accepted / result.seconds, [c * 1e6 / events for c in cpu], shares


def run(args: argparse.Namespace, argv: list[str]) -> int:
    require_wrk()
    load0, busy = load_now(), busy_warning()
    root = Path(tempfile.mkdtemp(prefix="counters-bench-cluster-", dir="/tmp"))
    single = start_servers(None, None, tmp_prefix="counters-bench-", tmp_dir="/tmp")
    assert single.data_dir is not None
    cluster_url = ensure_valkey_cluster(single.data_dir)
    log(f"one Valkey and a 3-master cluster under {single.data_dir}")
    st_single = Stack(single.redis_url, single.server_url, None, root / "s", single.owner_url)
    st_cluster = Stack(cluster_url, single.server_url, None, root / "c", single.owner_url)
    (root / "s").mkdir(parents=True)
    (root / "c").mkdir(parents=True)
    bodies = root / "bodies.txt"
    evs = generate.events(20_000, uids=50_000, with_ts=False)
    batches = generate.json_batches(evs, BATCH)
    bodies.write_bytes(b"\n".join(batches) + b"\n")
    env = {"COUNTERS_SHARD_REFRESH_SECONDS": str(REFRESH_SECONDS)}
    shapes = {
        "single": Shape("one Valkey, one project", 1),
        "one": Shape("cluster, the project with 1 shard", 1),
        "three": Shape(f"cluster, the project split into {SHARDS} shards", SHARDS),
    }
    placement = ""
    try:
        svc_s = st_single.service("single", env=env)
        svc_c = st_cluster.service("cluster", env=env)
        project, ports = _spread_project(cluster_url)
        placement = (
            f"The project `{project}`: shards 0, 1, 2 on the masters of ports"
            f" {', '.join(map(str, ports))} (columns below are by port: "
            f"{', '.join(map(str, sorted(ports)))})."
        )
        log(placement)

        def target(svc: ServiceProc, name: str, url: str, cluster: bool) -> Target:
            headers = {
                "Authorization": f"Bearer {svc.key(name, 'ingest')}",
                "Content-Type": "application/json",
            }
            script = wrk_script(root, method="POST", requests_file=bodies, headers=headers)
            nodes = _node_urls(url, single.data_dir) if cluster else [url]
            return Target(svc, name, script, url, cluster, nodes, headers)

        t_single = target(svc_s, "bench", single.redis_url, False)
        t_cluster = target(svc_c, project, cluster_url, True)
        targets = {"single": t_single, "one": t_cluster, "three": t_cluster}
        for key, t in targets.items():  # warm-up: projects made, scripts loaded, N set
            if t.cluster:
                _set_shards(t, shapes[key].shards, batches[0])
            _measure(t, 2, args.connections)
        for r in range(args.rounds):
            for key, t in targets.items():
                shape = shapes[key]
                if t.cluster:
                    _set_shards(t, shape.shards, batches[0])
                rate, per, shares = _measure(t, args.seconds, args.connections)
                shape.rates.append(rate)
                shape.per_master.append(per)
                shape.per_shard.append(shares)
                log(
                    f"round {r + 1}/{args.rounds} {shape.name}: {rate:,.0f} events/s,"
                    f" Redis µs/event per node {', '.join(f'{x:.2f}' for x in per)},"
                    f" batches per shard {', '.join(f'{x:.2f}' for x in shares)}"
                )
    finally:
        st_single.close()
        st_cluster.close()
        stop_servers(Servers(single.redis_url, single.server_url, single.data_dir))
    body = (
        (busy + "\n\n" if busy else "")
        + f"Median of {args.rounds} rounds of {args.seconds:.0f} s, wrk with"
        f" {args.connections} connections, 1,000-event POSTs without ids, one `counters"
        f" serve` worker with its persister; the shapes alternate within each round (N"
        f" changed with `counters projects shards`). {placement} At the end: {load_now()}.\n\n"
        + md_table(
            [
                "shape",
                "events/s",
                "vs 1 shard",
                "vs one Valkey",
                "Redis CPU µs/event per master",
                "sum",
                "busiest master's share",
                "batches per shard",
            ],
            _rows(shapes),
        )
    )
    report(
        "Redis Cluster: one hot project, 1 shard against 3 (issue 13 item 2)",
        "bench.cluster",
        argv,
        body,
        append=args.append,
        load_at_start=load0,
    )
    return 0


def _rows(shapes: dict[str, Shape]) -> list[list[Any]]:
    base, one = median(shapes["single"].rates), median(shapes["one"].rates)
    rows: list[list[Any]] = []
    for shape in shapes.values():
        per = [median([r[i] for r in shape.per_master]) for i in range(len(shape.per_master[0]))]
        shares = [median([r[i] for r in shape.per_shard]) for i in range(SHARDS)]
        rate = median(shape.rates)
        rows.append(
            [
                shape.name,
                f"{rate:,.0f}",
                f"{rate / one:.2f}",
                f"{rate / base:.2f}",
                " / ".join(f"{x:.2f}" for x in per),
                f"{sum(per):.2f}",
                f"{max(per) / sum(per):.2f}" if sum(per) else "-",
                " / ".join(f"{x:.2f}" for x in shares),
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    return run(parse(argv), argv)
