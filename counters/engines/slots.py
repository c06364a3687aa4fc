"""Whether a project's Redis Cluster slot is being resharded (for the persister's fence).

Ingest declares every key it touches, so Valkey refuses a batch whose slot is on the move
(TRYAGAIN) rather than running it on a node that lacks some of its keys. The persister's
scripts (seal, rotate_late, restore) find most of their keys inside Redis, so they cannot
declare them; instead the persister leaves a project alone while its slot is MIGRATING or
IMPORTING on the master that serves it (docs/ARCHITECTURE.md, "Redis Cluster").
"""

from __future__ import annotations

import re

from redis.asyncio import RedisCluster

from counters.core.errors import Unavailable
from lua.client import RedisClient, redis_unavailable
from lua.keys import ProjectKeys


def _moving(nodes: str, slot: int) -> bool:
    """Whether CLUSTER NODES text shows the answering node ("myself") migrating or
    importing slot (`[slot->-id]` or `[slot-<-id]`)."""
    for line in nodes.splitlines():
        parts = line.split()
        if len(parts) > 2 and "myself" in parts[2]:
            return re.search(rf"\[{slot}-[<>]-", line) is not None
    return False


async def ensure_slot_settled(redis: RedisClient, keys: ProjectKeys) -> None:
    """Returns at once on one Redis node; on a cluster, raises Unavailable("redis") while
    the master serving the project's slot is migrating it away or importing it."""
    if not isinstance(redis, RedisCluster):
        return
    with redis_unavailable():
        await redis.initialize()  # the slot map (a no-op once known)
        slot = redis.keyslot(keys.watermarks)
        node = redis.get_node_from_key(keys.watermarks)
        text = await redis.execute_command("CLUSTER", "NODES", target_nodes=node)
    if _moving(text.decode() if isinstance(text, bytes) else str(text), slot):
        raise Unavailable(
            "redis",
            f"slot {slot} of project {keys.project} is being resharded; it is persisted"
            " again once the slot is stable",
        )
