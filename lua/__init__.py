"""The Redis scripts, shipped as package data and registered once per client.

Each script starts with a prelude defining the bucket sizes from counters.core.buckets
(`MINUTE_MS`, `HOUR_MS`, `DAY_MS`, in ms), so the scripts and Python share one definition;
it is joined to the script's first line (a comment), so line numbers in Redis's error
messages match the .lua file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from counters.core.buckets import Grain
from lua.client import RedisClient

PRELUDE = (
    f"local MINUTE_MS, HOUR_MS, DAY_MS = "
    f"{Grain.minute.value}, {Grain.hour.value}, {Grain.day.value} "
)
"""Lua put in front of every script (no newline: it shares the script's first line)."""

NAMES = (
    "ingest",
    "seal",
    "restore",
    "restore_stage",
    "rotate_late",
    "trim_raw",
    "cut",
    "read_hot",
    "ratelimit",
    "ratelimit_batch",
)
"""Every script in lua/*.lua."""


def read_script(name: str) -> str:
    """Text of lua/<name>.lua, as Redis runs it (after the PRELUDE)."""
    text = files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")
    if not text.startswith("--"):
        raise ValueError(f"lua/{name}.lua must start with its header comment")
    return PRELUDE + text


class SlotScript(AsyncScript):
    """A script that, on a Redis Cluster, is loaded on NOSCRIPT only on the master it runs
    on (the one serving its first key's slot). redis-py's own fallback loads it on every
    master, so with one master down no master lacking the script could run it: a call in
    a healthy shard's slot failed for another master's outage (seen with the seal script
    after a restart)."""

    async def __call__(
        self,
        keys: Sequence[Any] | None = None,
        args: Iterable[Any] | None = None,
        client: Any = None,
    ) -> Any:
        """EVALSHA in the slot of keys; NOSCRIPT loads the script there and runs it again."""
        target = self.registered_client if client is None else client
        if not isinstance(target, RedisCluster) or not keys:
            return await super().__call__(keys, args, client)
        flat = (*keys, *(args or ()))
        try:
            return await target.evalsha(self.sha, len(keys), *flat)
        except NoScriptError:
            node = target.get_node_from_key(keys[0])
            await target.execute_command("SCRIPT LOAD", self.script, target_nodes=node)
            return await target.evalsha(self.sha, len(keys), *flat)


class Scripts:
    """Every script, registered on one client (reloaded on NOSCRIPT: SlotScript)."""

    def __init__(self, redis: RedisClient) -> None:
        self.ingest: AsyncScript = SlotScript(redis, read_script("ingest"))
        self.seal: AsyncScript = SlotScript(redis, read_script("seal"))
        self.restore: AsyncScript = SlotScript(redis, read_script("restore"))
        self.restore_stage: AsyncScript = SlotScript(redis, read_script("restore_stage"))
        self.rotate_late: AsyncScript = SlotScript(redis, read_script("rotate_late"))
        self.trim_raw: AsyncScript = SlotScript(redis, read_script("trim_raw"))
        self.cut: AsyncScript = SlotScript(redis, read_script("cut"))
        self.read_hot: AsyncScript = SlotScript(redis, read_script("read_hot"))
        self.ratelimit: AsyncScript = SlotScript(redis, read_script("ratelimit"))
        self.ratelimit_batch: AsyncScript = SlotScript(redis, read_script("ratelimit_batch"))
