"""Where a project's shards sit on a Redis Cluster (for tests and benchmarks): the master
of each shard's slot, and a project name whose shards sit on as many masters as there are.

Which slot a key is in depends only on its hash tag (`{p:P}`, `{p:P:s}`: lua/keys.py), so a
name's placement is the same under every key prefix and in every run on the same slot map."""

from __future__ import annotations

import itertools

from redis.asyncio import RedisCluster

from counters.core.shards import shard_projects
from lua.keys import ProjectKeys


def shard_masters(client: RedisCluster, project: str, shards: int) -> list[int]:
    """The port of the master serving each shard of project (shard 0 first), by the
    client's current slot map."""
    ports: list[int] = []
    for name in shard_projects(project, shards):
        node = client.get_node_from_key(ProjectKeys("", name).watermarks)
        assert node is not None, "the client's slot map misses a slot"
        ports.append(int(node.port))
    return ports


def spread_fraction(client: RedisCluster, names: list[str], shards: int) -> float:
    """The fraction of names whose shards all sit on different masters."""
    spread = sum(len(set(shard_masters(client, n, shards))) == shards for n in names)
    return spread / max(1, len(names))


def spread_project(client: RedisCluster, stem: str, shards: int) -> str:
    """The first name stem0, stem1, ... whose shards sit on min(shards, masters) different
    masters (one per master when there are at least as many masters as shards)."""
    want = min(shards, len(client.get_primaries()))
    for i in itertools.count():
        name = f"{stem}{i}"
        if len(set(shard_masters(client, name, shards))) == want:
            return name
    raise AssertionError("unreachable")
