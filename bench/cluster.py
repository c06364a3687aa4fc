"""Scenario cluster: where Redis's work lands on a 3-master Valkey Cluster.

One `counters serve` (1 worker, persister in-process) on an embedded 3-master Valkey
Cluster, loaded by wrk with 1,000-event POSTs (no `ts`: counted at arrival), in two
shapes side by side, alternately for --rounds rounds:

  one project     every POST to one project: its slot, so one master, does all the work
  three projects  the same load split over three projects whose slots sit on the three
                  masters (a stand-in for a tenant split into shards, which is not built)

and, in the same run, the same one-project load on a single embedded Valkey. For each:
events/s, and Redis CPU per event per master (INFO cpu of every node before and after).

    .venv/bin/python -m bench cluster [--quick] [--seconds 15] [--rounds 3] [--append]
"""

from __future__ import annotations

import argparse
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
from counters.embedded import cluster_nodes, ensure_valkey_cluster
from counters.harness.servers import start_servers
from lua.client import open_redis
from lua.keys import ProjectKeys

BATCH = 1000


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench cluster", description=__doc__)
    p.add_argument("--seconds", type=float, default=15.0, help="wrk seconds per measurement")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=6, help="wrk connections in all")
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
    rates: list[float] = field(default_factory=list)
    per_master: list[list[float]] = field(default_factory=list)
    """Per round: Redis CPU µs per event of each master (sorted by port)."""


def _node_urls(url: str, data_dir: Path | None) -> list[str]:
    """One URL per master of the embedded cluster (same password), by port."""
    assert data_dir is not None
    head, _, _ = url.rpartition("@")
    return [
        f"{head}@127.0.0.1:{n.port}/0"
        for n in sorted(cluster_nodes(data_dir), key=lambda n: n.port)
    ]


def _projects_per_master(cluster_url: str, prefix: str) -> list[str]:
    """Three project names whose slots are on three different masters (by port)."""
    import asyncio

    async def pick() -> list[str]:
        client = open_redis(cluster_url, cluster=True)
        try:
            await client.initialize()  # type: ignore[union-attr]
            by_port: dict[int, str] = {}
            while len(by_port) < 3:
                name = "bc" + uuid.uuid4().hex[:8]
                node = client.get_node_from_key(ProjectKeys(prefix, name).watermarks)  # type: ignore[union-attr]
                by_port.setdefault(node.port, name)
            return [by_port[p] for p in sorted(by_port)]
        finally:
            await client.aclose()

    return asyncio.run(pick())


def _scripts(svc: ServiceProc, work: Path, projects: list[str], bodies: Path) -> list[Path]:
    return [
        wrk_script(
            work,
            method="POST",
            requests_file=bodies,
            headers={
                "Authorization": f"Bearer {svc.key(p, 'ingest')}",
                "Content-Type": "application/json",
            },
        )
        for p in projects
    ]


def _measure(
    svc: ServiceProc, scripts: list[Path], node_urls: list[str], seconds: float, conns: int
) -> tuple[float, list[float]]:
    """events/s and Redis CPU µs per event of each node, over one concurrent wrk run per
    script (the connections split evenly)."""
    cpu0 = [redis_cpu(u) for u in node_urls]
    accepted0 = svc.metric("counters_events_accepted_total")
    procs = [
        start_wrk(svc.url, s, seconds=seconds, connections=max(1, conns // len(scripts)))
        for s in scripts
    ]
    results = [finish_wrk(p, seconds) for p in procs]
    accepted = svc.metric("counters_events_accepted_total") - accepted0
    cpu = [redis_cpu(u) - c for u, c in zip(node_urls, cpu0, strict=True)]
    elapsed = max(r.seconds for r in results)
    events = max(accepted, 1.0)
    return accepted / elapsed, [c * 1e6 / events for c in cpu]


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
    bodies.write_bytes(b"\n".join(generate.json_batches(evs, BATCH)) + b"\n")
    shapes = {
        "single": Shape("one Valkey, one project"),
        "one": Shape("cluster, one project"),
        "three": Shape("cluster, three projects on three masters"),
    }
    try:
        svc_s = st_single.service("single")
        svc_c = st_cluster.service("cluster")
        nodes = _node_urls(cluster_url, single.data_dir)
        three = _projects_per_master(cluster_url, svc_c.prefix)
        plans: dict[str, tuple[ServiceProc, list[Path], list[str]]] = {
            "single": (svc_s, _scripts(svc_s, root, ["bench"] * 3, bodies), [single.redis_url]),
            "one": (svc_c, _scripts(svc_c, root, [three[0]] * 3, bodies), nodes),
            "three": (svc_c, _scripts(svc_c, root, three, bodies), nodes),
        }
        for svc, scripts, urls in plans.values():  # warm-up: projects, scripts loaded
            _measure(svc, scripts, urls, 2, args.connections)
        for r in range(args.rounds):
            for key, (svc, scripts, urls) in plans.items():
                rate, per = _measure(svc, scripts, urls, args.seconds, args.connections)
                shapes[key].rates.append(rate)
                shapes[key].per_master.append(per)
                log(
                    f"round {r + 1}/{args.rounds} {shapes[key].name}: {rate:,.0f} events/s,"
                    f" Redis µs/event per node {', '.join(f'{x:.2f}' for x in per)}"
                )
    finally:
        st_single.close()
        st_cluster.close()
        from counters.harness.servers import Servers, stop_servers

        stop_servers(Servers(single.redis_url, single.server_url, single.data_dir))
    rows: list[list[Any]] = []
    base = median(shapes["single"].rates)
    for shape in shapes.values():
        per = [median([r[i] for r in shape.per_master]) for i in range(len(shape.per_master[0]))]
        rows.append(
            [
                shape.name,
                f"{median(shape.rates):,.0f}",
                f"{median(shape.rates) / base:.2f}",
                " / ".join(f"{x:.2f}" for x in per),
                f"{sum(per):.2f}",
                f"{max(per) / sum(per):.2f}" if sum(per) else "-",
            ]
        )
    body = (
        f"{busy}Median of {args.rounds} rounds of {args.seconds:.0f} s, wrk with"
        f" {args.connections} connections in all, 1,000-event POSTs, one `counters serve`"
        " worker with its persister.\n\n"
        + md_table(
            [
                "shape",
                "events/s",
                "vs one Valkey",
                "Redis CPU µs/event per master",
                "sum",
                "busiest master's share",
            ],
            rows,
        )
    )
    report(
        "Redis Cluster: where the work lands (issue 13)",
        "bench.cluster",
        argv,
        body,
        append=args.append,
        load_at_start=load0,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    return run(parse(argv), argv)
