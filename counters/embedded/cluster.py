"""An embedded Valkey Cluster: N masters (no replicas) on 127.0.0.1 under one data dir.

For tests, benches and trying counters on a cluster without one at hand
(`counters embedded cluster`). Layout under ``data_dir``::

    .valkey-cluster.lock          flock()ed around check-and-start / stop
    valkey-cluster/node<i>/       each node's --dir (AOF, nodes.conf), valkey.pid,
                                  valkey.log, state.json (its client and bus ports)

Every node uses the data dir's Valkey password (secrets.json) as requirepass and
masterauth. The slots are split evenly over the masters when the cluster is first formed;
a node restarted later (same ports when still free) rejoins from its nodes.conf with its
slots. With ``cluster-require-full-coverage no``, while one master is down the others keep
serving their slots and only that master's slots answer errors (503 from the service).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from counters.embedded import process
from counters.embedded.process import HOST, EmbeddedServerError
from counters.embedded.resp import _resp_command
from counters.embedded.secrets import load_secrets, read_secrets
from counters.embedded.valkey import (
    _read_pidfile,
    _start_valkey,
    _stop_valkey,
    _valkey_paths,
    _valkey_running,
    _valkey_url,
    _ValkeyPaths,
)

SLOTS = 16384
CLUSTER_MASTERS = 3
"""Masters of the embedded cluster unless asked otherwise."""
_FORM_DEADLINE = 30.0


@dataclass(frozen=True)
class ClusterNodeInfo:
    """One running node of the embedded cluster."""

    index: int
    pid: int
    port: int


def _cluster_dir(data_dir: Path) -> Path:
    return data_dir / "valkey-cluster"


def _lock(data_dir: Path) -> Path:
    return data_dir / ".valkey-cluster.lock"


def _node_paths(data_dir: Path, index: int, password: str) -> _ValkeyPaths:
    base = _valkey_paths(data_dir, password)
    ndir = _cluster_dir(data_dir) / f"node{index}"
    return _ValkeyPaths(
        dir=ndir,
        pidfile=ndir / "valkey.pid",
        logfile=ndir / "valkey.log",
        state=ndir / "state.json",
        lock=base.lock,
        password=password,
    )


def _info(port: int, password: str) -> dict[str, str]:
    text = _resp_command(port, "CLUSTER", "INFO", password=password) or ""
    return dict(re.findall(r"^(\w+):(\S*)\s*$", text, re.MULTILINE))


def _bus_port(paths: _ValkeyPaths) -> int:
    bus = process.json_int(process.read_json(paths.state), "bus")
    if bus is None:
        raise EmbeddedServerError(f"no cluster bus port recorded in {paths.state}")
    return bus


def _form(nodes: list[tuple[_ValkeyPaths, int]], password: str) -> None:
    """Assigns the slots (first forming only) and introduces the nodes to each other, then
    waits until every node sees all of them and the cluster state is ok."""
    infos = [_info(port, password) for _, port in nodes]
    if all(int(i.get("cluster_slots_assigned", "0") or 0) == 0 for i in infos):
        per = SLOTS // len(nodes)
        for k, (_, port) in enumerate(nodes):
            first = k * per
            last = SLOTS - 1 if k == len(nodes) - 1 else first + per - 1
            reply = _resp_command(
                port, "CLUSTER", "ADDSLOTSRANGE", str(first), str(last), password=password
            )
            if reply != "OK":
                raise EmbeddedServerError(f"CLUSTER ADDSLOTSRANGE on port {port}: {reply}")
    first_port = nodes[0][1]
    deadline = time.monotonic() + _FORM_DEADLINE
    while True:
        infos = [_info(port, password) for _, port in nodes]
        known = [int(i.get("cluster_known_nodes", "0") or 0) for i in infos]
        if all(k == len(nodes) for k in known) and all(
            i.get("cluster_state") == "ok" for i in infos
        ):
            return
        for paths, port in nodes[1:]:
            if known[0] < len(nodes):
                _resp_command(
                    first_port,
                    "CLUSTER",
                    "MEET",
                    HOST,
                    str(port),
                    str(_bus_port(paths)),
                    password=password,
                )
        if time.monotonic() > deadline:
            raise EmbeddedServerError(
                f"the embedded cluster did not form within {_FORM_DEADLINE:.0f}s: {infos}"
            )
        time.sleep(process.POLL_INTERVAL)


def ensure_valkey_cluster(data_dir: Path, masters: int = CLUSTER_MASTERS) -> str:
    """Start (or reuse, restarting any node that died) an embedded Valkey Cluster of
    `masters` masters for data_dir; return a redis:// URL of one node (redis-py's
    RedisCluster finds the others from it).

    On return every node answers, knows all the others and reports cluster_state:ok. Nodes
    listen on 127.0.0.1 only, need the data dir's Valkey password and persist to their own
    AOF. Raises EmbeddedServerError (with a log tail) if a node cannot be started."""
    if masters < 1:
        raise ValueError("a cluster needs at least one master")
    data_dir = process.absolute(data_dir)
    password = load_secrets(data_dir).valkey_password
    cdir = _cluster_dir(data_dir)
    cdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(cdir, 0o700)
    with process.locked(_lock(data_dir)):
        nodes: list[tuple[_ValkeyPaths, int]] = []
        for index in range(masters):
            paths = _node_paths(data_dir, index, password)
            paths.dir.mkdir(mode=0o700, exist_ok=True)
            running = _valkey_running(paths)
            port = running[1] if running is not None else _start_valkey(paths, cluster=True)
            nodes.append((paths, port))
        _form(nodes, password)
        return _valkey_url(nodes[0][1], password)


def cluster_nodes(data_dir: Path) -> list[ClusterNodeInfo]:
    """The embedded cluster's nodes whose process is alive, by index."""
    data_dir = process.absolute(data_dir)
    secrets = read_secrets(data_dir)
    found: list[ClusterNodeInfo] = []
    if secrets is None:
        return found
    for ndir in sorted(_cluster_dir(data_dir).glob("node*")):
        index = int(ndir.name[4:])
        paths = _node_paths(data_dir, index, secrets.valkey_password)
        pid = _read_pidfile(paths.pidfile)
        port = process.json_int(process.read_json(paths.state), "port")
        if pid is not None and port is not None and process.pid_alive(pid):
            found.append(ClusterNodeInfo(index, pid, port))
    return found


def kill_cluster_node(data_dir: Path, index: int) -> int:
    """SIGKILL one node of the embedded cluster (a crash, for fault tests); its pid."""
    for node in cluster_nodes(data_dir):
        if node.index == index:
            os.kill(node.pid, signal.SIGKILL)
            process.wait_gone(node.pid, time.monotonic() + 10)
            return node.pid
    raise EmbeddedServerError(f"cluster node {index} is not running")


def stop_valkey_cluster(data_dir: Path) -> bool:
    """Stop every node of the embedded cluster (data kept); True if any was running."""
    data_dir = process.absolute(data_dir)
    secrets = read_secrets(data_dir)
    if secrets is None or not _cluster_dir(data_dir).is_dir():
        return False
    stopped = False
    with process.locked(_lock(data_dir)):
        for ndir in sorted(_cluster_dir(data_dir).glob("node*")):
            paths = _node_paths(data_dir, int(ndir.name[4:]), secrets.valkey_password)
            with contextlib.suppress(EmbeddedServerError):
                stopped = _stop_valkey(paths) or stopped
    return stopped
