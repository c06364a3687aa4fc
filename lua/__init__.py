"""The Redis scripts, shipped as package data and registered once per client.

Each script starts with a prelude defining the bucket sizes from counters.core.buckets
(`MINUTE_MS`, `HOUR_MS`, `DAY_MS`, in ms), so the scripts and Python share one definition;
it is joined to the script's first line (a comment), so line numbers in Redis's error
messages match the .lua file.
"""

from __future__ import annotations

from importlib.resources import files

from redis.commands.core import AsyncScript

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


class Scripts:
    """Every script, registered on one client (redis-py reloads them on NOSCRIPT)."""

    def __init__(self, redis: RedisClient) -> None:
        self.ingest: AsyncScript = redis.register_script(read_script("ingest"))
        self.seal: AsyncScript = redis.register_script(read_script("seal"))
        self.restore: AsyncScript = redis.register_script(read_script("restore"))
        self.restore_stage: AsyncScript = redis.register_script(read_script("restore_stage"))
        self.rotate_late: AsyncScript = redis.register_script(read_script("rotate_late"))
        self.trim_raw: AsyncScript = redis.register_script(read_script("trim_raw"))
        self.cut: AsyncScript = redis.register_script(read_script("cut"))
        self.read_hot: AsyncScript = redis.register_script(read_script("read_hot"))
        self.ratelimit: AsyncScript = redis.register_script(read_script("ratelimit"))
        self.ratelimit_batch: AsyncScript = redis.register_script(read_script("ratelimit_batch"))
