"""A script call followed by WAITAOF on the same connection (durable_ack).

WAITAOF waits for the writes of the connection it is sent on: sent on another pooled
connection (or, in a cluster, to another node) it returns at once and proves nothing. So
the script and WAITAOF go out as one two-command pipeline, which redis-py sends on one
connection of the node that holds the script's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lua.client import RedisClient


async def call_and_wait_aof(
    redis: RedisClient,
    script: AsyncScript,
    keys: Sequence[str],
    args: Sequence[Any],
    timeout_ms: int,
) -> tuple[Any, Any]:
    """(script reply, WAITAOF 1 0 timeout_ms reply or the error it raised): the WAITAOF
    ran after the script on the same connection, so a reply of [1, _] means the script's
    writes are fsynced to that node's AOF. The script's own errors are raised (a NOSCRIPT
    loads it and tries once more)."""
    for attempt in range(2):
        pipe = redis.pipeline(transaction=False)
        pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
        if isinstance(redis, RedisCluster):
            await redis.initialize()  # the slot map (a no-op once known)
            node = redis.get_node_from_key(keys[0])
            pipe.execute_command("WAITAOF", 1, 0, timeout_ms, target_nodes=node)
        else:
            pipe.execute_command("WAITAOF", 1, 0, timeout_ms)
        reply, waited = await pipe.execute(raise_on_error=False)
        if isinstance(reply, NoScriptError) and attempt == 0:
            await script.registered_client.script_load(script.script)
            continue
        if isinstance(reply, BaseException):
            raise reply
        return reply, waited
    raise AssertionError("unreachable")  # pragma: no cover
